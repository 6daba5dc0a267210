"""Calls that must answer in time: a call to the cluster that hangs (a head stopped but not gone,
a half-open connection) must not hold a request, a cancel or a health check with it.

Ray's job client sets no timeout on its HTTP requests, so a call is run in a daemon thread and
waited for up to its deadline; a call that misses it is left to finish (or hang) on its own and
its caller gets ``ClusterUnavailableError``. A daemon thread never holds up the process's exit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from services.ray_jobs import ClusterUnavailableError, JobBackend, JobInfo

T = TypeVar("T")


def call_with_deadline(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """``fn()``'s result (or its exception) if it ends within ``timeout_s``.

    Raises:
        ClusterUnavailableError: It did not end in time (it goes on in its daemon thread).
    """
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller as it is
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"deadline: {what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ClusterUnavailableError(f"{what}: no answer within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


class DeadlineBackend:
    """A ``JobBackend`` whose every call answers within ``timeout_s`` or raises
    ``ClusterUnavailableError`` (see the module docstring).

    Args:
        inner: The backend that does the work.
        timeout_s: The deadline of each call.
    """

    def __init__(self, inner: JobBackend, timeout_s: float) -> None:
        self.inner = inner
        self.timeout_s = timeout_s

    def info(self, submission_id: str) -> JobInfo | None:
        return self._call(lambda: self.inner.info(submission_id), f"job {submission_id}")

    def submit(self, submission_id: str, entrypoint: str, metadata: dict[str, str]) -> None:
        self._call(
            lambda: self.inner.submit(submission_id, entrypoint, metadata),
            f"submit {submission_id}",
        )

    def stop(self, submission_id: str) -> None:
        self._call(lambda: self.inner.stop(submission_id), f"stop {submission_id}")

    def logs(self, submission_id: str) -> str:
        return self._call(lambda: self.inner.logs(submission_id), f"logs of {submission_id}")

    def check(self) -> None:
        self._call(self.inner.check, "the cluster's job API")

    def _call(self, fn: Callable[[], T], what: str) -> T:
        return call_with_deadline(fn, self.timeout_s, what)


class ClusterProbe:
    """Whether the cluster answers, for the health check: one question at a time (a cluster that
    hangs gets no pile of waiting threads), each waited for up to ``timeout_s``.

    Args:
        check: Raises ``ClusterUnavailableError`` unless the cluster answers.
        timeout_s: How long a health check waits for the answer.
    """

    def __init__(self, check: Callable[[], None], timeout_s: float) -> None:
        self.check = check
        self.timeout_s = timeout_s
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._asked_at = 0.0
        self._answer = "ok"

    def __call__(self) -> str:
        """``ok``, or why the cluster cannot be reached."""
        with self._guard:
            if self._thread is None or not self._thread.is_alive():
                self._asked_at = time.monotonic()
                self._thread = threading.Thread(target=self._ask, name="cluster probe", daemon=True)
                self._thread.start()
            thread, asked_at = self._thread, self._asked_at
        thread.join(self.timeout_s)
        if thread.is_alive():
            return f"the cluster's job API has not answered for {time.monotonic() - asked_at:.0f} s"
        return self._answer

    def _ask(self) -> None:
        try:
            self.check()
            self._answer = "ok"
        except ClusterUnavailableError as exc:
            self._answer = str(exc)
        except Exception as exc:  # anything else the client raises: the cluster is not usable
            self._answer = f"{type(exc).__name__}: {exc}"
