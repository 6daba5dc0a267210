"""benchmarks/gpu.sh --smoke: the GPU benchmark's every step (bare model loop, the label job in
its staged layout, a student on Ray Train) at tiny sizes on CPU, with one JSON line at the end."""

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_gpu_benchmark_smoke_runs_every_step_on_cpu():
    done = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["benchmark"], result["smoke"], result["size"]) == ("gpu", True, [64, 128])
    assert result["model"] == "deeplabv3plus_resnet50 OS8"
    # ResNet-50 at output stride 8 on 64x128: about 11 GFLOPs a forward pass.
    assert 5 < result["bare"]["gflops_per_image"] < 25
    assert result["bare"]["images_per_s"] > 0 and result["label"]["images_per_s"] > 0
    assert result["label"]["model_s"] > 0
    assert result["label_to_bare"] == pytest.approx(
        result["label"]["images_per_s"] / result["bare"]["images_per_s"], abs=1e-3
    )
    train = result["train"]
    assert (train["workers"], train["backend"], train["crop"]) == (1, "gloo", 48)
    assert train["crops_per_s"] > 0 and len(train["epoch_s"]) == 1
    assert result["fraction_of_peak"] is None  # no accelerator, no peak
