"""The label job's audit end to end: a teacher whose labels are written into its images (so the
hand computation of tests/test_audit.py is the expected answer) labels a pool and an audit set on
Ray; the store's summary, ``selftrain store-info`` and MLflow carry the audit."""

import json
from functools import partial

import numpy as np
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from test_audit import CONFIDENCE, PSEUDO, TRUTH, hand_audit

from core.checkpoint import save_checkpoint
from core.configs import DataSource, LabelJobConfig, TrackingSettings
from core.io import write_image, write_label
from core.labels import declare_label_space
from core.models import build_model
from core.store import LabelStore
from jobs.label import ModelStep, run
from selftrain.cli import main as cli

SPACE = declare_label_space("hand", ["road", "car"])


@pytest.fixture(scope="module")
def ray_local():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def coded(label: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """An RGB image that carries its pseudo label in red and its confidence in green."""
    return np.stack([label, confidence, np.zeros_like(label)], axis=-1).astype(np.uint8)


def write_data(root):
    """A pool of 2 images (3 road pixels, 1 car each) and an audit set: the hand-made image with
    its truth, and a broken image whose label is fine."""
    pool = root / "pool"
    for k in range(2):
        write_image(pool / f"p{k}.png", coded(np.array([[0, 0], [0, 1]]), np.full((2, 2), 240)))
    audit = root / "audit"
    write_image(audit / "images" / "a.png", coded(PSEUDO, CONFIDENCE))
    write_label(audit / "labels" / "a.png", TRUTH)
    (audit / "images" / "b.png").write_bytes(b"not a png")
    write_label(audit / "labels" / "b.png", TRUTH)
    return pool, audit


def config_for(root, pool, audit, **extra) -> LabelJobConfig:
    torch.manual_seed(0)
    teacher = save_checkpoint(root / "t.pt", build_model("small", 2), "small", {}, SPACE, epoch=1)
    return LabelJobConfig(
        teacher_checkpoint=str(teacher),
        source=DataSource(format="folder", root=str(pool)),
        store=str(root / "labels.zarr"),
        audit=[DataSource(format="paired", root=str(audit), classes=["road", "car"])],
        num_actors=1,
        cpus_per_actor=0.5,
        min_centroid_area=1,
        ray_address="local",
        **extra,
    )


def coded_teacher(calls_file: str) -> ModelStep:
    """The teacher of these tests: its labels and confidences are the images' red and green; it
    counts its calls in a file (the actors are other processes)."""

    # Defined in here, so that Ray pickles it by value (the actors cannot import this module).
    def read_code(calls: str):
        def predict(images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
            with open(calls, "a") as f:
                f.write(f"{len(images)}\n")
            return [(image[..., 0].copy(), image[..., 1].copy()) for image in images]

        return predict

    return ModelStep(partial(read_code, calls_file))


@pytest.mark.slow
def test_the_store_records_the_audit_the_hand_computation_gives(ray_local, tmp_path, capsys):
    pool, audit = write_data(tmp_path)
    tracking = TrackingSettings(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="audit")
    config = config_for(tmp_path, pool, audit, tracking=tracking)
    calls = tmp_path / "calls.txt"
    step = coded_teacher(str(calls))
    result = run(config, progress_bar=False, step=step)

    store = LabelStore.open(config.store, read_only=True)
    recorded = store.summary()["audit"]
    expected = hand_audit().model_dump(mode="json")
    # The pool: 6 road and 2 car pixels; the broken audit image is left out with its reason.
    expected["classes"][0]["pool_share"], expected["classes"][1]["pool_share"] = 0.75, 0.25
    assert recorded["n_failed"] == 1 and recorded["failures"][0][0].endswith("b.png")
    recorded["n_failed"], recorded["failures"] = 0, []
    expected["sources"] = [f"paired:{audit}"]
    assert recorded == expected
    assert result["audit"]["miou"] == pytest.approx(5 / 12)
    # The pool went through the model in one call of 2; the audit in one of 1 (b.png unread).
    assert sorted(calls.read_text().split()) == ["1", "2"]

    assert cli(["store-info", config.store, "--compact"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["audit"]["classes"][1]["iou"] == 0.5

    client = MlflowClient(tracking_uri=tracking.uri)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("audit").experiment_id])
    assert mlflow_run.data.metrics["audit_miou"] == pytest.approx(5 / 12)
    assert mlflow_run.data.metrics["audit_iou.car"] == 0.5
    assert mlflow_run.info.status == "FINISHED"

    # A rerun with nothing new to label keeps the audit without predicting the audit set again.
    again = run(config.model_copy(update={"tracking": None}), progress_bar=False, step=step)
    assert again["labeled"] == 0 and again["audit"]["miou"] == pytest.approx(5 / 12)
    assert sorted(calls.read_text().split()) == ["1", "2"]


def test_an_audit_with_other_classes_is_refused_by_name(ray_local, tmp_path):
    pool, audit = write_data(tmp_path)
    config = config_for(tmp_path, pool, audit)
    other = DataSource(format="paired", root=str(audit), classes=["road", "bus"])
    step = coded_teacher(str(tmp_path / "calls.txt"))
    with pytest.raises(Exception, match=r"classes \['road', 'bus'\] differ from the teacher's"):
        run(config.model_copy(update={"audit": [other]}), progress_bar=False, step=step)
