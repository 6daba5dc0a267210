"""Load on ``POST /api/predict``: N clients for D seconds against a real ``selftrain serve``.

    python benchmarks/predict_load.py --clients 16 --seconds 60

The service runs as its own process (uvicorn, the "small" model's checkpoint in its data root, no
Ray needed for prediction). Each client thread posts images round robin from a mix: 256x512,
512x1024 and 1024x2048 PNGs, a 57-byte PNG whose header declares 10000x10000 (a decompression
bomb: refused from its header) and a file that is not an image. The server's resident memory is
sampled every 0.5 s. Prints one JSON line: answers by status, 5xx count, p50/p95 latency per
kind of upload, and memory: the peak in the first and in the second half of the run and their
ratio (flat: at most 1.2).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def png(height: int, width: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def header_only_png(height: int, width: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_service(root: Path, token: str, port: int, concurrency: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "SELFTRAIN_API_TOKEN": token,
        "SELFTRAIN_DATA_ROOTS": json.dumps([str(root / "data")]),
        "SELFTRAIN_WORKDIR": str(root / "work"),
        "SELFTRAIN_DATABASE_URL": f"sqlite:///{root}/service.db",
        # No run is created: prediction needs no cluster, so none is started.
        "SELFTRAIN_RAY_ADDRESS": "http://127.0.0.1:9",
        "SELFTRAIN_PREDICT_CONCURRENCY": str(concurrency),
    }
    command = [sys.executable, "-m", "selftrain.cli", "serve", "--port", str(port)]
    log = (root / "service.log").open("w")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the service did not start; see {root / 'service.log'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=2, help="the service's predict slots")
    args = parser.parse_args()

    from core.checkpoint import save_checkpoint
    from core.labels import CITYSCAPES
    from core.models import build_model

    uploads = {
        "256x512": png(256, 512, 0),
        "512x1024": png(512, 1024, 1),
        "1024x2048": png(1024, 2048, 2),
        "bomb 10000x10000": header_only_png(10_000, 10_000),
        "not an image": b"hello, this is not an image",
    }
    with tempfile.TemporaryDirectory(prefix="predict-load-") as tmp:
        root = Path(tmp)
        checkpoint = root / "data" / "models" / "small.pt"
        model = build_model("small", CITYSCAPES.num_classes)
        save_checkpoint(checkpoint, model, "small", {}, CITYSCAPES, epoch=0)
        token, port = secrets.token_urlsafe(16), free_port()
        service = start_service(root, token, port, args.concurrency)
        try:
            result = load(service.pid, port, token, str(checkpoint), uploads, args)
        finally:
            service.terminate()
            service.wait(30)
    print(json.dumps(result))
    return 0


def load(pid: int, port: int, token: str, checkpoint: str, uploads: dict, args) -> dict:
    url = f"http://127.0.0.1:{port}/api/predict"
    headers = {"Authorization": f"Bearer {token}"}
    kinds = list(uploads)
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: Counter = Counter()
    memory: list[tuple[float, float]] = []
    lock = threading.Lock()
    start = time.perf_counter()
    stop = start + args.seconds

    def client(offset: int) -> None:
        with httpx.Client(timeout=300) as http:
            k = offset
            while time.perf_counter() < stop:
                kind = kinds[k % len(kinds)]
                k += 1
                sent = time.perf_counter()
                response = http.post(
                    url,
                    headers=headers,
                    files={"image": (f"{kind}.png", uploads[kind])},
                    data={"checkpoint": checkpoint, "output": "shares"},
                )
                with lock:
                    latencies[kind].append(time.perf_counter() - sent)
                    statuses[f"{kind}: {response.status_code}"] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        memory.append((time.perf_counter() - start, rss_mb(pid)))
        time.sleep(0.5)
    half = args.seconds / 2
    first = max((m for t, m in memory if t <= half), default=0.0)
    second = max((m for t, m in memory if t > half), default=0.0)

    def quantile(values: list[float], q: float) -> float:
        return (
            round(statistics.quantiles(values, n=100)[int(q * 100) - 1], 3)
            if len(values) > 1
            else 0.0
        )

    return {
        "benchmark": "predict_load",
        "clients": args.clients,
        "seconds": args.seconds,
        "predict_concurrency": args.concurrency,
        "requests": sum(statuses.values()),
        "answers": dict(sorted(statuses.items())),
        "server_errors_5xx": sum(
            n for key, n in statuses.items() if key.endswith((": 500", ": 502", ": 503", ": 504"))
        ),
        "latency_s": {
            kind: {"n": len(v), "p50": quantile(v, 0.5), "p95": quantile(v, 0.95)}
            for kind, v in latencies.items()
        },
        "rss_mb": {
            "first_half_peak": round(first, 1),
            "second_half_peak": round(second, 1),
            "ratio": round(second / first, 3) if first else None,
            "end": round(memory[-1][1], 1) if memory else None,
        },
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
    }


if __name__ == "__main__":
    sys.exit(main())
