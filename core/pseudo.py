"""What a student reads of its teacher's pseudo labels, and the statistics that decide it.

A student reads each label store through ``PseudoLabels``, which turns into ignore (255) the pixels
it should not learn from: pixels below a global confidence threshold, pixels below their class's
own threshold (``class_thresholds``: of each class's pseudo pixels the most confident fraction is
kept, so a rare class that the teacher labels with lower confidence is not wiped out by a single
threshold), and every pixel of a class the teacher under-predicts (``underpredicted_classes``: a
student trained on crops where such a class is painted over learns to drop it).

Everything here is computed once, when training data is opened, from bounded reads: the store's
per-class pixel counts and the confidences of a fixed sample of its images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.centroids import find_centroids
from core.datasets import SegmentationDataset
from core.errors import SizeMismatchError
from core.io import read_image
from core.store import LabelStore

# Images per store whose confidences estimate the per-class thresholds: enough for stable
# quantiles of every class that occurs, and a read whose cost does not grow with the store.
THRESHOLD_SAMPLE_IMAGES = 256


class PseudoLabels:
    """Read access to one label store's images and labels, with what the student ignores.

    The store is opened lazily (and again after pickling), so a Dataset holding this object can go
    to DataLoader worker processes.

    Args:
        path: The label store.
        confidence_threshold: Pixels whose confidence is below it (0..1) become ignore (255).
        class_thresholds: Per class, the confidence (0..255) below which its pixels become ignore.
        ignored_classes: Classes whose pixels all become ignore.
    """

    def __init__(
        self,
        path: str | Path,
        confidence_threshold: float = 0.0,
        class_thresholds: np.ndarray | None = None,
        ignored_classes: Sequence[int] = (),
    ) -> None:
        self.path = str(path)
        self.confidence_threshold = confidence_threshold
        self.class_thresholds = class_thresholds
        self.ignored_classes = np.asarray(sorted(ignored_classes), dtype=np.uint8)
        self._store: LabelStore | None = None

    @property
    def store(self) -> LabelStore:
        if self._store is None:
            self._store = LabelStore.open(self.path, read_only=True)
        return self._store

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W, 3) uint8 RGB read from its original file, label (H, W) uint8)."""
        path = self.store.image_path(index)
        image = read_image(path)
        label = self.store.label(index, confidence_threshold=self.confidence_threshold)
        if label.shape != image.shape[:2]:
            raise SizeMismatchError(
                path, f"pseudo label in {self.path} is {label.shape} but the image is {image.shape}"
            )
        return image, self._ignore(index, label)

    def _ignore(self, index: int, label: np.ndarray) -> np.ndarray:
        ignore = np.uint8(self.store.label_space.ignore_index)
        if self.class_thresholds is not None:
            known = label != ignore
            floor = np.zeros_like(label)
            floor[known] = self.class_thresholds[label[known]]
            label = np.where(self.store.confidence(index) >= floor, label, ignore)
        if self.ignored_classes.size:
            label = np.where(np.isin(label, self.ignored_classes), ignore, label)
        return label


def class_thresholds(
    store: LabelStore, keep_fraction: float, sample: int = THRESHOLD_SAMPLE_IMAGES, seed: int = 0
) -> np.ndarray:
    """Per class, the confidence (0..255) above which the most confident ``keep_fraction`` of its
    pseudo pixels lie, estimated on a fixed random sample of ``sample`` done images.

    Returns:
        (C,) uint8; 0 (keep everything) for a class without pixels in the sample.
    """
    done = store.done_indices()
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(done, size=min(sample, len(done)), replace=False))
    num_classes = store.label_space.num_classes
    # A histogram of confidences per class: quantiles without holding every pixel.
    histogram = np.zeros((num_classes, 256), dtype=np.int64)
    for index in picked:
        label = store.label(int(index)).ravel()
        confidence = store.confidence(int(index)).ravel()
        known = label < num_classes
        np.add.at(histogram, (label[known], confidence[known]), 1)
    thresholds = np.zeros(num_classes, dtype=np.uint8)
    for k in range(num_classes):
        total = histogram[k].sum()
        if total == 0:
            continue
        # upper[c]: the class's pixels with confidence >= c. The threshold is the highest c that
        # still keeps keep_fraction of them.
        upper = np.cumsum(histogram[k][::-1])[::-1]
        thresholds[k] = int(np.flatnonzero(upper >= keep_fraction * total).max())
    return thresholds


def underpredicted_classes(
    pseudo_pixels: np.ndarray, real_pixels: np.ndarray, ratio: float
) -> list[int]:
    """Classes whose share of the pseudo pixels is below ``ratio`` times their share of the real
    pixels (classes absent from the real labels are never listed).

    Args:
        pseudo_pixels: (C,) pixels per class in the pseudo labels.
        real_pixels: (C,) pixels per class in the real labels.
        ratio: E.g. 0.5: a class with under half its real share in the pseudo labels.
    """
    pseudo_share = pseudo_pixels / max(1, pseudo_pixels.sum())
    real_share = real_pixels / max(1, real_pixels.sum())
    return [int(k) for k in np.flatnonzero((real_share > 0) & (pseudo_share < ratio * real_share))]


@dataclass(frozen=True)
class LabeledStatistics:
    """What one pass over the labeled set finds.

    Attributes:
        centroids: (N, 5) rows (image index, class, y, x, area), as a label store lists them.
        class_pixels: (C,) pixels per class.
    """

    centroids: np.ndarray
    class_pixels: np.ndarray


def labeled_statistics(dataset: SegmentationDataset, min_area: int = 16) -> LabeledStatistics:
    """Centroids (of regions of at least ``min_area`` pixels) and class pixel counts of every label
    of the (small, human-labeled) dataset."""
    assert dataset.label_space is not None
    num_classes = dataset.label_space.num_classes
    rows, pixels = [], np.zeros(num_classes, dtype=np.int64)
    for index in range(len(dataset)):
        label = dataset.load_label(index)
        pixels += np.bincount(label.ravel(), minlength=256)[:num_classes]
        found = find_centroids(label, min_area, dataset.label_space.ignore_index)
        rows.append(np.column_stack([np.full(len(found), index), found]))
    centroids = np.concatenate([np.zeros((0, 5)), *rows])
    return LabeledStatistics(centroids, pixels)
