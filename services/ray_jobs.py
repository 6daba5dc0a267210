"""Where stage jobs run: a Ray cluster, reached through Ray's job submission API.

The orchestrator talks to a ``JobBackend``; ``RayJobBackend`` is the real one. Submission ids are
chosen by the caller (deterministic per stage), so asking for a job before submitting it makes a
submit safe to retry after a crash.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Paths of the repository that the jobs do not need; Ray zips the rest as the jobs' working dir.
WORKING_DIR_EXCLUDES = [
    ".git",
    ".venv",
    "**/__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "docs",
    "tests",
    "benchmarks",
    "runs",
    "workdir",
    "selftrain-runs",
    "*.pt",
    "*.zarr",
]


class ClusterUnavailableError(RuntimeError):
    """The cluster cannot be reached or answered with an error; the caller tries again later."""


@dataclass(frozen=True)
class JobInfo:
    """What the cluster says about a job.

    Attributes:
        status: One of Ray's statuses (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED).
        message: Ray's message (the error, for a failed job).
        start_time: Seconds since the epoch, or None before the job started.
        end_time: Seconds since the epoch, or None while it runs.
    """

    status: str
    message: str | None = None
    start_time: float | None = None
    end_time: float | None = None


class JobBackend(Protocol):
    def info(self, submission_id: str) -> JobInfo | None:
        """The job's state, or None when the cluster does not know the id."""
        ...

    def submit(self, submission_id: str, entrypoint: str, metadata: dict[str, str]) -> None:
        """Start a job under ``submission_id`` (an id that exists already is left as it is)."""
        ...

    def stop(self, submission_id: str) -> None:
        """Ask the cluster to stop the job."""
        ...

    def logs(self, submission_id: str) -> str:
        """The job's driver log so far."""
        ...

    def check(self) -> None:
        """Raises ClusterUnavailableError unless the cluster answers."""
        ...


class RayJobBackend:
    """Jobs on a Ray cluster via ``ray.job_submission.JobSubmissionClient``.

    Args:
        address: The cluster's dashboard address, e.g. ``http://127.0.0.1:8265``.
        working_dir: Shipped to the cluster as each job's working directory (the repository root).
    """

    def __init__(self, address: str, working_dir: Path) -> None:
        self.address = address
        self.working_dir = working_dir
        self._client = None
        self._lock = threading.Lock()

    def _jobs(self):
        from ray.job_submission import JobSubmissionClient

        with self._lock:
            if self._client is None:
                try:
                    self._client = JobSubmissionClient(self.address)
                except (OSError, RuntimeError) as exc:  # requests' errors are OSErrors
                    raise ClusterUnavailableError(f"Ray at {self.address}: {exc}") from exc
            return self._client

    def _unavailable(self, what: str, exc: Exception) -> ClusterUnavailableError:
        # A broken connection can leave the client unusable; connect afresh on the next call.
        with self._lock:
            self._client = None
        return ClusterUnavailableError(f"Ray at {self.address}: {what}: {exc}")

    def info(self, submission_id: str) -> JobInfo | None:
        try:
            details = self._jobs().get_job_info(submission_id)
        except (OSError, RuntimeError) as exc:
            if "status code 404" in str(exc):
                return None
            raise self._unavailable(f"job {submission_id}", exc) from exc
        return JobInfo(
            status=str(getattr(details.status, "value", details.status)),
            message=strip_ansi(details.message or ""),
            start_time=_seconds(details.start_time),
            end_time=_seconds(details.end_time),
        )

    def submit(self, submission_id: str, entrypoint: str, metadata: dict[str, str]) -> None:
        runtime_env = {"working_dir": str(self.working_dir), "excludes": WORKING_DIR_EXCLUDES}
        try:
            self._jobs().submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id,
                runtime_env=runtime_env,
                metadata=metadata,
            )
        except (OSError, RuntimeError) as exc:
            # Another submit with this id got there first: the job exists, which is all we want.
            if "already exists" in str(exc):
                return
            raise self._unavailable(f"submit {submission_id}", exc) from exc

    def stop(self, submission_id: str) -> None:
        try:
            self._jobs().stop_job(submission_id)
        except (OSError, RuntimeError) as exc:
            raise self._unavailable(f"stop {submission_id}", exc) from exc

    def check(self) -> None:
        """Raises ClusterUnavailableError unless the cluster's job API answers."""
        try:
            self._jobs().get_version()
        except (OSError, RuntimeError) as exc:
            raise self._unavailable("version", exc) from exc

    def logs(self, submission_id: str) -> str:
        try:
            return strip_ansi(self._jobs().get_job_logs(submission_id))
        except (OSError, RuntimeError) as exc:
            raise self._unavailable(f"logs of {submission_id}", exc) from exc


# Terminal escape sequences (colours, cursor moves) that Ray's and tqdm's output carries.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences (a log for a browser, not a terminal)."""
    return _ANSI.sub("", text)


# A stage's error: the lines of the job's failure that say what went wrong, not its whole log
# (the stage's logs keep that).
ERROR_CHARS = 2000


def first_line(message: str | None) -> str | None:
    """The first line of Ray's message: its summary (a failed job's message goes on with the
    log's tail, which the stage's logs and error keep)."""
    if not message:
        return message
    return message.strip().splitlines()[0][:ERROR_CHARS] if message.strip() else message


def failure_reason(message: str | None) -> str | None:
    """What a failed job's message says went wrong, in at most ``ERROR_CHARS``: Ray's summary
    line and the last lines of the log tail it quotes, from the last error line on (a job's
    one-line error, or a traceback's last line); the whole tail stays in the stage's logs."""
    if not message or not message.strip():
        return message
    lines = [line for line in message.strip().splitlines() if line.strip()]
    summary, tail = lines[0], lines[1:]
    errors = [i for i, line in enumerate(tail) if _is_error_line(line)]
    if errors:
        tail = tail[errors[-1] :]
    text = summary if not tail else f"{summary}: " + " / ".join(line.strip() for line in tail[-3:])
    return text[:ERROR_CHARS]


def _is_error_line(line: str) -> bool:
    head = line.strip().split(":", 1)[0]
    return ": error:" in line or (head.endswith(("Error", "Exception")) and " " not in head)


def _seconds(milliseconds: int | None) -> float | None:
    return None if milliseconds is None else milliseconds / 1000.0
