"""Chaos on a local Ray cluster (services.localray.LocalRayHead) and the real service (``selftrain
serve``), talking REST only, while several runs go at once. Injected, in order:

1. a blocking progress file: one run's ``metrics.jsonl`` replaced by a named pipe;
2. a deleted database: the service's SQLite file removed while it serves (the service notices,
   says degraded, and rebuilds from the runs' records at its next start);
3. a killed head: SIGKILL of the Ray head's process group, started again on the same ports;
4. a damaged store: a label chunk of a finished label stage deleted (the store must say so).

Meanwhile the status of the healthy runs is polled. One run is cancelled; at the end the service
gets SIGTERM, is started again, and every run created must still be listed. Prints one JSON line:
runs lost (must be 0), p99 status latency of the healthy runs (<= 2 s), cancel latency (<= 5 s),
shutdown time (<= 10 s), peak service memory, and what the store and health said.

    python benchmarks/chaos.py [--runs 3] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from service_support import (  # noqa: E402
    TOKEN,
    ServiceProcess,
    live_run_spec,
    service_env,
    write_live_data,
)

from core.runfiles import RunFiles  # noqa: E402
from services.localray import LocalRayHead  # noqa: E402

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=1800)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="selftrain-chaos-"))
    write_live_data(root / "data")
    head = LocalRayHead(num_cpus=2, log_path=root / "head.log")
    head.start(timeout_s=300)
    env = service_env(
        root, SELFTRAIN_API_TOKEN=TOKEN, SELFTRAIN_RAY_ADDRESS=head.address, **head.client_env
    )
    service = ServiceProcess(root, env)
    try:
        print(json.dumps(run_chaos(service, head, root, args)), flush=True)
    finally:
        service.stop()
        head.stop()


def run_chaos(service: ServiceProcess, head: LocalRayHead, root: Path, args) -> dict:
    service.start(timeout_s=600)
    memory = PeakMemory(service)
    data = root / "data"
    specs = [live_run_spec(data, f"chaos-{i}", epochs=args.epochs) for i in range(args.runs)]
    ids = [service.json("POST", "/api/runs", spec)["id"] for spec in specs]
    blocked, cancelled, healthy = ids[0], ids[-1], ids[1:-1] or ids[1:]
    latencies: list[float] = []
    poller = StatusPoller(service, healthy, latencies)
    poller.start()
    result: dict = {"runs": len(ids)}
    deadline = time.monotonic() + args.timeout_s

    # 1. A named pipe where the blocked run's teacher writes its metrics.
    teacher = wait_stage(service, blocked, lambda s: s["status"] == "RUNNING", deadline)
    files = RunFiles.of(teacher["config"]["storage_path"], teacher["config"]["run_name"])
    files.directory.mkdir(parents=True, exist_ok=True)
    files.metrics.unlink(missing_ok=True)
    os.mkfifo(files.metrics)
    # Cancel one run while the pipe is there.
    started = time.monotonic()
    status, _, _ = service.request("POST", f"/api/runs/{cancelled}/cancel")
    result["cancel_status"], result["cancel_latency_s"] = status, time.monotonic() - started

    # 2. The database deleted while the service serves.
    database = Path(env_of(service, "SELFTRAIN_WORKDIR")) / "service.db"
    database.unlink(missing_ok=True)
    time.sleep(3)
    result["health_after_db_deleted"] = health(service)

    # 3. The Ray head killed and started again on the same ports.
    head.kill()
    time.sleep(5)
    head.start(timeout_s=300)

    # Shutdown (SIGTERM) and a restart: runs must all be there (rebuilt from their records).
    result["peak_service_rss_mb"] = memory.peak_mb()
    started = time.monotonic()
    service.stop()
    result["shutdown_s"] = time.monotonic() - started
    service.start(timeout_s=600)
    memory = PeakMemory(service)
    listed = {run["id"] for run in service.json("GET", "/api/runs?limit=1000")}
    result["runs_lost"] = len(set(ids) - listed)

    # 4. A finished label stage's store damaged: one label chunk deleted.
    result["damaged_store"] = damage_store(service, healthy, deadline)
    poller.stop()
    result["status_p99_s"] = percentile(latencies, 99)
    result["status_requests"] = len(latencies)
    result["final"] = {
        run_id: service.json("GET", f"/api/runs/{run_id}")["status"] for run_id in ids
    }
    result["peak_service_rss_mb"] = max(result["peak_service_rss_mb"], memory.peak_mb())
    result["load_average"] = os.getloadavg()
    return result


def damage_store(service: ServiceProcess, run_ids: list[str], deadline: float) -> dict:
    """Delete one label chunk of the first finished label stage and say what the API shows."""
    run_id = run_ids[0]
    stage = wait_stage(
        service, run_id, lambda s: s["kind"] == "label" and s["status"] == "SUCCEEDED", deadline
    )
    store = Path(stage["outputs"]["store"])
    chunks = sorted(p for p in (store / "labels").rglob("*") if p.is_file() and "c" in p.parts)
    if not chunks:
        return {"store": str(store), "deleted": None}
    chunks[0].unlink()
    from core.store import LabelStore

    try:
        report = LabelStore.open(store, read_only=True).summary()
        said = f"summary read: n_done {report.get('n_done')}"
    except Exception as exc:  # what a damaged store says depends on the store's checks
        said = f"{type(exc).__name__}: {exc}"[:300]
    return {"store": str(store), "deleted": str(chunks[0]), "store_says": said}


def wait_stage(service: ServiceProcess, run_id: str, done, deadline: float) -> dict:
    while time.monotonic() < deadline:
        run = service.json("GET", f"/api/runs/{run_id}")
        for stage in run["stages"]:
            if done(stage):
                return stage
        if run["status"] in TERMINAL:
            raise RuntimeError(f"run {run_id} ended ({run['status']}: {run['error']}) first")
        time.sleep(0.5)
    raise TimeoutError(f"run {run_id}: no such stage in time")


def health(service: ServiceProcess) -> dict:
    _, body, _ = service.request("GET", "/api/health")
    return json.loads(body)


def env_of(service: ServiceProcess, name: str) -> str:
    return service.env[name]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


class StatusPoller:
    """GET /api/runs/{id} of the healthy runs in a loop, timing each answer."""

    def __init__(self, service: ServiceProcess, run_ids: list[str], out: list[float]) -> None:
        self.service, self.run_ids, self.out = service, run_ids, out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for run_id in self.run_ids:
                started = time.monotonic()
                try:
                    status, _, _ = self.service.request("GET", f"/api/runs/{run_id}")
                except OSError:
                    continue  # the service is restarting
                if status == 200:
                    self.out.append(time.monotonic() - started)
            time.sleep(0.5)


class PeakMemory:
    """The service process's peak resident memory (VmHWM)."""

    def __init__(self, service: ServiceProcess) -> None:
        assert service.process is not None
        self.pid = service.process.pid
        self._peak = 0.0

    def peak_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM"):
                    self._peak = max(self._peak, int(line.split()[1]) / 1024)
        except OSError:
            pass
        return round(self._peak, 1)


if __name__ == "__main__":
    main()
