"""End to end on a real local Ray cluster (``ray start --head``) with the service as its own process
(``services.cli.serve`` under uvicorn), talking REST only:

- a run over tiny synthetic scenes (teacher -> label -> student, "small" model) ends with every
  stage SUCCEEDED and a student checkpoint, and ``/api/predict`` with the run answers a PNG of the
  image's size;
- the service killed (SIGKILL) and started again in the middle of a run finishes that run, and Ray
  never saw a stage submitted twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_service_helpers import TOKEN, write_scenes

from core.io import decode_image
from services.artifacts import encode_png

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STAGE_TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    # Each process was started in its own session: signal the whole group (Ray's daemons too),
    # and kill what is left of it after a grace period (Ray's GCS server outlives a SIGTERM).
    if process.poll() is None:
        os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class RayHead:
    """``ray start --head --block`` as a child process: this cluster alone is stopped at the end
    (``ray stop`` would stop every Ray cluster on the machine)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        dashboard = _free_port()
        self.address = f"http://127.0.0.1:{dashboard}"
        # Every port this head listens on is chosen here: Ray's fixed defaults (the job agent's
        # 52365, the client server's 10001, ...) clash with any other Ray instance on the machine.
        ports = [
            f"--{name}={_free_port()}"
            for name in (
                "port",
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
                "metrics-export-port",
                "ray-client-server-port",
                "node-manager-port",
                "object-manager-port",
            )
        ]
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        with log_path.open("w") as log:
            self.process = subprocess.Popen(
                [
                    str(bin_dir / "ray"),
                    "start",
                    "--head",
                    "--block",
                    f"--dashboard-port={dashboard}",
                    "--dashboard-host=127.0.0.1",
                    "--include-dashboard=true",
                    "--num-cpus=2",
                    "--disable-usage-stats",
                    *ports,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout_s: float) -> bool:
        """True once the node is up (Ray says so in its log) and the job server answers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.alive():
            if "Ray runtime started" in self.log_path.read_text():
                try:
                    _wait_for(f"{self.address}/api/version", deadline - time.monotonic())
                    return self.alive()
                except TimeoutError:
                    return False
            time.sleep(0.5)
        return False

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self) -> str:
        return self.log_path.read_text()[-3000:]

    def stop(self) -> None:
        _stop(self.process)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A local Ray head with 2 CPUs. A start that times out on a busy machine is tried once more."""
    if shutil.which("ray", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("the `ray` command is not installed next to this Python")
    # A token left by an earlier cluster makes job submission fail with an auth error.
    Path.home().joinpath(".ray", "auth_token").unlink(missing_ok=True)
    folder = tmp_path_factory.mktemp("ray")
    for attempt in range(2):
        head = RayHead(folder / f"ray-{attempt}.log")
        if head.wait_ready(180):
            break
        head.stop()
    else:
        pytest.fail(f"the Ray head did not start:\n{head.log_tail()}")
    try:
        yield head
    finally:
        head.stop()


class Service:
    """The service as a child process; ``kill`` and ``start`` again keep its database."""

    def __init__(self, root: Path, head: RayHead) -> None:
        self.head = head
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = root
        self.env = {
            **os.environ,
            "SELFTRAIN_API_TOKEN": TOKEN,
            "SELFTRAIN_RAY_ADDRESS": head.address,
            "SELFTRAIN_DATA_ROOTS": json.dumps([str(root / "data")]),
            "SELFTRAIN_WORKDIR": str(root / "work"),
            "SELFTRAIN_JOB_PYTHON": sys.executable,
            "SELFTRAIN_POLL_INTERVAL_S": "0.5",
        }
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.root / f"service-{self.starts}.log").open("w")
        code = f"from services.cli import serve; serve('127.0.0.1', {self.port})"
        self.process = subprocess.Popen(
            [sys.executable, "-c", code],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait_for(f"{self.url}/api/health", 60, self.process)

    def kill(self) -> None:
        assert self.process is not None
        _stop(self.process, signal.SIGKILL)

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, bytes, str]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        all_headers = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
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

    def wait_until(self, run_id: str, done, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.json("GET", f"/api/runs/{run_id}")
            if done(run):
                return run
            if run["status"] in ("FAILED", "STOPPED"):
                break
            assert self.head.alive(), f"the Ray head died:\n{self.head.log_tail()}"
            time.sleep(1)
        logs = {
            s["name"]: self.request("GET", f"/api/runs/{run_id}/stages/{s['name']}/logs")[1][-3000:]
            for s in run["stages"]
            if s["submission_id"]
        }
        raise AssertionError(f"run {run_id} stuck or failed: {json.dumps(run)[:3000]}\n{logs}")


@pytest.fixture(scope="module")
def service(ray_head, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    write_scenes(root / "data" / "labeled", n=8, size=(64, 128))
    write_scenes(root / "data" / "unlabeled", n=8, size=(64, 128), split="extra")
    service = Service(root, ray_head)
    service.start()
    yield service
    if service.process is not None:
        _stop(service.process)


def _spec(root: Path, name: str, teacher: dict | None = None) -> dict:
    train = {
        "model": "small",
        "labeled": {"format": "cityscapes", "root": str(root / "data" / "labeled")},
        "epochs": 1,
        "schedule": {"crop_sizes": [48], "base_batch_size": 4},
        "ohem": False,
    }
    unlabeled = {"format": "folder", "root": str(root / "data" / "unlabeled" / "leftImg8bit")}
    return {
        "name": name,
        "teacher": teacher or {"train": train},
        "label": {"sources": [unlabeled], "options": {"batch_size": 4}},
        "student": {"train": {**train, "real_pseudo_ratio": 1.0}},
    }


def _multipart(fields: dict[str, str], file_name: str, file_data: bytes) -> tuple[bytes, str]:
    boundary = "selftrain-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="{file_name}"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + file_data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def test_run_over_rest_succeeds_and_predicts(service):
    created = service.json("POST", "/api/runs", _spec(service.root, "e2e"))
    run = service.wait_until(
        created["id"], lambda r: r["status"] == "SUCCEEDED", 3 * STAGE_TIMEOUT_S
    )
    assert [(s["name"], s["status"]) for s in run["stages"]] == [
        ("teacher", "SUCCEEDED"),
        ("label-0", "SUCCEEDED"),
        ("student", "SUCCEEDED"),
    ]
    for stage in run["stages"]:
        assert stage["submission_id"] == f"selftrain-{run['id']}-{stage['index']}-{stage['name']}"
        assert stage["started_at"] and stage["ended_at"]
    student = run["stages"][2]
    assert student["outputs"]["checkpoint"].endswith("/student/best.pt")
    assert student["progress"]["fraction"] == 1.0
    assert student["latest_metrics"]["epoch"] == 0 and student["latest_metrics"]["loss"] > 0
    label = run["stages"][1]
    assert label["summary"]["n_done"] == 8 and label["progress"]["done"] == 8

    status, logs, _ = service.request("GET", f"/api/runs/{run['id']}/stages/teacher/logs")
    assert status == 200 and b"Running entrypoint for job selftrain-" in logs

    rgb = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    body, content_type = _multipart({"run_id": run["id"]}, "street.png", encode_png(rgb))
    status, data, kind = service.request(
        "POST", "/api/predict", body, {"Content-Type": content_type}
    )
    assert (status, kind) == (200, "image/png"), data[:500]
    assert decode_image(data).shape[:2] == (37, 53)


def test_service_killed_mid_run_picks_the_run_up_after_a_restart(service, ray_head):
    from ray.job_submission import JobSubmissionClient

    # Start from the first test's teacher, if it left one, to keep this test shorter.
    runs = service.json("GET", "/api/runs")
    finished = [r for r in runs if r["status"] == "SUCCEEDED"]
    teacher = None
    if finished:
        first = service.json("GET", f"/api/runs/{finished[0]['id']}")
        teacher = {"checkpoint": first["stages"][0]["outputs"]["checkpoint"]}
    created = service.json("POST", "/api/runs", _spec(service.root, "restart", teacher))
    run_id = created["id"]

    def label_running(run: dict) -> bool:
        label = next(s for s in run["stages"] if s["name"] == "label-0")
        return label["status"] in ("RUNNING", "SUCCEEDED")

    in_flight = service.wait_until(run_id, label_running, STAGE_TIMEOUT_S)
    assert in_flight["status"] == "RUNNING"
    service.kill()
    service.start()
    run = service.wait_until(run_id, lambda r: r["status"] == "SUCCEEDED", 2 * STAGE_TIMEOUT_S)
    assert all(s["status"] == "SUCCEEDED" for s in run["stages"])
    submitted = [s["submission_id"] for s in run["stages"] if s["submission_id"]]
    ray_ids = [job.submission_id for job in JobSubmissionClient(ray_head.address).list_jobs()]
    for submission_id in submitted:
        assert ray_ids.count(submission_id) == 1, submission_id


def test_cancel_stops_the_running_ray_job(service, ray_head):
    from ray.job_submission import JobStatus, JobSubmissionClient

    run_id = service.json("POST", "/api/runs", _spec(service.root, "cancel"))["id"]

    def teacher_running(run: dict) -> bool:
        return run["stages"][0]["status"] == "RUNNING"

    service.wait_until(run_id, teacher_running, STAGE_TIMEOUT_S)
    cancelled = service.json("POST", f"/api/runs/{run_id}/cancel")
    assert cancelled["status"] == "STOPPED"
    assert [s["status"] for s in cancelled["stages"]] == ["STOPPED", "PENDING", "PENDING"]
    jobs = JobSubmissionClient(ray_head.address)
    submission_id = cancelled["stages"][0]["submission_id"]
    deadline = time.monotonic() + 60
    while jobs.get_job_status(submission_id) != JobStatus.STOPPED:
        assert time.monotonic() < deadline, jobs.get_job_status(submission_id)
        time.sleep(0.5)
    time.sleep(2)  # a few polls later, nothing else was submitted
    ray_ids = [job.submission_id for job in jobs.list_jobs()]
    assert not any(i.startswith(f"selftrain-{run_id}-1") for i in ray_ids)
