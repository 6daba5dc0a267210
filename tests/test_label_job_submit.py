"""`ray job submit` of the label job against a local `ray start --head` cluster."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from core.checkpoint import save_checkpoint
from core.configs import DataSource, LabelJobConfig
from core.io import write_image
from core.labels import CITYSCAPES_TRAIN_IDS
from core.models import build_model
from core.store import LabelStore
from services.localray import PORT_OPTIONS, free_ports

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"

pytestmark = pytest.mark.slow


def wait_for_dashboard(url: str, head: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start exited"
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=5):
                return
        except urllib.error.HTTPError:
            return  # answering (401 without the token): it is up
        except OSError:
            time.sleep(1)
    raise AssertionError(f"no Ray dashboard at {url} after {timeout} s")


def cluster_env(temp_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # `python` in the job's command is this environment's interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # A token of our own for this cluster and its client: a stale ~/.ray/auth_token (left by
    # another cluster) would make `ray job submit` fail with an auth error.
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = uuid.uuid4().hex
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    return env


def write_job_inputs(root: Path, n_images: int) -> LabelJobConfig:
    torch.manual_seed(0)
    model = build_model("small", CITYSCAPES_TRAIN_IDS.num_classes)
    teacher = save_checkpoint(root / "teacher.pt", model, "small", {}, CITYSCAPES_TRAIN_IDS, 1)
    rng = np.random.default_rng(0)
    for k in range(n_images):
        write_image(root / "images" / f"{k}.png", rng.integers(0, 256, (48, 64, 3), np.uint8))
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n")
    return LabelJobConfig(
        teacher_checkpoint=str(teacher),
        source=DataSource(format="folder", root=str(root / "images")),
        store=str(root / "labels.zarr"),
        batch_size=2,
        num_actors=1,
        cpus_per_actor=0.5,
    )


def test_ray_job_submit_labels_into_the_store(tmp_path):
    config = write_job_inputs(tmp_path, n_images=6)
    config_file = tmp_path / "label.yaml"
    config_file.write_text(json.dumps(config.model_dump(mode="json")))
    # Short: Ray's unix socket paths under the temp dir must stay below 108 characters.
    temp_dir = tempfile.mkdtemp(prefix="ray")
    env = cluster_env(temp_dir)
    # Every port of its own: with Ray's fixed defaults (job agent 52365, ...) this head's job agent
    # cannot start while another Ray runs on the machine, and every submit is refused with
    # "No available agent to submit job".
    ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS)), strict=True))
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    head_log = open(tmp_path / "head.log", "wb")  # noqa: SIM115 (closed in finally)
    # --block keeps `ray start` in the foreground; its Ray processes end when it is stopped,
    # so this test stops exactly the cluster it started (`ray stop` would stop every Ray
    # cluster on the machine).
    head = subprocess.Popen(
        [
            str(RAY),
            "start",
            "--head",
            "--block",
            "--num-cpus=2",
            "--dashboard-host=127.0.0.1",
            *(f"--{name}={port}" for name, port in ports.items()),
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=head_log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_dashboard(address, head)
        submit = subprocess.run(
            [
                str(RAY),
                "job",
                "submit",
                f"--address={address}",
                "--working-dir=.",
                "--",
                "python",
                "jobs/label.py",
                "--config",
                str(config_file),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        output = submit.stdout + submit.stderr
        assert submit.returncode == 0, output
        assert "succeeded" in output, output
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(10)
        head_log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
    store = LabelStore.open(config.store)
    info = store.summary()
    assert (info["n_images"], info["n_done"], info["n_failed"]) == (7, 6, 1)
    assert store.failures()[0][1].endswith("broken.png")
    assert info["progress"]["state"] == "finished"
