"""SGD with momentum and the "poly" learning-rate decay used throughout the paper."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import PolynomialLR


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


def poly_lr(optimizer: torch.optim.Optimizer, total_iters: int, power: float = 0.9) -> PolynomialLR:
    """Multiply each group's base lr by ``(1 - it / total_iters) ** power``: torch's PolynomialLR.

    Call ``.step()`` once per iteration. The lr stays 0 past ``total_iters`` (a resumed run that
    trains a little longer must not get a growing lr). The schedule updates the optimizer's lr in
    place, step by step, so resuming needs the optimizer's state as well as the schedule's.
    """
    if total_iters <= 0:
        raise ValueError(f"total_iters must be positive, got {total_iters}")
    return PolynomialLR(optimizer, total_iters=total_iters, power=power)
