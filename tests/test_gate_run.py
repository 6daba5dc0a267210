"""The promotion gate end to end (``selftrain run``'s stages on an in-process Ray): a run whose
teacher is deliberately broken (trained on labels with their classes permuted) ends "not
promoted" with the reason; the same run with a good teacher ends "promoted", and MLflow's Model
Registry has its student with the gate table (read back with MLflow's client).

The gate's thresholds fit models this tiny (12 scenes of 64x128, 6 epochs of 48 crops). The
control trains from scratch with the teacher's settings and seed, so it scores as the teacher
does; a student that learns from 3 pseudo samples per real one trails both a little. Measured
(mIoU on the held-out scenes): the good run's teacher and control 11.5, its student 9.6 (-1.9),
car its worst class (-15.7 IoU); the broken run's teacher 0.3, its control 11.5, its student 0.4
(-11.1 against the control); the pseudo labels' audit 14.2 mIoU for the good teacher, 0.2 for the
broken one. So the gate lets a student be 5 points below its teacher and control and a class lose
50 IoU points, and the broken teacher's student still fails by more than twice that margin.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import ray

from core.labels import CITYSCAPES
from core.plan import RunSpec
from core.store import LabelStore
from core.synth import write_synthetic_dataset
from selftrain.local import run_local

SIZE = (64, 128)
# The broken teacher's classes: train id k is read as class PERMUTED[k].
PERMUTED = {k: (k + 5) % CITYSCAPES.num_classes for k in range(CITYSCAPES.num_classes)}


def write_data(root: Path) -> Path:
    write_synthetic_dataset(root / "scenes", 12, "source", SIZE, seed=0, split="train")
    write_synthetic_dataset(root / "scenes", 6, "source", SIZE, seed=1, split="test")
    write_synthetic_dataset(root / "scenes", 4, "source", SIZE, seed=2, split="val")
    write_synthetic_dataset(root / "pool", 12, "source", SIZE, seed=3, split="train")
    # The same labeled scenes as a paired folder, for the broken teacher.
    broken = root / "permuted"
    for image in sorted((root / "scenes" / "leftImg8bit" / "train").rglob("*.png")):
        stem = image.name.removesuffix("_leftImg8bit.png")
        label = next(
            (root / "scenes" / "gtFine" / "train").rglob(f"{stem}_gtFine_labelTrainIds.png")
        )
        (broken / "images").mkdir(parents=True, exist_ok=True)
        (broken / "labels").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, broken / "images" / f"{stem}.png")
        shutil.copyfile(label, broken / "labels" / f"{stem}.png")
    return broken


def spec(root: Path, teacher_labeled: dict) -> RunSpec:
    scenes = {"format": "cityscapes", "root": str(root / "scenes")}
    train = {
        "model": "small",
        "labeled": {**scenes, "split": "train"},
        "epochs": 6,
        "samples_per_epoch": 48,
        "schedule": {"kind": "constant", "crop_sizes": [48], "base_batch_size": 8},
        "lr": 0.05,
        "ohem": False,
        "max_failures": 0,
    }
    return RunSpec.model_validate(
        {
            "name": "street",
            "teacher": {"train": {**train, "labeled": teacher_labeled}},
            "label": {
                "sources": [{"format": "folder", "root": str(root / "pool" / "leftImg8bit")}],
                "audit": [{**scenes, "split": "val"}],
                "options": {"min_centroid_area": 4, "cpus_per_actor": 1.0},
            },
            # From scratch, 3 pseudo samples per real one: what the pseudo labels teach shows.
            "student": {"train": {**train, "pseudo_per_real": 3.0}},
            "control": True,
            "evaluation": {"tests": {"held": {**scenes, "split": "test"}}},
            # Tiny models trained for seconds (see the module docstring): a student may be 5
            # points below its teacher and control; a broken teacher's student falls far below.
            "gate": {"min_gain": -0.05, "max_class_drop": 0.5, "model_name": "street"},
        }
    )


@pytest.mark.slow
def test_a_broken_teacher_is_not_promoted_and_a_good_one_is_registered(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    # Ray Train's controller collects each epoch's report on its next poll; the epochs are short.
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")

    broken_labels = write_data(tmp_path)
    permuted = {
        "format": "paired",
        "root": str(broken_labels),
        "classes": list(CITYSCAPES.names),
        "id_map": {**PERMUTED, 255: 255},
    }
    good_labels = {"format": "cityscapes", "root": str(tmp_path / "scenes"), "split": "train"}
    try:
        good = run_local(spec(tmp_path, good_labels), tmp_path / "good", [tmp_path], {}, False)
        broken = run_local(spec(tmp_path, permuted), tmp_path / "broken", [tmp_path], {}, False)
    finally:
        ray.shutdown()
    print(json.dumps({"good": good["verdict"]["table"], "broken": broken["verdict"]["table"]}))

    assert broken["verdict"]["status"] == "not promoted"
    assert any(
        "over the labeled-only control" in r and "below the required -5.0" in r
        for r in broken["verdict"]["reasons"]
    )
    assert broken["promoted"] is None
    # The broken teacher's pseudo labels are bad, and its audit said so before any student.
    audits = {
        run: LabelStore.open(tmp_path / run / "stores" / "label-0.zarr").summary()["audit"]
        for run in ("good", "broken")
    }
    print(json.dumps({run: audit["miou"] for run, audit in audits.items()}))
    assert audits["broken"]["miou"] < audits["good"]["miou"] - 0.1
    assert good["verdict"]["status"] == "promoted", good["verdict"]["reasons"]
    assert good["promoted"]["registry"] == "mlflow"

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'good' / 'mlflow.db'}")
    (version,) = client.search_model_versions("name='street'")
    assert version.source.endswith("/model")
    gate = json.loads(version.tags["gate"])
    assert gate[0]["test"] == "held" and gate[0]["passed"] is True
    assert version.tags["teacher"] == str(tmp_path / "good" / "teacher" / "best.pt")
    assert json.loads(version.tags["audit"])[0]["n_images"] == 4
    artifacts = {a.path for a in client.list_artifacts(version.run_id, "model")}
    assert artifacts == {"model/best.pt", "model/loop0.onnx"}
