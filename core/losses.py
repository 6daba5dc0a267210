"""Segmentation losses: cross entropy with an ignore index, online hard example mining (OHEM), and
a soft cross entropy for soft labels.

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


def soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Mean over the valid pixels of ``-sum_c p_c log softmax(logits)_c``.

    Args:
        logits: ``(N, C, H, W)`` class scores.
        target: ``(N, H, W, 1 + C)`` uint8 (core.transforms.soft_target): the hard label, whose
            ``ignore_index`` pixels do not count, then each class's probability x 255. Each
            pixel's probabilities are renormalized to sum to 1 (rounding to uint8 leaves them a
            little off); a one-hot target gives plain cross entropy.
    """
    n, c, h, w = logits.shape
    if target.shape != (n, h, w, 1 + c):
        raise ValueError(
            f"expected logits (N, C, H, W) and target (N, H, W, 1 + C), got {tuple(logits.shape)} "
            f"and {tuple(target.shape)}"
        )
    valid = target[..., 0] != ignore_index
    probs = target[..., 1:].permute(0, 3, 1, 2).float()
    probs = probs / probs.sum(dim=1, keepdim=True).clamp(min=1e-6)
    pixel_loss = -(probs * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    return (pixel_loss * valid).sum() / valid.sum().clamp(min=1)


class SoftCrossEntropy(nn.Module):
    """``soft_cross_entropy`` as a module."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(logits, target, self.ignore_index)


def build_loss(
    ohem: bool, thresh: float = 0.7, min_kept: int = 100_000, soft: bool = False
) -> nn.Module:
    """OHEM cross entropy when ``ohem``, soft cross entropy when ``soft``, else plain cross
    entropy; all ignore 255."""
    if ohem and soft:
        raise ValueError("OHEM ranks pixels by a hard label's loss; it takes no soft targets")
    if ohem:
        return OhemCrossEntropy(thresh=thresh, min_kept=min_kept)
    return SoftCrossEntropy() if soft else CrossEntropy()
