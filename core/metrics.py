"""Confusion-matrix metrics for semantic segmentation: per-class IoU, mIoU and pixel accuracy.

The numbers match the official Cityscapes pixel-level evaluator (tests/test_metrics.py checks
this): pixels whose ground truth is the ignore index count nowhere, so a prediction on such a pixel
is neither a true nor a false positive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from core.labels import IGNORE_INDEX

ArrayLike = np.ndarray | torch.Tensor


class ConfusionMatrix:
    """Counts of (target class, predicted class) pixel pairs.

    Attributes:
        num_classes: Number of classes C; valid predictions and targets are 0..C-1.
        ignore_index: Target value of pixels left out of every count.
        matrix: int64 array (C, C); ``matrix[t, p]`` is the number of pixels of class ``t``
            predicted as ``p`` (rows = target, columns = prediction).
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add one prediction (or a batch) and its target.

        Args:
            pred: Predicted class per pixel, numpy or torch, any shape; values 0..C-1.
            target: Target class per pixel, same shape; values 0..C-1 or ``ignore_index``.

        Raises:
            ValueError: The shapes differ, or a value is outside the ranges above (the values are
                named).
        """
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(
                f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
            )
        pred_t = _flat_int64(pred)
        target_t = _flat_int64(target).to(pred_t.device)
        valid = target_t != self.ignore_index
        pred_t, target_t = pred_t[valid], target_t[valid]
        _check_range("target", target_t, self.num_classes, self.ignore_index)
        _check_range("prediction", pred_t, self.num_classes, self.ignore_index)
        counts = torch.bincount(target_t * self.num_classes + pred_t, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes).cpu().numpy()

    def iou(self) -> np.ndarray:
        """Intersection over union per class, float64 (C,); nan where tp + fp + fn == 0."""
        tp = np.diag(self.matrix).astype(np.float64)
        fp = self.matrix.sum(axis=0) - tp
        fn = self.matrix.sum(axis=1) - tp
        denom = tp + fp + fn
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denom > 0, tp / denom, np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes whose IoU is defined (nan when none is)."""
        iou = self.iou()
        defined = iou[~np.isnan(iou)]
        return float(defined.mean()) if defined.size else float("nan")

    def pixel_accuracy(self) -> float:
        """Share of counted pixels predicted correctly (nan when nothing was counted)."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (e.g. from another worker); returns self."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore {other.ignore_index}) "
                f"into a {self.num_classes}-class one (ignore {self.ignore_index})"
            )
        self.matrix += other.matrix
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all processes of the default torch.distributed group; returns self.

        Does nothing when torch.distributed is not initialized (a single process).
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        # NCCL only reduces CUDA tensors; gloo reduces CPU tensors.
        device = "cpu"
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        counts = torch.from_numpy(self.matrix).to(device)
        dist.all_reduce(counts)
        self.matrix = counts.cpu().numpy()
        return self

    def to_dict(self, class_names: Sequence[str]) -> dict:
        """JSON-able summary: ``{"miou", "pixel_accuracy", "per_class_iou": {name: iou}}``.

        Undefined values (nan) become ``None`` so the result can go straight into JSON.
        """
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        return {
            "miou": _none_if_nan(self.miou()),
            "pixel_accuracy": _none_if_nan(self.pixel_accuracy()),
            "per_class_iou": {
                name: _none_if_nan(float(v))
                for name, v in zip(class_names, self.iou(), strict=True)
            },
        }


def _flat_int64(values: ArrayLike) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.reshape(-1).to(torch.int64)
    # astype copies, so read-only arrays (e.g. from a Zarr store) are fine for torch.
    return torch.from_numpy(np.asarray(values).reshape(-1).astype(np.int64))


def _check_range(what: str, values: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    bad = (values < 0) | (values >= num_classes)
    if bool(bad.any()):
        found = sorted(int(v) for v in torch.unique(values[bad]).tolist())
        raise ValueError(
            f"{what} values outside 0..{num_classes - 1} (ignore {ignore_index}): {found[:10]}"
        )


def _none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else value
