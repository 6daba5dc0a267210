"""Inference: whole image, sliding window, and multi-scale + flip.

Every mode returns, per pixel, the class with the highest probability and that probability (the
confidence the label store keeps). Images travel to the device as uint8 and are normalized there.

Modes:
    whole: one forward pass over the whole image.
    slide: windows of ``crop`` x ``crop`` with a stride of 2/3 of the crop; the image is padded
        with 0 (after normalization, i.e. the mean color) where it is smaller than the crop, and
        logits are averaged where windows overlap.
    multiscale: the image is resized by each of ``scales`` and, when ``flip``, also mirrored; each
        version is predicted with ``slide`` (one window when it fits the crop), its logits are
        resized back to the image size, and the softmax probabilities of all versions are averaged.
``scales`` and ``flip`` apply to ``multiscale`` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.configs import InferenceMode
from core.transforms import normalize_batch

MODES: tuple[str, ...] = ("whole", "slide", "multiscale")
SLIDE_STRIDE_FRACTION = 2 / 3

Forward = Callable[[torch.Tensor], torch.Tensor]


def predict(
    model: nn.Module, image: np.ndarray, mode: InferenceMode = "whole", **options: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Label one image: ``predict_batch`` on a batch of one.

    Args:
        model: Segmentation model already on the device and in eval mode.
        image: RGB image (H, W, 3) uint8.
        mode: ``"whole"``, ``"slide"`` or ``"multiscale"`` (see the module docstring).
        options: ``predict_batch``'s other options (scales, flip, crop, device, bf16,
            channels_last).

    Returns:
        The label map (H, W) uint8 and the confidence (H, W) float32, the highest averaged softmax
        probability, in [1/C, 1].
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    labels, confidence = predict_batch(model, image[None], mode, **options)
    return labels[0].numpy(), confidence[0].numpy()


def predict_batch(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    mode: InferenceMode = "whole",
    scales: Sequence[float] = (0.5, 1.0, 2.0),
    flip: bool = True,
    crop: int = 512,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label a batch of same-size images.

    Args:
        model: Segmentation model already on ``device`` and in eval mode.
        images: uint8 (N, H, W, 3) RGB, a CPU tensor or numpy array (moved to ``device`` as uint8).
        mode: ``"whole"``, ``"slide"`` or ``"multiscale"`` (see the module docstring).
        scales: Resize factors for ``multiscale``.
        flip: Also average horizontally mirrored predictions (``multiscale``).
        crop: Window size for ``slide`` and ``multiscale``.
        device: Where the forward passes run.
        bf16: Run the model under bfloat16 autocast (CUDA or CPU); softmax and averaging stay
            float32.
        channels_last: Use channels-last memory format; converts ``model``'s weights in place.

    Returns:
        Labels (N, H, W) uint8 and confidence (N, H, W) float32, both CPU tensors.
    """
    labels, confidence, _ = _predict(
        model, images, None, mode, scales, flip, crop, device, bf16, channels_last
    )
    return labels, confidence


def predict_soft_batch(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    stride: int,
    mode: InferenceMode = "whole",
    scales: Sequence[float] = (0.5, 1.0, 2.0),
    flip: bool = True,
    crop: int = 512,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`predict_batch` plus the class probabilities, averaged over ``stride x stride`` pixels
    (soft labels at about the model's output resolution; the last row and column of cells cover
    what is left of the image).

    Returns:
        Labels (N, H, W) uint8, confidence (N, H, W) float32 and probabilities
        (N, C, ceil(H / stride), ceil(W / stride)) float16, CPU tensors.
    """
    labels, confidence, coarse = _predict(
        model, images, stride, mode, scales, flip, crop, device, bf16, channels_last
    )
    assert coarse is not None
    return labels, confidence, coarse


def _predict(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    stride: int | None,
    mode: InferenceMode,
    scales: Sequence[float],
    flip: bool,
    crop: int,
    device: str | torch.device,
    bf16: bool,
    channels_last: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Labels, confidence and (with ``stride``) the cell-averaged probabilities, CPU tensors."""
    with torch.inference_mode():
        probs = _probabilities(model, images, mode, scales, flip, crop, device, bf16, channels_last)
        confidence, labels = probs.max(dim=1)
        coarse = None
        if stride is not None:
            coarse = F.avg_pool2d(probs, stride, stride, ceil_mode=True).half().cpu()
        labels, confidence = labels.to(torch.uint8).cpu(), confidence.cpu()
    # Clones made outside inference mode are ordinary tensors that callers may modify in place.
    return labels.clone(), confidence.clone(), None if coarse is None else coarse.clone()


def _probabilities(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    mode: InferenceMode,
    scales: Sequence[float],
    flip: bool,
    crop: int,
    device: str | torch.device,
    bf16: bool,
    channels_last: bool,
) -> torch.Tensor:
    """Softmax probabilities (N, C, H, W) on ``device`` (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown inference mode {mode!r}; known: {', '.join(MODES)}")
    if mode == "multiscale" and (not scales or min(scales) <= 0):
        raise ValueError(f"multiscale needs positive scales, got {list(scales)}")
    if crop <= 0:
        raise ValueError(f"crop must be positive, got {crop}")
    if isinstance(images, np.ndarray):
        # A writable, C-ordered copy only when needed (read-only or mirrored arrays).
        images = torch.from_numpy(np.require(images, requirements=["C", "W"]))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = _forward_fn(model, bf16, channels_last)
    x = normalize_batch(images.to(device, non_blocking=True))
    if mode == "whole":
        return torch.softmax(forward(x), dim=1)
    if mode == "slide":
        return torch.softmax(_slide_logits(forward, x, crop), dim=1)
    return _multiscale_probabilities(forward, x, scales, flip, crop)


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Offsets of windows of size ``crop``, ``stride`` apart, that together cover ``0..length-1``.

    The last window ends exactly at ``length`` (it overlaps its neighbour more when the stride does
    not divide evenly). A length of at most ``crop`` gets one window at 0.
    """
    if length <= crop:
        return [0]
    return [*range(0, length - crop, stride), length - crop]


def _forward_fn(model: nn.Module, bf16: bool, channels_last: bool) -> Forward:
    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        if logits.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"model returned logits of size {tuple(logits.shape[-2:])} for input "
                f"{tuple(x.shape[-2:])}; models must return full-resolution logits"
            )
        return logits.float()

    return forward


def _slide_logits(forward: Forward, x: torch.Tensor, crop: int) -> torch.Tensor:
    """Logits (N, C, H, W) of normalized images ``x`` (N, 3, H, W), averaged over windows."""
    height, width = x.shape[-2:]
    stride = max(1, math.ceil(crop * SLIDE_STRIDE_FRACTION))
    # Pad bottom/right so every window is crop x crop; 0 is the mean color after normalization.
    x = F.pad(x, (0, max(crop - width, 0), 0, max(crop - height, 0)))
    padded_h, padded_w = x.shape[-2:]
    total: torch.Tensor | None = None
    count = x.new_zeros((1, 1, padded_h, padded_w))
    for top in window_starts(padded_h, crop, stride):
        for left in window_starts(padded_w, crop, stride):
            window = (..., slice(top, top + crop), slice(left, left + crop))
            logits = forward(x[window])
            if total is None:
                total = logits.new_zeros((x.shape[0], logits.shape[1], padded_h, padded_w))
            total[window] += logits
            count[window] += 1
    return (total / count)[..., :height, :width]


def _multiscale_probabilities(
    forward: Forward, x: torch.Tensor, scales: Sequence[float], flip: bool, crop: int
) -> torch.Tensor:
    """Softmax (N, C, H, W) averaged over scales and (optionally) horizontal flips."""
    height, width = x.shape[-2:]
    total: torch.Tensor | None = None
    n_versions = 0
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = x
        if size != (height, width):
            scaled = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            logits = _slide_logits(forward, scaled.flip(-1) if mirrored else scaled, crop)
            if mirrored:
                logits = logits.flip(-1)
            if size != (height, width):
                logits = F.interpolate(
                    logits, size=(height, width), mode="bilinear", align_corners=False
                )
            probs = torch.softmax(logits, dim=1)
            total = probs if total is None else total + probs
            n_versions += 1
    return total / n_versions
