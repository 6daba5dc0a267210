import copy
import math

import cv2
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from core.labels import CITYSCAPES
from core.metrics import ConfusionMatrix


def test_two_by_two_example_by_hand():
    # target  [[0, 0],    pred  [[0, 1],
    #          [1, 1]]           [1, 1]]
    # class 0: tp 1, fn 1, fp 0 -> 1/2;  class 1: tp 2, fp 1, fn 0 -> 2/3;  class 2 absent -> nan
    cm = ConfusionMatrix(3)
    cm.update(np.array([[0, 1], [1, 1]]), np.array([[0, 0], [1, 1]]))
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert cm.matrix.dtype == np.int64
    iou = cm.iou()
    assert iou[0] == pytest.approx(1 / 2)
    assert iou[1] == pytest.approx(2 / 3)
    assert math.isnan(iou[2])
    assert cm.miou() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert cm.pixel_accuracy() == pytest.approx(3 / 4)


def test_ignored_targets_count_nowhere():
    cm = ConfusionMatrix(2)
    # The wrong prediction (1) on the ignored pixel must not become a false positive of class 1.
    cm.update(np.array([[0, 1, 1]]), np.array([[0, 255, 1]]))
    assert cm.matrix.tolist() == [[1, 0], [0, 1]]
    assert cm.iou().tolist() == [1.0, 1.0]
    assert cm.pixel_accuracy() == 1.0


def test_numpy_and_torch_inputs_give_the_same_counts():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 4, size=(2, 9, 7)).astype(np.uint8)
    target = rng.integers(0, 4, size=(2, 9, 7)).astype(np.uint8)
    target[:, 0] = 255
    from_numpy, from_torch = ConfusionMatrix(4), ConfusionMatrix(4)
    from_numpy.update(pred, target)
    from_torch.update(torch.from_numpy(pred).long(), torch.from_numpy(target))
    assert np.array_equal(from_numpy.matrix, from_torch.matrix)
    assert from_numpy.matrix.sum() == 2 * 8 * 7


def test_merge_of_two_halves_equals_whole():
    rng = np.random.default_rng(1)
    pred = rng.integers(0, 5, size=(20, 30))
    target = rng.integers(0, 5, size=(20, 30))
    target[rng.random((20, 30)) < 0.2] = 255
    whole = ConfusionMatrix(5)
    whole.update(pred, target)
    top, bottom = ConfusionMatrix(5), ConfusionMatrix(5)
    top.update(pred[:10], target[:10])
    bottom.update(pred[10:], target[10:])
    merged = top.merge(bottom)
    assert np.array_equal(merged.matrix, whole.matrix)
    assert merged.miou() == whole.miou()


def test_merge_rejects_a_different_class_count():
    with pytest.raises(ValueError, match="3-class"):
        ConfusionMatrix(2).merge(ConfusionMatrix(3))


def test_out_of_range_values_are_rejected_with_the_values():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"target values outside 0..2 .*\[7\]"):
        cm.update(np.array([0, 1]), np.array([0, 7]))
    with pytest.raises(ValueError, match=r"prediction values outside 0..2 .*\[3\]"):
        cm.update(np.array([3, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    assert cm.matrix.sum() == 0


def test_empty_matrix_is_nan_and_to_dict_uses_none():
    cm = ConfusionMatrix(2)
    assert math.isnan(cm.miou())
    assert math.isnan(cm.pixel_accuracy())
    cm.update(np.array([0, 0]), np.array([0, 0]))
    assert cm.to_dict(["a", "b"]) == {
        "miou": 1.0,
        "pixel_accuracy": 1.0,
        "per_class_iou": {"a": 1.0, "b": None},
    }


def test_all_reduce_without_a_process_group_is_a_no_op():
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 1]), np.array([0, 0]))
    assert cm.all_reduce().matrix.tolist() == [[1, 1], [0, 0]]


def test_all_reduce_sums_over_processes(tmp_path):
    # One process with a gloo group of world size 1: the sum is the matrix itself, but the path
    # through torch.distributed (dtype, device, write-back) is exercised.
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        cm = ConfusionMatrix(2)
        cm.update(np.array([0, 1, 1]), np.array([0, 0, 1]))
        cm.all_reduce()
        assert cm.matrix.tolist() == [[1, 1], [0, 1]]
        assert cm.matrix.dtype == np.int64
    finally:
        dist.destroy_process_group()


# --- parity with the official Cityscapes evaluator -------------------------------------------

# Regular Cityscapes ids used in the fixture: road 7, sidewalk 8, building 11, pole 17, sky 23,
# person 24, car 26, plus ignored ids 0 (unlabeled) and 4 (static).
_GT_IDS = [0, 4, 7, 8, 11, 17, 23, 24, 26]
# Predictions never hold ignored ids (our models predict train classes only); 33 (bicycle) never
# occurs in the ground truth, so its IoU is 0, and most other classes are absent from both (nan).
_PRED_IDS = [7, 8, 11, 17, 23, 24, 26, 33]


def _random_regions(rng: np.random.Generator, ids: list[int], shape: tuple[int, int]) -> np.ndarray:
    image = np.full(shape, rng.choice(ids), dtype=np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        h, w = rng.integers(2, 16), rng.integers(2, 24)
        image[y : y + h, x : x + w] = rng.choice(ids)
    return image


def _write_cityscapes_fixture(root, rng):
    gt_files, pred_files, gts, preds = [], [], [], []
    for i, city in enumerate(["aachen", "bochum", "aachen"]):
        stem = f"{city}_00000{i}_000019"
        gt = _random_regions(rng, _GT_IDS, (32, 64))
        pred = gt.copy()
        wrong = _random_regions(rng, _PRED_IDS, (32, 64))
        mask = rng.random((32, 64)) < 0.3
        pred[mask] = wrong[mask]
        # Where the ground truth is ignored, predict a class (ignored ids are never predicted).
        pred[np.isin(pred, [0, 4])] = 26
        gt_path = root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png"
        pred_path = root / "results" / f"{stem}_pred.png"
        for path, image in ((gt_path, gt), (pred_path, pred)):
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), image)
        gt_files.append(str(gt_path))
        pred_files.append(str(pred_path))
        gts.append(gt)
        preds.append(pred)
    return gt_files, pred_files, gts, preds


def test_equals_official_cityscapes_evaluator(tmp_path):
    official = pytest.importorskip(
        "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
        reason="cityscapesscripts (dev extra) not installed",
    )

    gt_files, pred_files, gts, preds = _write_cityscapes_fixture(tmp_path, np.random.default_rng(3))

    args = copy.copy(official.args)
    args.evalInstLevelScore = False  # needs *_instanceIds.png, which the fixture does not have
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    result = official.evaluateImgLists(pred_files, gt_files, args)

    ours = ConfusionMatrix(CITYSCAPES.num_classes)
    for gt, pred in zip(gts, preds, strict=True):
        ours.update(CITYSCAPES.to_train_ids(pred), CITYSCAPES.to_train_ids(gt))

    theirs = np.array([float(result["classScores"][name]) for name in CITYSCAPES.names])
    assert_close(ours.iou(), theirs, rtol=0, atol=1e-6, equal_nan=True)
    # The fixture must exercise all three cases: a proper IoU, IoU 0 and an absent class.
    assert np.sum(ours.iou() > 0) >= 5
    assert ours.iou()[CITYSCAPES.names.index("bicycle")] == 0.0
    assert np.isnan(ours.iou()).sum() >= 5
    assert ours.miou() == pytest.approx(result["averageScoreClasses"], abs=1e-6)

    # Pixel accuracy from their confusion matrix, over pixels whose ground truth is evaluated.
    matrix = np.array(result["confMatrix"])
    evaluated = [label_id for label_id, _ in CITYSCAPES.id_to_train.items()]
    correct = sum(matrix[i, i] for i in evaluated)
    assert ours.pixel_accuracy() == pytest.approx(correct / matrix[evaluated].sum(), abs=1e-12)
