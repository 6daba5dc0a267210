"""SGD with momentum and the "poly" learning-rate decay used throughout the paper."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def build_optimizer(
    model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4
) -> torch.optim.SGD:
    """SGD over the model's trainable parameters.

    Weight decay applies to conv and linear weights only: biases and normalization scales/shifts
    (the parameters with fewer than two dimensions) are not decayed, since shrinking them toward
    zero only fights the normalization. Group 0 holds the decayed weights, group 1 the rest.
    """
    if lr <= 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    decayed, not_decayed = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decayed if param.ndim > 1 else not_decayed).append(param)
    groups = [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": not_decayed, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def poly_lr(
    optimizer: torch.optim.Optimizer,
    total_iters: int,
    power: float = 0.9,
    restarts: Sequence[tuple[int, float]] = (),
) -> LambdaLR:
    """The "poly" decay: each group's base lr times ``(1 - it / total_iters) ** power``.

    With ``restarts``, a list of ``(iteration, factor)``, the decay starts over at each
    ``iteration`` from ``factor`` times the base lr and reaches 0 at the next restart or at
    ``total_iters`` (pretrain on pseudo labels at 0.02, then finetune from 0.002: one restart at
    factor 0.1). Call ``.step()`` once per iteration; the lr stays 0 past ``total_iters``.

    A LambdaLR rather than torch's PolynomialLR, which cannot restart at another lr: the factor
    is a closed form of the iteration, so the schedule's own state is all a resumed run needs.
    """
    if total_iters <= 0:
        raise ValueError(f"total_iters must be positive, got {total_iters}")
    starts = [0, *[it for it, _ in restarts]]
    if starts != sorted(set(starts)) or starts[-1] >= total_iters:
        raise ValueError(
            f"restarts must be increasing iterations in (0, {total_iters}), got {list(restarts)}"
        )
    ends = [*starts[1:], total_iters]
    scales = [1.0, *[f for _, f in restarts]]
    segments = list(zip(starts, ends, scales, strict=True))

    def factor(it: int) -> float:
        for begin, end, scale in reversed(segments):
            if it >= begin:
                return scale * max(0.0, 1.0 - (it - begin) / (end - begin)) ** power
        return 1.0

    return LambdaLR(optimizer, factor)
