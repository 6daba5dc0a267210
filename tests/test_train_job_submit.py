"""`ray job submit --working-dir . -- python jobs/student.py --config FILE` against a local
`ray start --head`, as on a cluster.

The head runs in its own temp dir and on free ports, so it neither joins nor disturbs another Ray
instance on the machine, and it is stopped by signalling the `ray start --block` process that owns
it (never `ray stop`, which stops every Ray instance on the machine).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from core.centroids import find_centroids
from core.checkpoint import load_model
from core.configs import DataSource, ScheduleConfig, TrainJobConfig, save_config
from core.datasets import cityscapes
from core.evaluate import evaluate_checkpoint
from core.labels import CITYSCAPES
from core.store import LabelStore
from core.synth import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
SIZE = (64, 128)
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
# The job's `python` is this interpreter (with Ray), also when the virtual environment is not
# activated.
ENV["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{ENV.get('PATH', '')}"
ENV.pop("RAY_ADDRESS", None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not RAY.is_file(), reason=f"the ray command is not installed at {RAY}"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """The dashboard address of a fresh `ray start --head` with 2 CPUs."""
    # A short temp dir: Ray's socket paths under it must stay below the 107-character limit.
    temp_dir = tempfile.mkdtemp(prefix="ray")
    dashboard = _free_port()
    command = [
        str(RAY),
        "start",
        "--head",
        "--block",
        f"--temp-dir={temp_dir}",
        f"--port={_free_port()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--disable-usage-stats",
    ]
    log = open(Path(temp_dir) / "head.log", "w")  # noqa: SIM115 (closed below)
    head = subprocess.Popen(command, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ray start --head did not come up: {command}")
                time.sleep(0.5)
        yield address
    finally:
        # SIGINT shuts the node down at once; SIGTERM would first drain it for up to 30 s.
        head.send_signal(signal.SIGINT)
        head.wait(timeout=60)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submitted_student_job_leaves_a_checkpoint_that_loads_and_evaluates(ray_head, tmp_path):
    write_synthetic_dataset(tmp_path / "source", 8, "source", SIZE, seed=0, split="train")
    write_synthetic_dataset(tmp_path / "source", 4, "source", SIZE, seed=1, split="val")
    write_synthetic_dataset(tmp_path / "target", 4, "target", SIZE, seed=2, split="train")
    target = cityscapes(tmp_path / "target", "train")
    store = LabelStore.create(
        tmp_path / "store", target.image_paths(), [SIZE] * 4, CITYSCAPES, {}, {}
    )
    for i in range(4):
        label = target.load_label(i)
        store.write(i, label, np.full(SIZE, 230, np.uint8), find_centroids(label, min_area=4))
    config = TrainJobConfig(
        run_name="submitted",
        storage_path=str(tmp_path / "runs"),
        labeled=DataSource(format="cityscapes", root=str(tmp_path / "source"), split="train"),
        val=DataSource(format="cityscapes", root=str(tmp_path / "source"), split="val"),
        pseudo=[str(tmp_path / "store")],
        confidence_threshold=0.5,
        pseudo_per_real=1.0,
        samples_per_epoch=8,
        schedule=ScheduleConfig(kind="coarse2fine+", crop_sizes=[32, 64], base_batch_size=4),
        epochs=2,
        ohem=False,
        num_workers=1,
        cpus_per_worker=1,
    )
    config_file = save_config(config, tmp_path / "student.yaml")

    command = [str(RAY), "job", "submit", "--address", ray_head, "--working-dir", str(REPO)]
    command += ["--", "python", "jobs/student.py", "--config", str(config_file)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The job prints its summary as one JSON line.
    summary_line = next(line for line in done.stdout.splitlines() if '"last_checkpoint"' in line)
    summary = json.loads(summary_line[summary_line.index("{") :])
    assert summary["epochs_done"] == 2
    last = tmp_path / "runs" / "submitted" / "last.pt"
    assert summary["last_checkpoint"] == str(last)

    # What the label job does with a teacher: load_model.
    model, label_space, checkpoint = load_model(last)
    assert label_space.names == CITYSCAPES.names
    assert checkpoint["epoch"] == 2 and checkpoint["model_name"] == "small"
    # What `selftrain evaluate` does: the same mIoU the job measured on its last epoch.
    result = evaluate_checkpoint(last, config.val)
    assert result["miou"] == pytest.approx(summary["final"]["val_miou"], abs=1e-12)
