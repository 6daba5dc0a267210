"""The audit of a label job: how good a teacher's pseudo labels are, measured on labeled images
that no stage trains on (the label stage's ``audit`` sources), labeled with the pool's settings.

The label job predicts the audit images (core.labeling's predict step, as for the pool) and counts,
for every pixel whose true label is a class (not ignore):

- a confusion matrix of pseudo label against truth: per-class IoU, precision and recall, and each
  class's share of the pseudo labels against its share of the truth;
- calibration, by the pseudo label's class: pixels, correct pixels and summed confidence in
  ``CALIBRATION_BINS`` equal confidence bins (a pixel of confidence p, 0..1, falls in bin
  ``min(floor(p * B), B - 1)``); accuracy per bin and the expected calibration error
  ``ECE = sum_b n_b / N * |accuracy_b - mean confidence_b|``, overall and per class;
- the share of confident pixels (confidence >= ``CONFIDENT``, the threshold UniMatch logs).

Counts of any number of images merge by addition (`AuditCounts.merge`), so the audit runs in
pieces on the teacher actors and only these small arrays reach the driver. The pool's own pseudo
class shares come from the store's per-shard totals (``LabelStore.class_pixels``): the audit adds
no work per pool image. `summarize` turns the counts into an `Audit`, what the store records in its
summary (``audit``), ``selftrain store-info`` prints and the REST API returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from core.configs import DataSource
from core.errors import DataError
from core.labels import IGNORE_INDEX

if TYPE_CHECKING:
    from core.store import LabelStore

# Equal confidence bins from 0 to 1 for calibration (reliability diagram and ECE).
CALIBRATION_BINS = 10
# A pixel is confident when its teacher's probability is at least this (UniMatch's threshold).
CONFIDENT = 0.95
# Audit images that failed, listed by path in the audit (the count is always complete).
FAILURES_LISTED = 10


class CalibrationBin(BaseModel):
    """One confidence bin of a reliability diagram.

    Attributes:
        lower: The bin's lowest confidence (inclusive).
        upper: Its highest (exclusive, but 1.0 is in the last bin).
        pixels: Audit pixels whose confidence falls in the bin.
        accuracy: Share of them whose pseudo label is right (None: no pixels).
        confidence: Their mean confidence (None: no pixels).
    """

    lower: float
    upper: float
    pixels: int
    accuracy: float | None
    confidence: float | None


class ClassAudit(BaseModel):
    """One class of an audit.

    Attributes:
        name: The class.
        iou: Pseudo label against truth (None: the class is in neither).
        precision: Of the pixels pseudo-labeled as the class, the share that are it.
        recall: Of the pixels that are the class, the share pseudo-labeled as it.
        pseudo_share: Share of the audit's counted pixels pseudo-labeled as the class.
        truth_share: Share of the audit's counted pixels that are the class (the labeled share).
        pool_share: Share of the pool's pseudo-labeled pixels (the store) given the class.
        ece: Expected calibration error of the pixels pseudo-labeled as the class.
        bins: Their reliability diagram.
    """

    name: str
    iou: float | None
    precision: float | None
    recall: float | None
    pseudo_share: float
    truth_share: float
    pool_share: float | None
    ece: float | None
    bins: list[CalibrationBin]


class Audit(BaseModel):
    """The audit of a label store's teacher on labeled images no stage trains on.

    Attributes:
        sources: The audit sources (``format:root[:split]``).
        n_images: Audit images counted.
        n_failed: Audit images that could not be read or did not fit (left out).
        failures: The first `FAILURES_LISTED` of them: ``[path, reason]``.
        n_pixels: Pixels counted (their true label is a class).
        miou: Mean of the defined per-class IoUs.
        pixel_accuracy: Share of counted pixels whose pseudo label is right.
        ece: Expected calibration error over all counted pixels.
        confident: The confidence a confident pixel has at least (`CONFIDENT`).
        confident_share: Share of counted pixels that are confident.
        confident_accuracy: Share of the confident pixels whose pseudo label is right.
        bins: Reliability diagram over all counted pixels.
        classes: Per class, in the store's class order.
    """

    sources: list[str]
    n_images: int
    n_failed: int = 0
    failures: list[list[str]] = Field(default_factory=list)
    n_pixels: int
    miou: float | None
    pixel_accuracy: float | None
    ece: float | None
    confident: float = CONFIDENT
    confident_share: float | None
    confident_accuracy: float | None
    bins: list[CalibrationBin]
    classes: list[ClassAudit]

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow: ``audit_miou``, ``audit_ece``, ``audit_iou.<class>``, ...
        (undefined values left out)."""
        values: dict[str, float | None] = {
            "audit_miou": self.miou,
            "audit_pixel_accuracy": self.pixel_accuracy,
            "audit_ece": self.ece,
            "audit_confident_share": self.confident_share,
            "audit_images": float(self.n_images),
        }
        for c in self.classes:
            values |= {
                f"audit_iou.{c.name}": c.iou,
                f"audit_precision.{c.name}": c.precision,
                f"audit_recall.{c.name}": c.recall,
                f"audit_ece.{c.name}": c.ece,
                f"audit_pseudo_share.{c.name}": c.pseudo_share,
                f"audit_truth_share.{c.name}": c.truth_share,
            }
        return {_metric_name(k): float(v) for k, v in values.items() if v is not None}


def _metric_name(name: str) -> str:
    # MLflow allows letters, digits, _ - . space : / in metric names; class names may hold more.
    return "".join(ch if ch.isalnum() or ch in "_-. :/" else "_" for ch in name)


@dataclass
class AuditCounts:
    """What the audit counts, for any number of images; add more with `update` or `merge`.

    Attributes:
        num_classes: C.
        bins: B, the calibration bins.
        confusion: (C, C) int64, ``[truth, pseudo]`` pixel counts.
        bin_pixels: (C, B) int64, pixels by pseudo class and confidence bin.
        bin_correct: (C, B) int64, those whose pseudo label is right.
        bin_confidence: (C, B) float64, their summed confidence (0..1).
        confident: Pixels whose confidence is at least `CONFIDENT`.
        confident_correct: Those whose pseudo label is right.
        n_images: Images counted.
        failures: ``(path, reason)`` of images left out.
    """

    num_classes: int
    bins: int = CALIBRATION_BINS
    confusion: np.ndarray = field(init=False)
    bin_pixels: np.ndarray = field(init=False)
    bin_correct: np.ndarray = field(init=False)
    bin_confidence: np.ndarray = field(init=False)
    confident: int = 0
    confident_correct: int = 0
    n_images: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        c, b = self.num_classes, self.bins
        self.confusion = np.zeros((c, c), np.int64)
        self.bin_pixels = np.zeros((c, b), np.int64)
        self.bin_correct = np.zeros((c, b), np.int64)
        self.bin_confidence = np.zeros((c, b), np.float64)

    def update(
        self,
        pseudo: np.ndarray,
        confidence: np.ndarray,
        truth: np.ndarray,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        """Count one image.

        Args:
            pseudo: (H, W) uint8 pseudo label (classes 0..C-1).
            confidence: (H, W) uint8, the pseudo label's probability x 255.
            truth: (H, W) uint8 true label (classes, or ``ignore_index``: not counted).

        Raises:
            ValueError: The shapes differ, or a value is outside the classes.
        """
        if not pseudo.shape == confidence.shape == truth.shape:
            raise ValueError(
                f"pseudo {pseudo.shape}, confidence {confidence.shape} and truth {truth.shape} "
                "must have one shape"
            )
        keep = truth != ignore_index
        p = pseudo[keep].astype(np.int64)
        t = truth[keep].astype(np.int64)
        for what, values in (("pseudo label", p), ("true label", t)):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                bad = sorted(set(values[(values < 0) | (values >= self.num_classes)].tolist()))
                raise ValueError(f"{what} values outside 0..{self.num_classes - 1}: {bad[:10]}")
        c, b = self.num_classes, self.bins
        conf = confidence[keep].astype(np.int64)
        binned = np.minimum(conf * b // 255, b - 1)  # floor(p * B) with p = conf / 255, exactly
        right = p == t
        self.confusion += np.bincount(t * c + p, minlength=c * c).reshape(c, c)
        cell = p * b + binned
        self.bin_pixels += np.bincount(cell, minlength=c * b).reshape(c, b)
        self.bin_correct += np.bincount(cell[right], minlength=c * b).reshape(c, b)
        self.bin_confidence += np.bincount(cell, weights=conf / 255, minlength=c * b).reshape(c, b)
        confident = conf >= CONFIDENT * 255
        self.confident += int(confident.sum())
        self.confident_correct += int((confident & right).sum())
        self.n_images += 1

    def fail(self, path: str, reason: str) -> None:
        """Leave an image out, and say why."""
        self.failures.append((path, reason))

    def merge(self, other: AuditCounts) -> AuditCounts:
        """Add another piece's counts into these; returns self."""
        if (other.num_classes, other.bins) != (self.num_classes, self.bins):
            raise ValueError(
                f"cannot merge counts of {other.num_classes} classes x {other.bins} bins into "
                f"{self.num_classes} x {self.bins}"
            )
        self.confusion += other.confusion
        self.bin_pixels += other.bin_pixels
        self.bin_correct += other.bin_correct
        self.bin_confidence += other.bin_confidence
        self.confident += other.confident
        self.confident_correct += other.confident_correct
        self.n_images += other.n_images
        self.failures.extend(other.failures)
        return self


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


def reliability(pixels: np.ndarray, correct: np.ndarray, confidence: np.ndarray) -> tuple:
    """The bins of a reliability diagram and the expected calibration error.

    Args:
        pixels: (B,) pixels per bin.
        correct: (B,) right ones per bin.
        confidence: (B,) summed confidence per bin.

    Returns:
        (list of `CalibrationBin`, ECE or None when no pixel was counted).
    """
    n_bins = len(pixels)
    total = int(pixels.sum())
    bins, ece = [], 0.0
    for k in range(n_bins):
        n = int(pixels[k])
        accuracy, mean = _ratio(correct[k], n), _ratio(confidence[k], n)
        bins.append(
            CalibrationBin(
                lower=k / n_bins,
                upper=(k + 1) / n_bins,
                pixels=n,
                accuracy=accuracy,
                confidence=mean,
            )
        )
        if n:
            ece += n / total * abs(accuracy - mean)
    return bins, (ece if total else None)


def summarize(
    counts: AuditCounts,
    class_names: Sequence[str],
    sources: Sequence[str],
    pool_pixels: np.ndarray | None = None,
) -> Audit:
    """The audit of ``counts``.

    Args:
        counts: The audit images' counts.
        class_names: The classes, in order.
        sources: What was audited (for people).
        pool_pixels: (C,) pseudo-labeled pixels per class of the pool (the store's), for each
            class's pool share; None: not known.
    """
    if len(class_names) != counts.num_classes:
        raise ValueError(f"{len(class_names)} class names for {counts.num_classes} classes")
    m = counts.confusion
    tp = np.diag(m).astype(np.float64)
    pseudo, truth = m.sum(axis=0), m.sum(axis=1)
    total = int(m.sum())
    pool_total = 0 if pool_pixels is None else int(pool_pixels.sum())
    classes = []
    for c, name in enumerate(class_names):
        bins, ece = reliability(
            counts.bin_pixels[c], counts.bin_correct[c], counts.bin_confidence[c]
        )
        pool = None if pool_pixels is None else _ratio(pool_pixels[c], pool_total)
        classes.append(
            ClassAudit(
                name=name,
                iou=_ratio(tp[c], pseudo[c] + truth[c] - tp[c]),
                precision=_ratio(tp[c], pseudo[c]),
                recall=_ratio(tp[c], truth[c]),
                pseudo_share=_ratio(pseudo[c], total) or 0.0,
                truth_share=_ratio(truth[c], total) or 0.0,
                pool_share=pool,
                ece=ece,
                bins=bins,
            )
        )
    bins, ece = reliability(*(a.sum(axis=0) for a in _bin_arrays(counts)))
    ious = [c.iou for c in classes if c.iou is not None]
    return Audit(
        sources=list(sources),
        n_images=counts.n_images,
        n_failed=len(counts.failures),
        failures=[[path, reason] for path, reason in counts.failures[:FAILURES_LISTED]],
        n_pixels=total,
        miou=float(np.mean(ious)) if ious else None,
        pixel_accuracy=_ratio(tp.sum(), total),
        ece=ece,
        confident_share=_ratio(counts.confident, total),
        confident_accuracy=_ratio(counts.confident_correct, counts.confident),
        bins=bins,
        classes=classes,
    )


def _bin_arrays(counts: AuditCounts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return counts.bin_pixels, counts.bin_correct, counts.bin_confidence


def describe_source(source: DataSource) -> str:
    """``format:root[:split]``: an audit source as the audit names it."""
    split = f":{source.split}" if source.format not in ("folder", "paired") else ""
    return f"{source.format}:{source.root}{split}"


# A teacher's forward pass, as the label job runs it (core.label_shards.Predict).
Predict = Callable[[list[np.ndarray]], list[tuple[np.ndarray, ...]]]
# A labeled sample: (image (H, W, 3) uint8, train-id label (H, W) uint8, image path).
ReadSample = Callable[[int], tuple[np.ndarray, np.ndarray, str]]


def audit_samples(
    read: ReadSample,
    indices: Sequence[int],
    predict: Predict,
    num_classes: int,
    batch_size: int = 4,
    ignore_index: int = IGNORE_INDEX,
) -> AuditCounts:
    """Predict the labeled samples ``indices`` (``batch_size`` at a time) and count them.

    A sample that cannot be read (a broken image or label, a label of another size) is left out
    with its reason; every other one is counted.

    Args:
        read: Reads sample ``i`` (e.g. a core.datasets.SegmentationDataset's ``__getitem__``).
        indices: The samples.
        predict: The teacher's forward pass (the label job's, with the pool's settings).
        num_classes: The teacher's classes.
        batch_size: Images per model call.
        ignore_index: The truth's "no class" value.
    """
    counts = AuditCounts(num_classes)
    for first in range(0, len(indices), batch_size):
        images, truths = [], []
        for index in indices[first : first + batch_size]:
            try:
                image, truth, _ = read(int(index))
            except DataError as exc:
                counts.fail(exc.path, exc.problem)
                continue
            images.append(image)
            truths.append(truth)
        if not images:
            continue
        for (pseudo, confidence, *_), truth in zip(predict(images), truths, strict=True):
            counts.update(pseudo, confidence, truth, ignore_index)
    return counts


# The true label of a store's image: (image path, its (H, W)) -> (H, W) uint8 train ids, the
# store's ignore index where unknown; raises core.errors.DataError when it cannot be read or has
# another size.
ReadTruth = Callable[[str, tuple[int, int]], np.ndarray]


def audit_store(store: LabelStore, read_truth: ReadTruth, sources: Sequence[str]) -> Audit:
    """The audit of a store's own pseudo labels, for a pool whose truth is known (a demo's
    synthetic scenes, a benchmark's labeled pool used as unlabeled): what the label job's audit
    gives for its audit sources, without predicting anything again.

    Reads each done image's label, confidence and truth once: one pass over the pool, so for
    pools of a benchmark's size; a production pool is audited by its label stage's ``audit``
    sources instead (jobs/audit.py). An image whose truth cannot be read is left out with its
    reason; pixels the store left unlabeled (its ignore index) are not counted.

    Args:
        store: The label store.
        read_truth: Reads an image's true label.
        sources: What the truth is (for people), e.g. ``["camvid:/data/camvid:train"]``.
    """
    space = store.label_space
    counts = AuditCounts(space.num_classes)
    for index in store.done_indices():
        index = int(index)
        path = store.image_path(index)
        try:
            truth = read_truth(path, store.image_size(index))
        except DataError as exc:
            counts.fail(exc.path, exc.problem)
            continue
        pseudo = store.label(index)
        unlabeled = pseudo == space.ignore_index
        truth = np.where(unlabeled, np.uint8(space.ignore_index), truth).astype(np.uint8)
        pseudo = np.where(unlabeled, 0, pseudo).astype(np.uint8)
        counts.update(pseudo, store.confidence(index), truth, space.ignore_index)
    return summarize(counts, list(space.names), sources, store.class_pixels())
