"""Shared pieces of the service tests: a job backend in memory, settings in a temporary folder,
small real artifacts (synthetic scenes, a checkpoint of the "small" model, a label store), and the
service as a real process on a real Ray head.

Imported by tests/test_service*.py, tests/test_dashboard.py, tests/test_serve_local.py and
tests/conftest.py, whose session fixtures (one Ray head, one service, one finished run) are set up
once for test_service_e2e.py and test_dashboard.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core.runfiles import MetricsRow, RunFiles
from services.localray import LocalRayHead, free_port
from services.ray_jobs import JobInfo
from services.settings import Settings

TOKEN = "test-token"
# The MLflow UI address the live service names in its links (no UI runs there).
MLFLOW_UI = "http://mlflow.test:5000"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakeBackend:
    """Jobs in memory: ``submit`` records them as PENDING; the test moves them on with ``set``.

    ``on_submit(submission_id, entrypoint)`` runs at submit time (e.g. to write a job's outputs).
    """

    def __init__(self, on_submit: Callable[[str, str], None] | None = None) -> None:
        self.jobs: dict[str, dict] = {}
        self.submits: list[str] = []
        self.stops: list[str] = []
        self.on_submit = on_submit
        self.down = False

    def _check_up(self) -> None:
        from services.ray_jobs import ClusterUnavailableError

        if self.down:
            raise ClusterUnavailableError("fake cluster is down")

    def info(self, submission_id: str) -> JobInfo | None:
        self._check_up()
        job = self.jobs.get(submission_id)
        if job is None:
            return None
        return JobInfo(job["status"], job["message"], job["start"], job["end"])

    def submit(self, submission_id: str, entrypoint: str, metadata: dict[str, str]) -> None:
        self._check_up()
        self.submits.append(submission_id)
        if submission_id in self.jobs:
            return
        self.jobs[submission_id] = {
            "status": "PENDING",
            "message": "Job has not started yet.",
            "start": None,
            "end": None,
            "entrypoint": entrypoint,
            "metadata": metadata,
            "logs": f"Running entrypoint for job {submission_id}: {entrypoint}\n",
        }
        if self.on_submit is not None:
            self.on_submit(submission_id, entrypoint)

    def set(self, submission_id: str, status: str, message: str = "", logs: str = "") -> None:
        job = self.jobs[submission_id]
        job["status"], job["message"] = status, message or job["message"]
        job["start"] = job["start"] or 1_700_000_000.0
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            job["end"] = 1_700_000_060.0
        job["logs"] += logs

    def stop(self, submission_id: str) -> None:
        self._check_up()
        self.stops.append(submission_id)
        self.set(submission_id, "STOPPED", "Job was intentionally stopped.")

    def logs(self, submission_id: str) -> str:
        self._check_up()
        return self.jobs[submission_id]["logs"]

    def check(self) -> None:
        self._check_up()


def make_settings(root: Path, **overrides) -> Settings:
    """Settings with one data root ``root/data`` and the workdir ``root/work``."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    values = {
        "api_token": TOKEN,
        "data_roots": [root / "data"],
        "workdir": root / "work",
        "poll_interval_s": 0.05,
        "tracking_uri": "off",  # MLflow's store costs seconds to create; tests that track say so
        **overrides,
    }
    return Settings(**values)


def write_scenes(root: Path, n: int = 4, size: tuple[int, int] = (64, 128), split: str = "train"):
    """Synthetic Cityscapes-layout scenes under ``root``; returns the image paths."""
    from core.synth import write_synthetic_dataset

    return write_synthetic_dataset(root, n=n, size=size, split=split)


def write_checkpoint(path: Path, space=None) -> Path:
    """A checkpoint of an untrained "small" model with the Cityscapes classes (or ``space``'s)."""
    import torch

    from core.checkpoint import save_checkpoint
    from core.labels import CITYSCAPES
    from core.models import build_model

    space = space or CITYSCAPES
    torch.manual_seed(0)
    model = build_model("small", space.num_classes)
    return save_checkpoint(path, model, "small", {}, space, epoch=1)


def write_store(path: Path, image_paths: list[Path], checkpoint: str = "ck.pt") -> Path:
    """A label store whose images are all labeled: the left half road (0), the right half sky
    (10), the top row ignored."""
    from core.centroids import find_centroids
    from core.io import read_image
    from core.labels import CITYSCAPES
    from core.store import LabelStore

    store = LabelStore.create(
        path,
        [str(p) for p in image_paths],
        None,
        CITYSCAPES,
        teacher={"checkpoint": checkpoint, "sha256": "0" * 64, "model_name": "small"},
        settings={"mode": "whole"},
    )
    run = store.start_run({})
    for i, image_path in enumerate(image_paths):
        height, width = read_image(image_path).shape[:2]
        label = np.zeros((height, width), np.uint8)
        label[:, width // 2 :] = 10
        label[0] = 255
        confidence = np.full((height, width), 200, np.uint8)
        store.write(i, label, confidence, find_centroids(label), run=run)
    n = len(image_paths)
    store.set_progress(run, "finished", done=n, failed=0, total=n, images_per_s=12.5)
    return path


def write_metrics(folder: Path, epochs: int) -> Path:
    """A training job's metrics file with ``epochs`` rows (loss falling, mIoU rising)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        MetricsRow(
            epoch=e,
            phase="joint",
            loss=round(2.0 / (e + 1), 4),
            lr=0.01,
            crop_size=64 if e % 2 else 48,
            batch_size=4,
            n_real=8,
            n_pseudo=0,
            images_per_s=10.0,
            seconds=1.0,
            cpu_seconds=1.0,
            val_miou=round(0.1 * (e + 1), 4),
        )
        for e in range(epochs)
    ]
    path = RunFiles(folder).metrics
    path.write_text("".join(row.model_dump_json() + "\n" for row in rows))
    return path


def labeled_source(root: Path) -> dict:
    return {"format": "cityscapes", "root": str(root), "split": "train"}


def small_run_spec(data: Path, **extra) -> dict:
    """A run spec over scenes in ``data/labeled`` and ``data/unlabeled`` with tiny crops."""
    train = {
        "model": "small",
        "labeled": labeled_source(data / "labeled"),
        "epochs": 2,
        "schedule": {"crop_sizes": [32, 48]},
    }
    return {
        "name": "tiny",
        "teacher": {"train": train},
        "label": {"sources": [{"format": "folder", "root": str(data / "unlabeled")}]},
        "student": {"train": train},
        **extra,
    }


def fake_job_outputs(entrypoint: str) -> None:
    """Write what the job an entry point names would leave: a checkpoint and metrics for a training
    job (2 epochs), a label store over the source's images for a label job; an evaluation job
    runs for real (core.evaluation_run)."""
    import shlex

    from core.configs import LabelJobConfig, TrainJobConfig, load_config
    from core.datasets import open_source

    argv = shlex.split(entrypoint)
    config_path = Path(argv[argv.index("--config") + 1])
    if argv[1].endswith("evaluate.py"):  # the real evaluation (the models are tiny)
        from core.evaluation_run import EvaluateJobConfig, run_evaluation

        run_evaluation(load_config(config_path, EvaluateJobConfig))
        return
    if argv[1].endswith("label.py"):
        label = load_config(config_path, LabelJobConfig)
        images = [Path(p) for p in open_source(label.source).image_paths()]
        write_store(Path(label.store), images, label.teacher_checkpoint)
        return
    train = load_config(config_path, TrainJobConfig)
    folder = Path(train.storage_path) / train.run_name
    write_checkpoint(RunFiles(folder).best)
    write_metrics(folder, train.epochs)


class SucceedingBackend(FakeBackend):
    """A cluster on which every job writes its outputs at once and succeeds."""

    def __init__(self) -> None:
        super().__init__(on_submit=self._run)

    def _run(self, submission_id: str, entrypoint: str) -> None:
        fake_job_outputs(entrypoint)
        self.set(submission_id, "SUCCEEDED", "Job finished successfully.", logs="done\n")


# ---- the service as a process on a real Ray head ------------------------------------------------

# Epochs of each training stage of the live run: two points in every metric chart.
LIVE_EPOCHS = 2
LIVE_IMAGE_SIZE = (96, 192)
STAGE_TIMEOUT_S = 420


def live_run_spec(data: Path, name: str, teacher: dict | None = None, epochs: int = LIVE_EPOCHS):
    """A run spec for a real cluster over ``write_live_data``'s scenes: the "small" model, 48-pixel
    crops, batches of 4, validated on the labeled scenes; a few seconds of work per stage."""
    labeled = labeled_source(data / "labeled")
    train = {
        "model": "small",
        "labeled": labeled,
        "val": labeled,
        "epochs": epochs,
        "schedule": {"crop_sizes": [48], "base_batch_size": 4},
        "ohem": False,
    }
    unlabeled = {"format": "folder", "root": str(data / "unlabeled" / "leftImg8bit")}
    return {
        "name": name,
        "teacher": teacher or {"train": train},
        "label": {"sources": [unlabeled], "options": {"batch_size": 4}},
        # An online student (EMA teacher, strong views) whose crops centre on the store's
        # centroids: one unlabeled crop beside each real one.
        "student": {"train": {**train, "pseudo_per_real": 1.0, "method": "online"}},
    }


def live_gated_spec(data: Path, name: str, min_gain: float = 0.0) -> dict:
    """``live_run_spec`` with everything a run can tell about itself: an audit set for the label
    stage, the labeled-only control, an evaluation on held-out scenes and a promotion gate (the
    scenes of ``write_gate_data``)."""
    spec = live_run_spec(data, name)
    spec["student"]["train"]["samples_per_epoch"] = 16
    spec["label"]["audit"] = [{"format": "cityscapes", "root": str(data / "audit"), "split": "val"}]
    held = {"format": "cityscapes", "root": str(data / "held"), "split": "test"}
    spec["evaluation"] = {"tests": {"held": held}}
    spec["control"] = True
    spec["gate"] = {"min_gain": min_gain, "max_class_drop": 0.2, "model_name": name}
    return spec


def write_gate_data(data: Path) -> None:
    """Four labeled audit scenes and four held-out test scenes (for ``live_gated_spec``)."""
    write_scenes(data / "audit", n=4, size=LIVE_IMAGE_SIZE, split="val")
    write_scenes(data / "held", n=4, size=LIVE_IMAGE_SIZE, split="test")


def write_live_data(data: Path) -> list[Path]:
    """Eight labeled and eight unlabeled scenes; returns the labeled images."""
    write_scenes(data / "unlabeled", n=8, size=LIVE_IMAGE_SIZE, split="extra")
    return write_scenes(data / "labeled", n=8, size=LIVE_IMAGE_SIZE)


def wait_for_url(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Return once ``url`` answers 2xx; fail at once when ``process`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 30) -> int:
    """Send ``sig`` to ``process`` (started in a session of its own), wait up to ``grace_s``, then
    SIGKILL what is left of its process group; returns its exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


def service_env(root: Path, **variables: str) -> dict[str, str]:
    """This process's environment without any SELFTRAIN_ or Ray address and auth variables, plus
    a data root ``root/data``, the workdir ``root/work``, this interpreter for the jobs, a short
    poll interval, no MLflow tracking, and ``variables``."""
    dropped = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFTRAIN_")}
    env = {k: v for k, v in env.items() if k not in dropped}
    return {
        **env,
        "SELFTRAIN_DATA_ROOTS": json.dumps([str(root / "data")]),
        "SELFTRAIN_WORKDIR": str(root / "work"),
        "SELFTRAIN_JOB_PYTHON": sys.executable,
        "SELFTRAIN_POLL_INTERVAL_S": "0.5",
        "SELFTRAIN_TRACKING_URI": "off",
        **variables,
    }


class ServiceProcess:
    """``selftrain serve`` as a child process; ``kill`` and ``start`` again keep its database.

    Args:
        root: Holds ``data/`` and ``work/`` (see ``service_env``) and the service's logs.
        env: The service's whole environment.
        token: The API token for requests; None: read the one the service prints at start.
        head: The Ray head it uses, if the test started one (checked while waiting for a run).
    """

    def __init__(
        self,
        root: Path,
        env: dict[str, str],
        token: str | None = TOKEN,
        head: LocalRayHead | None = None,
    ) -> None:
        self.root = root
        self.env = env
        self.token = token
        self.head = head
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.root / f"service-{self.starts}.log"

    def start(self, timeout_s: float = 240) -> None:
        """Start the service and wait for its health check (a local Ray head takes a while)."""
        self.starts += 1
        command = [sys.executable, "-m", "selftrain.cli", "serve", "--port", str(self.port)]
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_url(f"{self.url}/api/health", timeout_s, self.process)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}; its log:\n{self.log()[-4000:]}") from exc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crash ends it."""
        self._end(signal.SIGKILL)

    def stop(self) -> int | None:
        """SIGTERM, as a process manager stops it; returns its exit status (None: not running)."""
        return self._end(signal.SIGTERM)

    def _end(self, sig: int) -> int | None:
        process, self.process = self.process, None
        return None if process is None else stop_process(process, sig)

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, bytes, str]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        all_headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        if isinstance(body, dict):
            all_headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=all_headers
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.read(), response.headers["Content-Type"]
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers["Content-Type"]

    def json(self, method: str, path: str, body=None):
        status, data, _ = self.request(method, path, body)
        assert status < 300, (status, data)
        return json.loads(data)

    def wait_until(self, run_id: str, done: Callable[[dict], bool], timeout_s: float) -> dict:
        """The run once ``done(run)``; fails with the stages' logs when it failed or stalled."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.json("GET", f"/api/runs/{run_id}")
            if done(run):
                return run
            if run["status"] in ("FAILED", "STOPPED"):
                break
            if self.head is not None:
                assert self.head.alive(), f"the Ray head died:\n{self.head.log_tail()}"
            time.sleep(0.5)
        logs = {
            s["name"]: self.request("GET", f"/api/runs/{run_id}/stages/{s['name']}/logs")[1][-3000:]
            for s in run["stages"]
            if s["submission_id"]
        }
        raise AssertionError(f"run {run_id} stuck or failed: {json.dumps(run)[:3000]}\n{logs}")


def succeeded(run: dict) -> bool:
    return run["status"] == "SUCCEEDED"


# ---- a real PostgreSQL server for the database tests --------------------------------------------

POSTGRES_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "postgres"


def start_postgres(folder: Path) -> str:
    """Start a throwaway PostgreSQL server in ``folder`` (.ci/postgres, Debian's package);
    returns its SQLAlchemy URL (a superuser on the ``postgres`` database).

    Raises:
        RuntimeError: It did not start (the script's error).
    """
    done = subprocess.run(
        ["bash", str(POSTGRES_SCRIPT), "start", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{POSTGRES_SCRIPT} start: {done.stderr.strip() or done.stdout}")
    return done.stdout.strip().splitlines()[-1]


def stop_postgres(folder: Path) -> None:
    subprocess.run(["bash", str(POSTGRES_SCRIPT), "stop", str(folder)], timeout=60, check=False)


def postgres_installed() -> bool:
    import glob
    import shutil

    return bool(shutil.which("pg_ctl") or glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))


def fresh_postgres_database(server_url: str) -> tuple[str, Callable[[], None]]:
    """A new, empty database on the server; returns its URL and a function that drops it."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"selftrain_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    return url, drop
