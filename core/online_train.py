"""One epoch of an online student (core.online): every step a labeled batch and an unlabeled one.

The student sees, in one forward pass (so BatchNorm sees them together and DistributedDataParallel
one graph), its labeled crops, the strong views of the unlabeled crops and, with feature
perturbation, the weak views with dropout on their penultimate features. The EMA teacher follows
the student after every optimizer step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from core.checkpoint import load_checkpoint
from core.configs import OnlineSettings, TrainJobConfig
from core.errors import CheckpointError
from core.labels import IGNORE_INDEX, LabelSpace
from core.mixing import mix_with_partner
from core.online import (
    ClassThresholds,
    EmaTeacher,
    PseudoStatistics,
    Targets,
    masked_cross_entropy,
    mixed_targets,
    teacher_targets,
)
from core.training import EpochStats, labeled_batch, sum_over_ranks
from core.transforms import normalize_batch


@dataclass
class OnlineParts:
    """What an online epoch trains with besides the student.

    Attributes:
        teacher: The EMA teacher.
        thresholds: The per-class confidence thresholds.
        settings: The online settings.
        num_classes: C.
    """

    teacher: EmaTeacher
    thresholds: ClassThresholds
    settings: OnlineSettings
    num_classes: int

    def state_dict(self) -> dict:
        """What a checkpoint keeps so that a resumed run goes on exactly."""
        return {"teacher": self.teacher.state_dict(), "thresholds": self.thresholds.state_dict()}


def online_parts(
    config: TrainJobConfig, student: nn.Module, label_space: LabelSpace
) -> OnlineParts:
    """The EMA teacher (from ``online_teacher`` or the student's start) and the thresholds.

    Raises:
        CheckpointError: ``online_teacher`` holds another architecture or other classes (the
            EMA teacher is the student's own architecture).
    """
    settings = config.online
    start = None
    if settings.teacher_start == "teacher":
        assert config.online_teacher is not None  # TrainJobConfig requires it
        start = _teacher_weights(config, label_space)
    teacher = EmaTeacher(student, settings.ema_decay, start)
    thresholds = ClassThresholds(
        label_space.num_classes,
        settings.threshold,
        settings.threshold_floor,
        settings.threshold_momentum,
        adaptive=settings.class_thresholds,
    )
    return OnlineParts(teacher, thresholds, settings, label_space.num_classes)


def _teacher_weights(config: TrainJobConfig, label_space: LabelSpace) -> dict[str, torch.Tensor]:
    path = config.online_teacher
    assert path is not None
    checkpoint = load_checkpoint(path)
    if checkpoint["model_name"] != config.model:
        raise CheckpointError(
            path,
            f"holds a {checkpoint['model_name']!r} model; an EMA teacher is the student's own "
            f"architecture ({config.model!r}): set online.teacher_start to 'student'",
        )
    names = list(checkpoint["label_space"]["names"])
    if names != list(label_space.names):
        raise CheckpointError(path, f"predicts {names}, the student {list(label_space.names)}")
    return checkpoint["model"]


def online_metrics(
    parts: OnlineParts, pseudo: PseudoStatistics, prior: np.ndarray, names: list[str]
) -> dict:
    """An online epoch's MetricsRow fields: the share of counted unlabeled pixels, each class's
    share of them against its labeled share (``prior``: pixels per class), the thresholds."""
    labeled = prior / max(1, prior.sum())
    thresholds = parts.thresholds.values()
    shares = pseudo.class_shares()
    return {
        "unlabeled_confident_share": pseudo.confident_share(),
        "pseudo_class_share": {n: float(v) for n, v in zip(names, shares, strict=True)},
        "labeled_class_share": {n: float(v) for n, v in zip(names, labeled, strict=True)},
        "class_thresholds": {n: float(v) for n, v in zip(names, thresholds, strict=True)},
    }


@dataclass
class StepInputs:
    """One step's student input and how to split its output."""

    images: torch.Tensor
    n_labeled: int
    n_views: int
    n_unlabeled: int
    perturbed: bool


def train_online_epoch(
    model: nn.Module,
    student: nn.Module,
    labeled_loader: DataLoader,
    views_loader: DataLoader,
    parts: OnlineParts,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    bf16: bool = False,
) -> tuple[EpochStats, PseudoStatistics]:
    """One pass over both loaders (they yield the same number of batches).

    Args:
        model: The module trained (the student, possibly DDP-wrapped or compiled).
        student: The bare student (its weights feed the EMA; its classifier the perturbation).
        labeled_loader: Real batches (core.training.collate).
        views_loader: Unlabeled views (core.online_data.collate_views).
        parts: Teacher, thresholds and settings.
        loss_fn: The labeled loss ``(logits, labels) -> loss``.
        optimizer: Stepped every batch.
        lr_scheduler: Stepped every batch.
        device: Where the batches go.
        bf16: Forward passes under bfloat16 autocast.
    """
    model.train()
    start, start_cpu = time.perf_counter(), time.process_time()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    steps, images = 0, 0
    sizes: set[tuple[int, int]] = set()
    pseudo = PseudoStatistics.zero(parts.num_classes)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)
    for batch, views in zip(labeled_loader, views_loader, strict=True):
        x, target = labeled_batch(batch, device)
        with autocast:
            inputs, targets, offline = _unlabeled_side(x, views, parts, device, pseudo)
        dropout = parts.settings.feature_dropout
        perturb = _perturb_last(student, dropout, inputs.n_unlabeled) if dropout else nullcontext()
        with autocast, perturb:
            logits = model(inputs.images)
            loss = _loss(logits, target, targets, offline, inputs, loss_fn, parts.settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        parts.teacher.update(student)
        loss_sum += loss.detach().double()
        steps += 1
        images += inputs.images.shape[0]
        sizes.add((x.shape[2], x.shape[3]))
    totals = torch.tensor([loss_sum.item(), steps, images], dtype=torch.float64)
    sum_over_ranks(totals, device)
    stats = EpochStats(
        loss=float(totals[0] / max(totals[1], 1)),
        lr=float(optimizer.param_groups[0]["lr"]),
        images=int(totals[2]),
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - start_cpu,
        steps=steps,
        input_sizes=sorted(sizes),
    )
    return stats, pseudo.all_reduce(device)


def _unlabeled_side(
    x: torch.Tensor,
    views: dict[str, torch.Tensor],
    parts: OnlineParts,
    device: torch.device,
    pseudo: PseudoStatistics,
) -> tuple[StepInputs, list[Targets], list[Targets]]:
    """The teacher's targets of one unlabeled batch, the student's input (labeled crops, strong
    views mixed with their boxes, and the weak views when perturbed) and the offline targets."""
    views = {key: value.to(device, non_blocking=True) for key, value in views.items()}
    weak = normalize_batch(views["weak"])
    confidence, label = parts.teacher.predict(weak)
    valid = views["valid"]
    parts.thresholds.update(confidence, torch.where(valid, label, IGNORE_INDEX))
    base = teacher_targets(confidence, label, valid, views["pasted"], parts.thresholds.values())
    pseudo.add(base)
    offline_base = Targets(
        views["offline"].long(), torch.ones_like(confidence), views["offline"] != IGNORE_INDEX
    )
    strong, targets, offline = [], [], []
    for view, boxes in zip(views["strong"], views["boxes"], strict=True):
        strong.append(mix_with_partner(normalize_batch(view), boxes))
        targets.append(mixed_targets(base, boxes))
        offline.append(mixed_targets(offline_base, boxes))
    perturbed = parts.settings.feature_dropout is not None
    images = torch.cat([x, *strong, *([weak] if perturbed else [])])
    inputs = StepInputs(images, x.shape[0], len(strong), weak.shape[0], perturbed)
    if perturbed:
        targets.append(base)
    return inputs, targets, offline


def _loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    targets: list[Targets],
    offline: list[Targets],
    inputs: StepInputs,
    loss_fn: nn.Module,
    settings: OnlineSettings,
) -> torch.Tensor:
    """Labeled loss + ``unlabeled_weight`` x the strong views' mean loss (+ the perturbed weak
    view's and the offline labels', weighted)."""
    sizes = [inputs.n_labeled] + [inputs.n_unlabeled] * (inputs.n_views + inputs.perturbed)
    labeled_logits, *unlabeled_logits = logits.split(sizes)
    loss = loss_fn(labeled_logits, target)
    strong_logits = unlabeled_logits[: inputs.n_views]
    strong_losses = [
        masked_cross_entropy(lg, t) for lg, t in zip(strong_logits, targets, strict=False)
    ]
    loss = loss + settings.unlabeled_weight * torch.stack(strong_losses).mean()
    if inputs.perturbed:
        loss = loss + settings.feature_weight * masked_cross_entropy(
            unlabeled_logits[-1], targets[-1]
        )
    if settings.offline_weight:
        offline_losses = [
            masked_cross_entropy(lg, t) for lg, t in zip(strong_logits, offline, strict=True)
        ]
        loss = loss + settings.offline_weight * torch.stack(offline_losses).mean()
    return loss


@contextmanager
def _perturb_last(student: nn.Module, rate: float, n: int) -> Iterator[None]:
    """Within the block, the student's classifier reads the last ``n`` samples' features through
    channel dropout of ``rate`` (UniMatch's feature perturbation, on the penultimate features
    every model of core.models has), the others' unchanged."""

    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        features = args[0]
        kept, perturbed = features[:-n], features[-n:]
        return (torch.cat([kept, F.dropout2d(perturbed, rate, training=True)]), *args[1:])

    handle = student.classifier.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
