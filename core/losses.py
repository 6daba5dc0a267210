"""Segmentation losses: cross entropy with an ignore index, and online hard example mining (OHEM).

Both return a zero loss that still has a gradient when every pixel is ignored (a crop that fell on
padding only), instead of the NaN that a mean over no pixels gives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.labels import IGNORE_INDEX


def _check_shapes(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"expected logits (N, C, H, W) and target (N, H, W), got {tuple(logits.shape)} "
            f"and {tuple(target.shape)}"
        )


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Mean per-pixel cross entropy over the pixels whose target is not ``ignore_index``.

    Args:
        logits: ``(N, C, H, W)`` class scores.
        target: ``(N, H, W)`` class ids.
        ignore_index: Target value of pixels that do not count.
    """
    _check_shapes(logits, target)
    target = target.long()
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    n_valid = (target != ignore_index).sum().clamp(min=1)
    return total / n_valid


class CrossEntropy(nn.Module):
    """``cross_entropy`` as a module, so it can stand where ``OhemCrossEntropy`` does."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, self.ignore_index)


class OhemCrossEntropy(nn.Module):
    """Cross entropy over the hard pixels only (paper Sec. 4.1: threshold 0.7).

    A valid pixel is hard when the predicted probability of its true class is below ``thresh``.
    The loss is the mean cross entropy over the hard pixels; when fewer than ``min_kept`` are hard,
    it is taken over the ``min_kept`` valid pixels with the lowest true-class probability instead
    (all valid pixels if there are fewer), so an easy batch still gives a useful gradient.
    """

    def __init__(
        self, thresh: float = 0.7, min_kept: int = 100_000, ignore_index: int = IGNORE_INDEX
    ) -> None:
        super().__init__()
        if not 0 < thresh <= 1:
            raise ValueError(f"OHEM threshold must be in (0, 1], got {thresh}")
        if min_kept < 0:
            raise ValueError(f"OHEM min_kept must be >= 0, got {min_kept}")
        self.thresh = thresh
        self.min_kept = min_kept
        self.ignore_index = ignore_index

    def kept_mask(self, pixel_loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Which pixels count, given flat per-pixel losses and a flat validity mask."""
        with torch.no_grad():
            # exp(-CE) is the softmax probability of the true class.
            prob = torch.exp(-pixel_loss.float())
            kept = valid & (prob < self.thresh)
            n_valid = int(valid.sum())
            if int(kept.sum()) < self.min_kept and n_valid > 0:
                k = min(self.min_kept, n_valid)
                prob = prob.masked_fill(~valid, float("inf"))
                kept = torch.zeros_like(valid)
                kept[torch.topk(prob, k, largest=False).indices] = True
            return kept

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_shapes(logits, target)
        target = target.long()
        pixel_loss = F.cross_entropy(
            logits, target, ignore_index=self.ignore_index, reduction="none"
        ).flatten()
        kept = self.kept_mask(pixel_loss, target.flatten() != self.ignore_index)
        # The sum over no pixels is an exact zero that keeps the graph (and so a gradient).
        return (pixel_loss * kept).sum() / kept.sum().clamp(min=1)

    def extra_repr(self) -> str:
        return f"thresh={self.thresh}, min_kept={self.min_kept}, ignore_index={self.ignore_index}"


def build_loss(ohem: bool, thresh: float = 0.7, min_kept: int = 100_000) -> nn.Module:
    """OHEM cross entropy when ``ohem``, else plain cross entropy; both ignore 255."""
    if ohem:
        return OhemCrossEntropy(thresh=thresh, min_kept=min_kept)
    return CrossEntropy()
