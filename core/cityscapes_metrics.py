"""Cityscapes' benchmark scores beside class IoU: category IoU and the instance-level iIoU.

- **Category IoU**: the 19 classes grouped into Cityscapes' 7 categories (flat, construction,
  object, nature, sky, human, vehicle); a pixel counts as right when its predicted class is in the
  right category.
- **iIoU** (instance-level IoU) of the classes with instances (person, rider, car, truck, bus,
  train, motorcycle, bicycle) and of the categories human and vehicle: each ground-truth
  instance's true positives and false negatives are weighted by the class's average instance size
  over the instance's size, so small objects count as much as large ones; false positives are
  counted per pixel as for IoU.

Both follow the definitions of cityscapesscripts' pixel-level evaluation (tests compare the numbers
on a fixture). Instance maps use Cityscapes' encoding, ``label id * 1000 + instance index`` on the
pixels of an instance (other pixels hold their label id); ``kitti_instances`` converts KITTI's.
"""

from __future__ import annotations

import numpy as np

from core.labels import CITYSCAPES
from core.metrics import ConfusionMatrix

CATEGORIES: dict[str, tuple[str, ...]] = {
    "flat": ("road", "sidewalk"),
    "construction": ("building", "wall", "fence"),
    "object": ("pole", "traffic light", "traffic sign"),
    "nature": ("vegetation", "terrain"),
    "sky": ("sky",),
    "human": ("person", "rider"),
    "vehicle": ("car", "truck", "bus", "train", "motorcycle", "bicycle"),
}
INSTANCE_CATEGORIES = ("human", "vehicle")
# The weights of iIoU: Cityscapes' average instance size in pixels per class, as the benchmark
# defines them (cityscapesscripts' evaluation uses the same figures).
AVERAGE_INSTANCE_SIZE = {
    "person": 3462.4756337644,
    "rider": 3930.4788056518,
    "car": 12794.0202738185,
    "truck": 27855.1264367816,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "motorcycle": 6298.7200839748,
    "bicycle": 4672.3249222261,
}
_ID_TO_TRAIN = dict(CITYSCAPES.id_to_train or {})
# Instance ids above this are instances (Cityscapes' rule: "id * 1000 + index", index from 0).
_INSTANCE_FLOOR = 1000


def is_cityscapes(names: tuple[str, ...] | list[str]) -> bool:
    """Whether a label space is Cityscapes' 19 classes (the scores here are defined for it)."""
    return tuple(names) == tuple(CITYSCAPES.names)


def _train_ids(names: tuple[str, ...]) -> list[int]:
    return [CITYSCAPES.names.index(n) for n in names]


def _group_iou(matrix: np.ndarray, members: list[int], tp: float, fn: float) -> float:
    """IoU of a group of classes with the given (possibly weighted) tp and fn; fp: pixels of other
    classes predicted as a member."""
    others = [c for c in range(matrix.shape[0]) if c not in members]
    fp = float(matrix[np.ix_(others, members)].sum())
    denom = tp + fp + fn
    return tp / denom if denom > 0 else float("nan")


def category_iou(confusion: ConfusionMatrix) -> dict[str, float]:
    """IoU of each category (nan where a category never occurs nor is predicted)."""
    matrix = confusion.matrix.astype(np.float64)
    scores = {}
    for category, names in CATEGORIES.items():
        members = _train_ids(names)
        tp = float(matrix[np.ix_(members, members)].sum())
        fn = float(matrix[members, :].sum()) - tp
        scores[category] = _group_iou(matrix, members, tp, fn)
    return scores


def kitti_instances(raw: np.ndarray) -> np.ndarray:
    """KITTI's instance maps (``label id * 256 + instance``, 0 where a pixel is no instance) in
    Cityscapes' encoding."""
    raw = raw.astype(np.int64)
    label, instance = raw // 256, raw % 256
    return np.where(instance > 0, label * 1000 + instance, label)


class InstanceCounts:
    """The weighted true positives and false negatives of ground-truth instances, per class and
    per instance category, summed over images."""

    def __init__(self) -> None:
        self.classes = {name: [0.0, 0.0] for name in AVERAGE_INSTANCE_SIZE}
        self.categories = {name: [0.0, 0.0] for name in INSTANCE_CATEGORIES}

    def update(self, prediction: np.ndarray, instances: np.ndarray) -> None:
        """Add one image: its predicted train ids and its Cityscapes-encoded instance map."""
        if prediction.shape != instances.shape:
            raise ValueError(f"prediction {prediction.shape} and instances {instances.shape}")
        for value in np.unique(instances[instances > _INSTANCE_FLOOR]):
            label = _ID_TO_TRAIN.get(int(value) // 1000, CITYSCAPES.ignore_index)
            name = CITYSCAPES.names[label] if label < CITYSCAPES.num_classes else None
            if name not in AVERAGE_INSTANCE_SIZE:  # caravan, trailer: not evaluated
                continue
            mask = instances == value
            size = int(mask.sum())
            predicted = prediction[mask]
            weight = AVERAGE_INSTANCE_SIZE[name] / size
            tp = int((predicted == label).sum())
            self.classes[name][0] += tp * weight
            self.classes[name][1] += (size - tp) * weight
            category = next(c for c in INSTANCE_CATEGORIES if name in CATEGORIES[c])
            category_tp = int(np.isin(predicted, _train_ids(CATEGORIES[category])).sum())
            self.categories[category][0] += category_tp * weight
            self.categories[category][1] += (size - category_tp) * weight

    def class_iiou(self, confusion: ConfusionMatrix) -> dict[str, float]:
        """iIoU of each instance class (nan where undefined)."""
        matrix = confusion.matrix.astype(np.float64)
        return {
            name: _group_iou(matrix, _train_ids((name,)), tp, fn)
            for name, (tp, fn) in self.classes.items()
        }

    def category_iiou(self, confusion: ConfusionMatrix) -> dict[str, float]:
        """iIoU of the categories human and vehicle."""
        matrix = confusion.matrix.astype(np.float64)
        return {
            name: _group_iou(matrix, _train_ids(CATEGORIES[name]), tp, fn)
            for name, (tp, fn) in self.categories.items()
        }


def mean_defined(scores: dict[str, float]) -> float | None:
    """The mean of the scores that are defined (None when none is)."""
    defined = [v for v in scores.values() if not np.isnan(v)]
    return float(np.mean(defined)) if defined else None
