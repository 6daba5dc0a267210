"""Chaos on a real Ray head (``ray start --head``) and the real service (``selftrain serve``),
talking REST only: three runs at once, two that can run and one that asks for a GPU this CPU-only
head does not have; the head is killed (SIGKILL of every process below it, as a crash of its
machine) mid-run and started again on the same ports; then the service is killed and started again.

Every run must end SUCCEEDED or FAILED with a reason (the GPU run: FAILED, naming the GPU), each
run's files lie in its own folder only, and the database agrees with the files: every checkpoint
the API names exists, its metrics are the run folder's metrics, and each store holds every image.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from service_support import (
    STAGE_TIMEOUT_S,
    TOKEN,
    ServiceProcess,
    live_run_spec,
    service_env,
    write_live_data,
)

from core.runfiles import RunFiles
from core.store import LabelStore
from services.localray import LocalRayError, LocalRayHead, ray_command

pytestmark = pytest.mark.slow

# Two runs side by side show that each keeps to its own folder; benchmarks/chaos.py runs more.
RUNS = 2
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@pytest.fixture
def head(tmp_path, monkeypatch):
    try:
        ray_command()
    except LocalRayError as exc:
        pytest.skip(str(exc))
    # The jobs inherit the head's environment: the GPU run's job gives up after 5 s, not 120.
    monkeypatch.setenv("SELFTRAIN_RESOURCE_WAIT_S", "5")
    ray_head = LocalRayHead(num_cpus=2, log_path=tmp_path / "head.log")
    start(ray_head)
    try:
        yield ray_head
    finally:
        ray_head.stop()


def test_runs_survive_a_lost_head_and_a_killed_service(tmp_path, head):
    write_live_data(tmp_path / "data")
    env = service_env(
        tmp_path, SELFTRAIN_API_TOKEN=TOKEN, SELFTRAIN_RAY_ADDRESS=head.address, **head.client_env
    )
    service = ServiceProcess(tmp_path, env, head=None)
    service.start()
    try:
        data = tmp_path / "data"
        run_ids = [
            service.json("POST", "/api/runs", live_run_spec(data, f"chaos-{i}", epochs=1))["id"]
            for i in range(RUNS)
        ]
        gpu_spec = live_run_spec(data, "wants-a-gpu", epochs=1)
        gpu_spec["teacher"]["train"]["gpus_per_worker"] = 1.0
        gpu_run = service.json("POST", "/api/runs", gpu_spec)["id"]

        # Mid-run: some job of the two is running on the head.
        wait_for(service, run_ids, lambda runs: any(running(r) for r in runs), STAGE_TIMEOUT_S)
        head.kill()
        health = wait_for_health(service, lambda h: h["status"] == "degraded", 60)
        assert health["cluster"] != "ok"
        time.sleep(3)  # a few polls while the cluster is gone
        start(head)
        wait_for_health(service, lambda h: h["status"] == "ok", 60)

        # The service dies while the runs go on, and comes back.
        wait_for(service, run_ids, lambda runs: any(running(r) for r in runs), STAGE_TIMEOUT_S)
        service.kill()
        service.start()

        runs = wait_for(
            service,
            [*run_ids, gpu_run],
            lambda runs: all(r["status"] in TERMINAL for r in runs),
            4 * STAGE_TIMEOUT_S,
        )
    finally:
        service.stop()

    by_id = {run["id"]: run for run in runs}
    gpu = by_id.pop(gpu_run)
    assert gpu["status"] == "FAILED"
    assert "no node of the cluster can hold one training worker" in gpu["error"], gpu["error"]
    assert "GPU 1" in gpu["error"]
    # Each run's files in its own folder, and no folder inside another run's.
    folders = {run["id"]: Path(run["output"]) for run in runs}
    for run in runs:
        own = folders[run["id"]]
        for other_id, other in folders.items():
            if other_id != run["id"]:
                assert not own.is_relative_to(other) and not other.is_relative_to(own)
        for stage in run["stages"]:
            for path in stage["outputs"].values():
                assert Path(path).is_relative_to(own), (run["id"], path)
    # Each job the crash lost was submitted again and resumed: both finish.
    assert [run["status"] for run in by_id.values()] == ["SUCCEEDED"] * RUNS, json.dumps(
        [(r["status"], r["error"]) for r in by_id.values()]
    )
    for run in by_id.values():
        check_database_agrees_with_files(run)


def check_database_agrees_with_files(run: dict) -> None:
    for stage in run["stages"]:
        assert stage["status"] == "SUCCEEDED"
        if "checkpoint" in stage["outputs"]:
            checkpoint = Path(stage["outputs"]["checkpoint"])
            assert checkpoint.is_file()
            files = RunFiles(checkpoint.parent)
            rows = [row.model_dump() for row in files.read_metrics()]
            assert stage["metrics"] == rows and len(rows) == 1  # one epoch, written once
        else:
            store = LabelStore.open(stage["outputs"]["store"], read_only=True)
            assert store.summary()["n_done"] == stage["summary"]["n_done"] == 8


def start(head: LocalRayHead, attempts: int = 3) -> None:
    """Start ``head`` on its ports; on a busy machine Ray's dashboard sometimes misses its own
    start-up deadline, so a failed start is tried again."""
    for attempt in range(attempts):
        try:
            head.start(timeout_s=180)
            return
        except LocalRayError:
            if attempt == attempts - 1:
                raise


def running(run: dict) -> bool:
    return any(stage["status"] == "RUNNING" for stage in run["stages"])


def wait_for(service: ServiceProcess, run_ids: list[str], done, timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        runs = [service.json("GET", f"/api/runs/{run_id}") for run_id in run_ids]
        if done(runs):
            return runs
        if time.monotonic() > deadline:
            states = [(r["status"], [(s["name"], s["status"]) for s in r["stages"]]) for r in runs]
            raise AssertionError(f"timed out: {states}\n{service.log()[-3000:]}")
        time.sleep(0.5)


def wait_for_health(service: ServiceProcess, done, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status, body, _ = service.request("GET", "/api/health")
        health = json.loads(body)
        if done(health):
            return health
        assert time.monotonic() < deadline, (status, health)
        time.sleep(0.5)
