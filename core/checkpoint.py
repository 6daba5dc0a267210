"""The one checkpoint format that every job and the prediction endpoint read and write.

A checkpoint is a ``torch.save``d dict::

    {
        "format_version": 1,
        "model": state dict (no DDP "module." prefix),
        "model_name": name for core.models.build_model,
        "model_options": keyword options for build_model,
        "label_space": LabelSpace.to_dict(),
        "epoch": int (epochs completed),
        "optimizer": optimizer state dict or None,
        "lr_scheduler": scheduler state dict or None,
        "config": the run's config as a plain dict, or None,
        "extra": plain dict of anything else (metrics, ...), or None,
    }

Only plain Python values and tensors go in, so checkpoints load with ``weights_only=True`` (no
arbitrary code runs when a checkpoint is opened).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import CheckpointError, UnknownModelError
from core.labels import LabelSpace
from core.models import WEIGHT_OPTIONS, build_model

FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format_version",
    "model",
    "model_name",
    "model_options",
    "label_space",
    "epoch",
    "optimizer",
    "lr_scheduler",
    "config",
    "extra",
)
# Prefixes that wrappers add to state dict keys: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    model_name: str,
    model_options: dict[str, Any],
    label_space: LabelSpace,
    epoch: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically: readers see the old file or the new one, never a part.

    Args:
        path: Destination file; parent folders are created.
        model: The model, possibly wrapped in DistributedDataParallel.
        model_name: Its name for ``core.models.build_model``.
        model_options: The options it was built with.
        label_space: The classes its outputs stand for.
        epoch: Number of epochs completed.
        optimizer: Saved so training can resume.
        lr_scheduler: Saved so training can resume.
        config: The run's config as a plain dict (e.g. ``cfg.model_dump(mode="json")``).
        extra: Any other plain values (metrics, ...).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "format_version": FORMAT_VERSION,
        "model": strip_wrapper_prefixes(model.state_dict()),
        "model_name": model_name,
        "model_options": dict(model_options),
        "label_space": label_space.to_dict(),
        "epoch": int(epoch),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "lr_scheduler": None if lr_scheduler is None else lr_scheduler.state_dict(),
        "config": config,
        "extra": extra,
    }
    # Same folder, so os.replace is an atomic rename on the same file system.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint (tensors on the CPU).

    Raises:
        CheckpointError: The file is missing, is not a checkpoint, lacks keys, or has another
            format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for files that are not checkpoints
        raise CheckpointError(
            path, f"not a readable checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(checkpoint, dict):
        raise CheckpointError(path, f"not a checkpoint: holds a {type(checkpoint).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(path, f"not a selftrain checkpoint: missing keys {missing}")
    if checkpoint["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            path,
            f"format_version {checkpoint['format_version']!r} is not supported "
            f"(this code reads {FORMAT_VERSION})",
        )
    checkpoint["model"] = strip_wrapper_prefixes(checkpoint["model"])
    return checkpoint


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, LabelSpace, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint.

    Returns:
        The model on ``device`` in eval mode, its label space, and the checkpoint dict.

    Raises:
        CheckpointError: As for :func:`load_checkpoint`, or the model cannot be built or its weights
            do not fit.
    """
    checkpoint = load_checkpoint(path)
    try:
        label_space = LabelSpace.from_dict(checkpoint["label_space"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(path, f"invalid label_space: {exc}") from exc
    # The stored weights replace everything, so pretrained backbone weights need not be read (their
    # file may not exist where the checkpoint is used).
    options = {k: v for k, v in checkpoint["model_options"].items() if k not in WEIGHT_OPTIONS}
    try:
        model = build_model(checkpoint["model_name"], label_space.num_classes, **options)
    except (UnknownModelError, TypeError, ValueError) as exc:
        raise CheckpointError(path, f"cannot build the model: {exc}") from exc
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            path, f"weights do not fit model {checkpoint['model_name']!r}: {exc}"
        ) from exc
    return model.to(device).eval(), label_space, checkpoint


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with leading "module." (DDP) and "_orig_mod." (torch.compile) removed."""
    stripped = {}
    for key, value in state_dict.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    return stripped
