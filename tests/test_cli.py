"""The `selftrain` command as a user runs it: in a subprocess, reading what it prints."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from core.datasets import cityscapes
from core.labels import CITYSCAPES
from selftrain.cli import parse_size


def selftrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selftrain.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_synth_writes_scenes_the_cityscapes_loader_reads_back(tmp_path):
    result = selftrain(
        "synth",
        "--out",
        str(tmp_path),
        "--n",
        "8",
        "--domain",
        "source",
        "--size",
        "64x128",
        "--seed",
        "3",
    )
    assert result.returncode == 0, result.stderr
    dataset = cityscapes(tmp_path, "train")
    assert len(dataset) == 8
    image, label, path = dataset[0]
    assert image.shape == (64, 128, 3) and image.dtype == np.uint8
    assert label.shape == (64, 128)
    assert set(np.unique(label)) <= set(range(CITYSCAPES.num_classes)) | {255}
    assert path.endswith("_leftImg8bit.png")


def test_synth_target_domain_differs_from_source(tmp_path):
    for domain in ("source", "target"):
        result = selftrain(
            "synth",
            "--out",
            str(tmp_path / domain),
            "--n",
            "4",
            "--domain",
            domain,
            "--size",
            "64x128",
        )
        assert result.returncode == 0, result.stderr
    source = np.stack([img for img, _, _ in cityscapes(tmp_path / "source", "train")])
    target = np.stack([img for img, _, _ in cityscapes(tmp_path / "target", "train")])
    assert (
        np.abs(source.astype(float).mean((0, 1, 2)) - target.astype(float).mean((0, 1, 2))).max()
        > 10
    )


def test_synth_rejects_a_bad_size(tmp_path):
    result = selftrain("synth", "--out", str(tmp_path), "--n", "1", "--size", "64by128")
    assert result.returncode != 0
    assert "64by128" in result.stderr


@pytest.mark.slow
def test_models_builds_every_model_and_runs_a_512x1024_forward():
    result = selftrain("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["model"]: row for row in json.loads(result.stdout.strip().splitlines()[-1])}
    assert set(rows) == {
        "deeplabv3plus_resnet50",
        "deeplabv3plus_resnet101",
        "deeplabv3plus_resnext50",
        "pspnet_resnet101",
        "fast_scnn",
        "small",
        "smp",
    }
    assert 38e6 < rows["deeplabv3plus_resnet50"]["parameters"] < 42e6
    # smp's default, Unet with resnet34, and what else smp offers by name.
    assert {"Unet", "FPN", "DeepLabV3Plus", "UPerNet", "Segformer"} <= set(
        rows["smp"]["architectures"]
    )
    assert {"resnet18", "resnet50", "mit_b0"} <= set(rows["smp"]["encoders"])
    for row in rows.values():
        assert row["output"] == [1, 19, 512, 1024]


@pytest.mark.parametrize(
    ("text", "size"),
    [("256x512", (256, 512)), (" 64X128 ", (64, 128)), ("1024x2048", (1024, 2048))],
)
def test_parse_size(text: str, size: tuple[int, int]) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["256", "256x", "x512", "axb", "256x512x3", "-256x512", "16x16"])
def test_parse_size_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_evaluate_reports_an_unknown_checkpoint_as_an_error(tmp_path):
    missing = tmp_path / "missing.pt"
    result = selftrain(
        "evaluate",
        "--checkpoint",
        str(missing),
        "--format",
        "camvid",
        "--root",
        str(tmp_path),
        "--json",
    )
    assert result.returncode == 2
    assert "missing.pt" in result.stderr
