"""Online self-training: an EMA teacher labels weak views; the student learns them on strong views.

Each step of an online student (``TrainSettings.method: online``) takes a labeled batch and an
unlabeled batch (``pseudo_per_real`` unlabeled samples per labeled one):

1. The **EMA teacher** (Mean Teacher, Tarvainen & Valpola 2017; U2PL and CutMix-Seg use it for
   segmentation), whose weights follow the student's, ``w_t <- d w_t + (1 - d) w_s`` after every
   step, predicts each unlabeled image's **weak view** (the labeled samples' geometric
   augmentation): a hard label and its confidence per pixel.
2. Rare classes' **pasted ground-truth segments** (core.mixing; AEL, AugSeg) override those labels
   and always count.
3. **CutMix between unlabeled images** (CutMix-Seg; UniMatch): each strong view may take a box of
   the next image of the batch; its targets take the same box of that image's targets.
4. A pixel counts when its confidence reaches its class's **threshold**: a global one
   (FixMatch / UniMatch: 0.95) or, adapted while training, one per class
   (``ClassThresholds``; after FreeMatch's self-adaptive thresholds).
5. The student is trained on the labeled batch plus its **strong views** (strong colour jitter,
   grayscale, blur; one or two views as UniMatch) against those targets, and optionally on the weak
   view with dropout on its penultimate features (UniMatch's feature perturbation).

Everything here works on tensors in one process; over several ranks the statistics are summed
(``torch.distributed``) so every rank keeps the same thresholds, and the teacher's buffers are
taken from rank 0 so every rank keeps the same teacher.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from core.labels import IGNORE_INDEX
from core.mixing import mix_with_partner


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class EmaTeacher:
    """A copy of the student whose weights are an exponential moving average of the student's.

    Parameters and floating-point buffers (BatchNorm's running statistics) are averaged, integer
    buffers (BatchNorm's step counter) copied. The teacher always runs in eval mode.

    Args:
        student: The bare student model (not a DDP wrapper), whose structure the teacher copies.
        decay: ``d`` in ``w_t <- d w_t + (1 - d) w_s``.
        start: The teacher's initial weights (a state dict); default: the student's.
    """

    def __init__(
        self, student: nn.Module, decay: float, start: dict[str, torch.Tensor] | None = None
    ) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(student)
        if start is not None:
            self.model.load_state_dict(start)
        self.model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """One EMA step from the student's current weights."""
        teacher_state = self.model.state_dict()
        for name, value in student.state_dict().items():
            target = teacher_state[name]
            if target.is_floating_point():
                target.mul_(self.decay).add_(value.detach().to(target.dtype), alpha=1 - self.decay)
            else:
                target.copy_(value)
        if distributed():
            # Parameters agree on every rank (DDP averages the gradients); BatchNorm statistics are
            # each rank's own, so rank 0's are taken.
            for buffer in self.model.buffers():
                dist.broadcast(buffer.data, src=0)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(confidence (N, H, W) float, label (N, H, W) int64)`` of normalized images."""
        self.model.eval()
        probabilities = self.model(images).float().softmax(dim=1)
        confidence, label = probabilities.max(dim=1)
        return confidence, label

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


class ClassThresholds:
    """Confidence thresholds per class, adapted while training.

    Keeps, per class, a running mean ``m_c`` of the teacher's confidence on the pixels it labels
    ``c`` (updated every step from the pixels in play, momentum ``momentum``; a class absent from
    a step keeps its value). The threshold of class ``c`` is

        ``tau_c = max(floor, threshold * m_c / max_k m_k)``

    the maximum taken over the classes seen so far, so the class the teacher is surest of gets
    ``threshold`` and a class it is less sure of (a rare or hard one) a lower bar, never below
    ``floor``. A class not seen yet has ``threshold``; a class's first step sets its mean. With
    ``adaptive`` false every class gets ``threshold``.

    Args:
        num_classes: C.
        threshold: The global threshold and ceiling.
        floor: The lowest threshold.
        momentum: Of the running means.
        adaptive: Adapt per class (else one global threshold).
    """

    def __init__(
        self,
        num_classes: int,
        threshold: float,
        floor: float,
        momentum: float,
        adaptive: bool = True,
    ) -> None:
        self.threshold = threshold
        self.floor = floor
        self.momentum = momentum
        self.adaptive = adaptive
        # NaN: not seen yet.
        self.mean_confidence = torch.full((num_classes,), float("nan"), dtype=torch.float64)

    @torch.no_grad()
    def update(self, confidence: torch.Tensor, label: torch.Tensor) -> None:
        """Fold one step's teacher predictions in; pixels labeled ``IGNORE_INDEX`` do not count.

        Over several ranks the per-class sums are added up first, so every rank's means agree.
        """
        num_classes = self.mean_confidence.numel()
        keep = label != IGNORE_INDEX
        classes = label[keep].long()
        sums = torch.zeros(2, num_classes, dtype=torch.float64, device=confidence.device)
        sums[0].index_add_(0, classes, confidence[keep].double())
        sums[1].index_add_(0, classes, torch.ones_like(classes, dtype=torch.float64))
        if distributed():
            dist.all_reduce(sums)
        sums = sums.cpu()
        seen = sums[1] > 0
        step_mean = sums[0] / sums[1].clamp(min=1)
        previous = self.mean_confidence
        m = self.momentum
        updated = torch.where(previous.isnan(), step_mean, m * previous + (1 - m) * step_mean)
        self.mean_confidence = torch.where(seen, updated, previous)

    def values(self) -> torch.Tensor:
        """``(C,)`` float64 thresholds."""
        means = self.mean_confidence
        seen = ~means.isnan()
        if not self.adaptive or not seen.any():
            return torch.full_like(means, self.threshold)
        relative = means / means[seen].max().clamp(min=1e-12)
        adapted = (self.threshold * relative).clamp(min=self.floor)
        return torch.where(seen, adapted, torch.full_like(means, self.threshold))

    def state_dict(self) -> dict:
        return {"mean_confidence": self.mean_confidence.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.mean_confidence = state["mean_confidence"].clone().to(torch.float64)


@dataclass
class Targets:
    """What supervises one strong view.

    Attributes:
        label: ``(N, H, W)`` int64 class ids; ``IGNORE_INDEX`` where nothing counts (padding).
        confidence: ``(N, H, W)`` the teacher's confidence (1 where a segment was pasted).
        keep: ``(N, H, W)`` bool, the pixels that count: confident enough, or pasted.
    """

    label: torch.Tensor
    confidence: torch.Tensor
    keep: torch.Tensor


def teacher_targets(
    confidence: torch.Tensor,
    label: torch.Tensor,
    valid: torch.Tensor,
    pasted: torch.Tensor,
    thresholds: torch.Tensor,
) -> Targets:
    """The teacher's labels of the weak views with pasted segments and thresholds applied.

    Args:
        confidence: ``(N, H, W)`` the teacher's confidence on the weak views.
        label: ``(N, H, W)`` its labels.
        valid: ``(N, H, W)`` bool, pixels of the image (not padding).
        pasted: ``(N, H, W)`` the pasted segments' true labels, ``IGNORE_INDEX`` elsewhere.
        thresholds: ``(C,)`` per-class thresholds.
    """
    is_pasted = pasted != IGNORE_INDEX
    label = torch.where(is_pasted, pasted.long(), label)
    confidence = torch.where(is_pasted, torch.ones_like(confidence), confidence)
    label = torch.where(valid, label, torch.full_like(label, IGNORE_INDEX))
    bar = thresholds.to(confidence.device, confidence.dtype)[label.clamp(max=len(thresholds) - 1)]
    keep = valid & (is_pasted | (confidence >= bar))
    return Targets(label, confidence, keep)


def mixed_targets(targets: Targets, boxes: torch.Tensor) -> Targets:
    """The targets of a CutMixed strong view: each sample's box from its partner's targets."""
    return Targets(
        mix_with_partner(targets.label, boxes),
        mix_with_partner(targets.confidence, boxes),
        mix_with_partner(targets.keep, boxes),
    )


def masked_cross_entropy(logits: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Cross entropy over the pixels that count, divided by the pixels of the image (UniMatch's
    normalization: a view with few confident pixels weighs less, not more)."""
    label = torch.where(targets.keep, targets.label, torch.full_like(targets.label, IGNORE_INDEX))
    total = F.cross_entropy(logits.float(), label, ignore_index=IGNORE_INDEX, reduction="sum")
    in_image = (targets.label != IGNORE_INDEX).sum().clamp(min=1)
    return total / in_image


@dataclass
class PseudoStatistics:
    """What the teacher's targets looked like over an epoch (summed over ranks).

    Attributes:
        confident: Pixels that counted (confident or pasted).
        pixels: Pixels of the unlabeled images (not padding).
        class_pixels: ``(C,)`` counted pixels per class.
    """

    confident: float
    pixels: float
    class_pixels: torch.Tensor

    @classmethod
    def zero(cls, num_classes: int) -> PseudoStatistics:
        return cls(0.0, 0.0, torch.zeros(num_classes, dtype=torch.float64))

    def add(self, targets: Targets) -> None:
        self.confident += float(targets.keep.sum())
        self.pixels += float((targets.label != IGNORE_INDEX).sum())
        counted = targets.label[targets.keep]
        self.class_pixels += torch.bincount(counted.cpu(), minlength=len(self.class_pixels))[
            : len(self.class_pixels)
        ].double()

    def all_reduce(self, device: torch.device) -> PseudoStatistics:
        """The statistics summed over ranks (NCCL reduces on ``device``)."""
        values = torch.cat([torch.tensor([self.confident, self.pixels]), self.class_pixels])
        if distributed():
            on_device = values.to(device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(on_device)
            values = on_device.cpu()
        return PseudoStatistics(float(values[0]), float(values[1]), values[2:].clone())

    def confident_share(self) -> float:
        return self.confident / self.pixels if self.pixels else 0.0

    def class_shares(self) -> torch.Tensor:
        return self.class_pixels / self.class_pixels.sum().clamp(min=1)
