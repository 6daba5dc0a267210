"""Mixing samples: CutMix boxes and pasted ground-truth segments.

- **CutMix** (CutMix-Seg, French et al. BMVC 2020; UniMatch): a box of one crop replaces the same
  box of another crop of the batch, and the labels (true or pseudo) follow with the same box.
  ``cutmix_box`` draws the box of one sample from its generator (in the loader, reproducibly);
  ``mix_with_partner`` mixes a batch on the device, every sample with the next one of the batch.
- **Copy-paste of rare classes** (AEL, AugSeg): the pixels of rare classes of a labeled crop are
  pasted at the same place into another crop, their true labels overriding its labels there.
  ``SegmentBank`` draws such a crop from the labeled set, a rare class first; ``paste`` pastes it.

Boxes and pasted segments are drawn per sample from ``core.sampling.sample_rng``, so a sample
mixes the same way on every rank, in every loader worker and after a resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core.configs import AugmentConfig
from core.datasets import SegmentationDataset
from core.labels import IGNORE_INDEX
from core.sampling import CentroidTable
from core.transforms import augment_around_point

# CutMix boxes (UniMatch's): an area of 2 % to 40 % of the crop, aspect ratio 0.3 to 1 / 0.3.
BOX_AREA = (0.02, 0.4)
BOX_RATIO = (0.3, 1 / 0.3)


def cutmix_box(
    rng: np.random.Generator, size_hw: tuple[int, int], probability: float
) -> np.ndarray:
    """A ``(H, W)`` bool mask holding one random box (all False with ``1 - probability``).

    The box's area is uniform in ``BOX_AREA`` of the crop, its aspect ratio log-uniform in
    ``BOX_RATIO``, its place uniform (clipped to the crop).
    """
    height, width = size_hw
    box = np.zeros((height, width), dtype=bool)
    if rng.random() >= probability:
        return box
    area = rng.uniform(*BOX_AREA) * height * width
    ratio = float(np.exp(rng.uniform(np.log(BOX_RATIO[0]), np.log(BOX_RATIO[1]))))
    box_h = min(height, max(1, round(np.sqrt(area / ratio))))
    box_w = min(width, max(1, round(np.sqrt(area * ratio))))
    y0 = int(rng.integers(0, height - box_h + 1))
    x0 = int(rng.integers(0, width - box_w + 1))
    box[y0 : y0 + box_h, x0 : x0 + box_w] = True
    return box


def partner(batch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Each sample's CutMix partner: the next sample of the batch (the last one's is the first)."""
    return torch.roll(torch.arange(batch_size, device=device), -1)


def mix_with_partner(values: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``values`` with each sample's box taken from its partner (``partner``).

    Args:
        values: ``(N, H, W)`` (labels, confidences, masks) or ``(N, C, H, W)`` (images).
        boxes: ``(N, H, W)`` bool, each sample's box.
    """
    if boxes.shape != (values.shape[0], *values.shape[-2:]):
        raise ValueError(f"boxes {tuple(boxes.shape)} do not fit values {tuple(values.shape)}")
    others = values[partner(values.shape[0], values.device)]
    where = boxes if values.ndim == 3 else boxes[:, None]
    return torch.where(where, others, values)


def paste(
    image: np.ndarray, segment_image: np.ndarray, segment_label: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with the labeled pixels of a segment (``segment_label != IGNORE_INDEX``) pasted
    at the same place; returns the new image and the pasted label (``IGNORE_INDEX`` elsewhere)."""
    if segment_image.shape != image.shape or segment_label.shape != image.shape[:2]:
        raise ValueError(
            f"segment {segment_image.shape} / {segment_label.shape} does not fit {image.shape}"
        )
    pasted = segment_label != IGNORE_INDEX
    out = image.copy()
    out[pasted] = segment_image[pasted]
    return out, segment_label


def override(label: np.ndarray, pasted: np.ndarray) -> np.ndarray:
    """``label`` with the pasted label where one was pasted."""
    return np.where(pasted != IGNORE_INDEX, pasted, label).astype(label.dtype)


class SegmentBank:
    """Draws crops of rare-class segments from the labeled set.

    A class is drawn uniformly among ``classes`` that have regions, then one of its regions (a
    centroid of the labeled set, core.pseudo.labeled_statistics), then a crop around it with the
    labeled samples' own augmentation; the crop's label keeps only ``classes`` (the rest ignore).

    Args:
        labeled: The labeled dataset.
        centroids: Its ``(N, 5)`` centroid rows ``(image, class, y, x, area)``.
        classes: The class ids that are pasted.
        aug: The labeled samples' augmentation.
    """

    def __init__(
        self,
        labeled: SegmentationDataset,
        centroids: np.ndarray,
        classes: Sequence[int],
        aug: AugmentConfig,
    ) -> None:
        self.labeled = labeled
        self.classes = np.asarray(sorted(set(classes)), dtype=np.int64)
        rows = np.asarray(centroids, dtype=np.float64).reshape(-1, 5)
        self.table = CentroidTable([rows[np.isin(rows[:, 1], self.classes)]])
        self.aug = aug

    def __len__(self) -> int:
        return len(self.table)

    def draw(self, rng: np.random.Generator, crop_size: int) -> tuple[np.ndarray, np.ndarray]:
        """A segment crop: ``(image (crop, crop, 3), label (crop, crop))``, the label holding only
        the pasted classes."""
        if len(self.table) == 0:
            raise ValueError("no region of the pasted classes in the labeled set")
        row = int(self.table.draw(rng, np.array([rng.integers(0, len(self.table.classes))]))[0])
        image, label, _ = self.labeled[int(self.table.image[row])]
        assert label is not None  # training data is checked to be labeled
        point = (int(self.table.yx[row, 0]), int(self.table.yx[row, 1]))
        image, label = augment_around_point(image, label, point, self.aug, crop_size, rng)
        kept = np.where(np.isin(label, self.classes), label, IGNORE_INDEX).astype(np.uint8)
        return image, kept


def rare_classes(class_pixels: np.ndarray, share: float) -> list[int]:
    """Classes present in the labeled set whose share of its labeled pixels is below ``share``."""
    total = max(1, int(class_pixels.sum()))
    return [int(k) for k in np.flatnonzero((class_pixels > 0) & (class_pixels / total < share))]
