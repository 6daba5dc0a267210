"""`selftrain run`: a run spec with a second self-training loop, end to end on tiny synthetic
scenes, as a user runs it (a subprocess with its own in-process Ray)."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from core.errors import ConfigError
from core.runfiles import RunFiles
from core.store import LabelStore
from core.synth import write_synthetic_dataset
from selftrain.local import parse_test

SIZE = (48, 96)
TRAIN = {
    "model": "small",
    "labeled": {"format": "cityscapes", "root": "scenes", "split": "train"},
    "epochs": 2,
    "samples_per_epoch": 12,
    "schedule": {"kind": "constant", "crop_sizes": [32], "base_batch_size": 4},
    "ohem": False,
    "max_failures": 0,
}


@pytest.mark.slow
def test_two_loops_run_from_one_command_and_every_model_is_kept_and_scored(tmp_path):
    write_synthetic_dataset(tmp_path / "scenes", 6, "source", SIZE, seed=0, split="train")
    write_synthetic_dataset(tmp_path / "scenes", 4, "source", SIZE, seed=1, split="test")
    write_synthetic_dataset(tmp_path / "pool", 6, "target", SIZE, seed=2, split="train")
    spec = {
        "name": "two loops",
        "teacher": {"train": TRAIN},
        "label": {
            "sources": [{"format": "folder", "root": "pool/leftImg8bit"}],
            "options": {"min_centroid_area": 4, "cpus_per_actor": 1.0},
        },
        "student": {"train": {**TRAIN, "pseudo_per_real": 1.0}, "init_from_teacher": True},
        "loops": 1,
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "selftrain.cli", "run", "--spec", "spec.yaml"]
    command += ["--output", "out", "--data-root", str(tmp_path)]
    command += ["--test", f"heldout=cityscapes:{tmp_path / 'scenes'}:test"]
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])

    names = [stage["name"] for stage in summary["stages"]]
    assert names == ["teacher", "label-0", "student", "loop1-label-0", "loop1-student"]
    out = tmp_path / "out"
    # Every model is kept in its own run folder, with one metrics row per epoch.
    for model in ("teacher", "student", "loop1-student"):
        files = RunFiles(out / model)
        assert summary["checkpoints"][model] == str(files.best)
        assert [row.epoch for row in files.read_metrics()] == [0, 1]
    # The second loop's labels come from the first loop's student, the first's from the teacher.
    first = LabelStore.open(out / "stores" / "label-0.zarr", read_only=True)
    second = LabelStore.open(out / "stores" / "loop1-label-0.zarr", read_only=True)
    assert first.teacher["checkpoint"] == str(out / "teacher" / "best.pt")
    assert second.teacher["checkpoint"] == str(out / "student" / "best.pt")
    assert len(second.done_indices()) == 6
    # ... and every model is scored on the held-out scenes.
    assert set(summary["scores"]) == {"teacher", "student", "loop1-student"}
    for by_test in summary["scores"].values():
        assert 0.0 <= by_test["heldout"] <= 1.0
    assert json.loads((out / "results.json").read_text()) == summary


def test_test_sets_are_parsed_and_bad_ones_refused_in_one_line():
    name, source = parse_test("heldout=cityscapes:data/synth:test")
    assert (name, source.format, source.root, source.split) == (
        "heldout",
        "cityscapes",
        "data/synth",
        "test",
    )
    assert parse_test("v=camvid:/data/camvid")[1].split == "val"
    with pytest.raises(ConfigError, match="expected NAME=FORMAT:ROOT"):
        parse_test("heldout")
    with pytest.raises(ConfigError, match="'cityscapes', 'cityscapes_coarse'"):
        parse_test("x=nope:/data")
