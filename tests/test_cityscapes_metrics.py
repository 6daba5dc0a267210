"""Category IoU and iIoU (core/cityscapes_metrics.py) through ``selftrain evaluate``'s function,
equal to cityscapesscripts' own evaluation on a fixture with instance maps; KITTI's instance
encoding converted by hand-checked values."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from core.checkpoint import save_checkpoint
from core.cityscapes_metrics import kitti_instances
from core.configs import DataSource
from core.evaluate import evaluate_checkpoint
from core.io import write_image, write_label
from core.label_export import predict_folder
from core.labels import CITYSCAPES
from core.models import build_model
from core.synth import write_synthetic_dataset

# Cityscapes label ids of the classes with instances.
INSTANCE_IDS = (24, 25, 26, 27, 28, 29, 30, 31, 32, 33)


def _write_instance_maps(root: Path) -> list[Path]:
    """Each scene's *_gtFine_instanceIds.png: every connected region of an instance class is one
    instance (id * 1000 + index), other pixels keep their label id."""
    truths = sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    for truth in truths:
        ids = cv2.imread(str(truth), cv2.IMREAD_UNCHANGED).astype(np.int32)
        instances = ids.copy()
        for label_id in INSTANCE_IDS:
            count, regions = cv2.connectedComponents((ids == label_id).astype(np.uint8))
            for k in range(1, count):
                instances[regions == k] = label_id * 1000 + k - 1
        path = str(truth).replace("labelIds", "instanceIds")
        assert cv2.imwrite(path, instances.astype(np.uint16))
    return truths


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("instances")
    write_synthetic_dataset(root / "city", 6, "source", (96, 192), seed=5, split="val")
    truths = _write_instance_maps(root / "city")
    torch.manual_seed(1)
    save_checkpoint(root / "model.pt", build_model("small", 19), "small", {}, CITYSCAPES, epoch=1)
    return root, truths


def test_category_iou_and_iiou_equal_cityscapesscripts(fixture, monkeypatch):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as evaluator  # noqa: N813

    # cityscapesscripts calls np.in1d, which NumPy 2.4 removed; np.isin is its replacement.
    def in1d(values, test, invert=False):
        return np.isin(values, test, invert=invert).ravel()

    monkeypatch.setattr(np, "in1d", in1d, raising=False)
    root, truths = fixture
    source = DataSource(format="cityscapes", root=str(root / "city"), split="val")
    ours = evaluate_checkpoint(root / "model.pt", source)
    predicted = root / "predicted"
    predict_folder(root / "model.pt", source, predicted, "cityscapes")
    predictions = [
        str(predicted / t.name.replace("_gtFine_labelIds", "_leftImg8bit")) for t in truths
    ]
    evaluator.args.quiet, evaluator.args.JSONOutput = True, False
    evaluator.args.evalInstLevelScore = True
    theirs = evaluator.evaluateImgLists(predictions, [str(t) for t in truths], evaluator.args)

    def same(mine: float | None, their: float) -> bool:
        return (mine is None and np.isnan(their)) or mine == pytest.approx(their, abs=1e-12)

    assert same(ours["miou"], theirs["averageScoreClasses"])
    assert same(ours["category_miou"], theirs["averageScoreCategories"])
    assert same(ours["iiou"], theirs["averageScoreInstClasses"])
    assert same(ours["category_iiou_mean"], theirs["averageScoreInstCategories"])
    for name, value in ours["category_iou"].items():
        assert same(value, theirs["categoryScores"][name]), name
    for name, value in ours["iiou_per_class"].items():
        assert same(value, theirs["classInstScores"][name]), name
    for name, value in ours["category_iiou"].items():
        assert same(value, theirs["categoryInstScores"][name]), name
    # Not a degenerate fixture: some instances are found, some are missed.
    defined = [v for v in ours["iiou_per_class"].values() if v is not None]
    assert defined and 0 < ours["iiou"] < 1


def test_kitti_instances_become_cityscapes_instance_ids():
    # KITTI: label * 256 + instance (0: no instance). A car (26) instance 3, road (7) stuff.
    raw = np.array([[26 * 256 + 3, 7 * 256], [26 * 256 + 1, 0]], np.uint16)
    np.testing.assert_array_equal(kitti_instances(raw), [[26003, 7], [26001, 0]])


def test_kitti_evaluation_reports_iiou_from_its_instance_folder(tmp_path):
    root = tmp_path / "kitti"
    label = np.full((32, 64), 7, np.uint8)  # road
    label[8:24, 8:24] = 26  # one car
    instances = (label.astype(np.uint16) * 256).astype(np.uint16)
    instances[8:24, 8:24] = 26 * 256 + 1
    write_image(root / "training/image_2/000000_10.png", np.zeros((32, 64, 3), np.uint8))
    write_label(root / "training/semantic/000000_10.png", label)
    (root / "training/instance").mkdir()
    assert cv2.imwrite(str(root / "training/instance/000000_10.png"), instances)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.pt", build_model("small", 19), "small", {}, CITYSCAPES, epoch=1)
    result = evaluate_checkpoint(
        tmp_path / "m.pt", DataSource(format="kitti", root=str(root), split="training")
    )
    # The car's iIoU by hand from the model's own prediction of the (black) image.
    from core.checkpoint import load_model
    from core.inference import predict

    model, _, _ = load_model(tmp_path / "m.pt")
    with torch.no_grad():
        prediction, _ = predict(model.eval(), np.zeros((32, 64, 3), np.uint8))
    car = np.zeros((32, 64), bool)
    car[8:24, 8:24] = True
    weight = 12794.0202738185 / car.sum()  # Cityscapes' average car size over this car's size
    tp = int((prediction[car] == 13).sum())
    fp = int((prediction[~car] == 13).sum())
    expected = tp * weight / (tp * weight + fp + (car.sum() - tp) * weight)
    car_iiou = result["iiou_per_class"]["car"]
    assert car_iiou == pytest.approx(expected) if tp + fp else car_iiou in (0.0, None)
    assert set(result["iiou_per_class"]) == {
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"
    }  # fmt: skip
    assert set(result["category_iou"]) == {
        "flat", "construction", "object", "nature", "sky", "human", "vehicle"
    }  # fmt: skip
