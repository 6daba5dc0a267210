"""The audit's numbers against a hand computation (core.audit), and drift between loops
(core.drift)."""

import numpy as np
import pytest

from core.audit import AuditCounts, summarize
from core.drift import drift, taught_away

# Two classes; the bottom-right pixel's truth is ignore (255) and counts nowhere.
TRUTH = np.array([[0, 0, 1], [1, 1, 255]], np.uint8)
PSEUDO = np.array([[0, 1, 1], [1, 0, 0]], np.uint8)
CONFIDENCE = np.array([[255, 128, 204], [230, 51, 0]], np.uint8)


def hand_audit():
    counts = AuditCounts(num_classes=2)
    counts.update(PSEUDO, CONFIDENCE, TRUTH)
    return summarize(counts, ["road", "car"], ["hand"], pool_pixels=np.array([30, 10]))


def test_iou_precision_recall_equal_the_hand_computation():
    # Counted (truth, pseudo, confidence): (0,0,255) right, (0,1,128), (1,1,204) right,
    # (1,1,230) right, (1,0,51). Confusion [truth, pseudo]: [[1, 1], [1, 2]].
    audit = hand_audit()
    road, car = audit.classes
    assert audit.n_images == 1 and audit.n_pixels == 5
    assert road.iou == pytest.approx(1 / 3)  # tp 1, pseudo 2, truth 2: 1 / (2 + 2 - 1)
    assert (road.precision, road.recall) == (pytest.approx(1 / 2), pytest.approx(1 / 2))
    assert car.iou == pytest.approx(2 / 4)  # tp 2, pseudo 3, truth 3: 2 / (3 + 3 - 2)
    assert (car.precision, car.recall) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert audit.miou == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert audit.pixel_accuracy == pytest.approx(3 / 5)
    assert (road.pseudo_share, road.truth_share) == (pytest.approx(2 / 5), pytest.approx(2 / 5))
    # The pool's shares come from its pixel totals: 30 of 40 road.
    assert (road.pool_share, car.pool_share) == (0.75, 0.25)


def test_calibration_bins_and_ece_equal_the_hand_computation():
    # Bin of confidence c (uint8): floor(c / 255 * 10), 255 in the last: 255 -> 9, 128 -> 5,
    # 204 -> 8, 230 -> 9, 51 -> 2.
    audit = hand_audit()
    by_bin = {k: b for k, b in enumerate(audit.bins) if b.pixels}
    assert sorted(by_bin) == [2, 5, 8, 9]
    assert [by_bin[k].pixels for k in (2, 5, 8, 9)] == [1, 1, 1, 2]
    assert [by_bin[k].accuracy for k in (2, 5, 8, 9)] == [0.0, 0.0, 1.0, 1.0]
    assert by_bin[9].confidence == pytest.approx((255 + 230) / 2 / 255)
    assert (by_bin[2].lower, by_bin[2].upper) == (0.2, 0.3)
    # ECE = 1/5 |0 - .2| + 1/5 |0 - 128/255| + 1/5 |1 - .8| + 2/5 |1 - 485/510|
    expected = (0.2 + 128 / 255 + 0.2) / 5 + 2 / 5 * (1 - 485 / 510)
    assert audit.ece == pytest.approx(expected)
    road, car = audit.classes
    assert road.ece == pytest.approx(0.5 * 0 + 0.5 * 0.2)  # bins 9 (1 vs 1.0) and 2 (0 vs .2)
    assert car.ece == pytest.approx((128 / 255 + 0.2 + (1 - 230 / 255)) / 3)
    # Confident: at least 0.95 (242.25 of 255): only the 255 pixel, which is right.
    assert (audit.confident_share, audit.confident_accuracy) == (pytest.approx(0.2), 1.0)


def test_counts_of_pieces_merge_into_the_counts_of_the_whole():
    whole = AuditCounts(num_classes=2)
    whole.update(PSEUDO, CONFIDENCE, TRUTH)
    whole.update(PSEUDO[::-1], CONFIDENCE[::-1], TRUTH[::-1])
    first, second = AuditCounts(num_classes=2), AuditCounts(num_classes=2)
    first.update(PSEUDO, CONFIDENCE, TRUTH)
    second.update(PSEUDO[::-1], CONFIDENCE[::-1], TRUTH[::-1])
    merged = first.merge(second)
    np.testing.assert_array_equal(merged.confusion, whole.confusion)
    np.testing.assert_allclose(merged.bin_confidence, whole.bin_confidence)
    assert merged.n_images == 2 and merged.confident == whole.confident == 2


def test_labels_outside_the_classes_are_refused_by_name():
    counts = AuditCounts(num_classes=2)
    with pytest.raises(ValueError, match=r"true label values outside 0..1: \[7\]"):
        counts.update(PSEUDO, CONFIDENCE, np.where(TRUTH == 1, 7, TRUTH).astype(np.uint8))


def test_an_audit_becomes_flat_mlflow_metrics():
    metrics = hand_audit().metrics()
    assert metrics["audit_miou"] == pytest.approx(5 / 12)
    assert metrics["audit_iou.car"] == pytest.approx(0.5)
    assert metrics["audit_images"] == 1.0


def store_summary(pool: dict[str, int], truth_shares: dict[str, float], iou: float) -> dict:
    """A store summary as LabelStore.summary gives it, with an audit of these shares."""
    counts = AuditCounts(num_classes=3)
    summary_audit = summarize(counts, list(pool), ["hand"]).model_dump()
    for row in summary_audit["classes"]:
        row["truth_share"], row["iou"] = truth_shares[row["name"]], iou
    summary_audit["confident_share"] = iou
    return {"pixels_per_class": pool, "audit": summary_audit}


def test_drift_names_the_class_whose_pseudo_share_was_halved():
    labeled = {"road": 0.5, "car": 0.3, "sign": 0.2}
    before = store_summary({"road": 500, "car": 300, "sign": 200}, labeled, 0.6)
    after = store_summary({"road": 600, "car": 300, "sign": 100}, labeled, 0.5)
    found = drift(before, after, "loop1-label-0", "label-0", fraction=0.75)
    sign = next(c for c in found.classes if c.name == "sign")
    assert (sign.share_before, sign.share_now, sign.labeled_share) == (0.2, 0.1, 0.2)
    assert found.taught_away == ["sign"]  # 0.1 < 0.75 x 0.2; car 0.3 and road 0.6 are not
    assert (found.confident_share_before, found.confident_share_now) == (0.6, 0.5)
    assert (sign.iou_before, sign.iou_now) == (0.6, 0.5)
    # Before the halving nothing was taught away; at the default fraction (0.5) a share of
    # exactly half is not below it.
    assert taught_away(before, 0.75) == []
    assert drift(before, after, "loop1-label-0", "label-0").taught_away == []


def test_without_an_audit_no_class_is_named():
    plain = {"pixels_per_class": {"road": 10, "car": 0}}
    found = drift(plain, plain, "loop1-label-0", "label-0")
    assert found.taught_away == [] and found.classes[0].labeled_share is None
    assert found.classes[0].share_now == 1.0


def test_a_stores_own_labels_audited_against_known_truth_equal_the_hand_computation(tmp_path):
    from core.audit import audit_store
    from core.errors import DataError
    from core.labels import declare_label_space
    from core.store import LabelStore

    # Image a: the hand-made pseudo labels, confidences and truth; image b: all road, its truth
    # unreadable (left out, but its pixels are the pool's); image c: never labeled.
    store = LabelStore.create(
        tmp_path / "s.zarr", ["a.png", "b.png", "c.png"], None,
        declare_label_space("hand", ["road", "car"]), {}, {},
    )  # fmt: skip
    store.write(0, PSEUDO, CONFIDENCE, np.zeros((0, 4)))
    store.write(1, np.zeros((2, 3), np.uint8), np.full((2, 3), 255, np.uint8), np.zeros((0, 4)))

    def read_truth(path: str, shape: tuple[int, int]) -> np.ndarray:
        if path != "a.png":
            raise DataError(path, "no true label")
        assert shape == (2, 3)
        return TRUTH

    audit = audit_store(store, read_truth, ["hand"])
    expected = hand_audit().model_dump()
    # The pool: road 3 + 6, car 3 pseudo pixels.
    expected["classes"][0]["pool_share"], expected["classes"][1]["pool_share"] = 0.75, 0.25
    expected["n_failed"], expected["failures"] = 1, [["b.png", "no true label"]]
    assert audit.model_dump() == expected
    assert audit.classes[0].iou == pytest.approx(1 / 3) and audit.n_images == 1
