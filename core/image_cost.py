"""What labeling one image will cost in memory, known from its header before a pixel is decoded,
and the model input that keeps it within bounds.

Pixels alone are the wrong measure: a 35 KB PNG of 40 x 1,000,000 pixels is under a 40-megapixel
limit, yet at full resolution its logits (classes x H x W float32), their softmax and the model's
activations took 7 GB. ``plan_image`` counts every buffer a prediction holds (the decoded image,
the model input, its activations, logits and probabilities, the label and the overlay at the
image's size) and scales the model input down until the longest side, the input's pixels and the
bytes fit; an image that cannot fit (its full-size buffers alone are over, or its short side would
fall under ``min_side``) is refused with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.errors import ImageTooLargeError

# Bytes per pixel of the image at its own size: the decoded RGB (and the BGR it is converted
# from), the label (uint8) and the overlay (the palette colors and the blend, uint8).
FULL_SIZE_BYTES = 3 + 3 + 1 + 3 + 3 + 3
# Bytes per pixel of the model input, besides the model's own activations: the resized uint8
# image, its float32 normalization, labels (int64) and confidence (float32) of the argmax.
INPUT_BYTES = 3 + 3 * 4 + 8 + 4


@dataclass(frozen=True)
class ImagePlan:
    """How an image of ``height`` x ``width`` is predicted.

    Attributes:
        height: The image's height.
        width: The image's width.
        input_height: The model input's height (smaller when resized to fit).
        input_width: The model input's width.
        bytes: The estimated memory the prediction holds at its peak.
    """

    height: int
    width: int
    input_height: int
    input_width: int
    bytes: int

    @property
    def resized(self) -> bool:
        return (self.input_height, self.input_width) != (self.height, self.width)


def input_bytes_per_pixel(num_classes: int, activation_bytes_per_pixel: float) -> float:
    """Bytes the model input costs per pixel: buffers, activations, logits and softmax."""
    return INPUT_BYTES + activation_bytes_per_pixel + 2 * 4 * num_classes


def plan_image(
    height: int,
    width: int,
    num_classes: int,
    activation_bytes_per_pixel: float,
    max_side: int,
    max_input_pixels: int,
    max_bytes: int,
    min_side: int = 8,
    name: str = "image",
) -> ImagePlan:
    """The model input size for an image: the image's own size when it fits, else scaled down
    (aspect kept) until its longest side is at most ``max_side``, it has at most
    ``max_input_pixels`` pixels and the whole prediction costs at most ``max_bytes``.

    Raises:
        ImageTooLargeError: The buffers at the image's own size alone are over ``max_bytes``, or
            the scaled input's short side would be under ``min_side`` (an extreme aspect ratio).
    """
    fixed = FULL_SIZE_BYTES * height * width
    per_pixel = input_bytes_per_pixel(num_classes, activation_bytes_per_pixel)
    if fixed >= max_bytes:
        raise ImageTooLargeError(
            name,
            f"{height}x{width} needs {_gb(fixed)} at its own size alone, over the "
            f"{_gb(max_bytes)} a prediction may use",
        )
    pixels = height * width
    scale = min(
        1.0,
        max_side / max(height, width),
        math.sqrt(max_input_pixels / pixels),
        math.sqrt((max_bytes - fixed) / (per_pixel * pixels)),
    )
    input_height = max(1, math.floor(height * scale)) if scale < 1 else height
    input_width = max(1, math.floor(width * scale)) if scale < 1 else width
    if min(input_height, input_width) < min_side:
        raise ImageTooLargeError(
            name,
            f"{height}x{width} would be read at {input_height}x{input_width} to fit the model's "
            f"limits (longest side {max_side}, {max_input_pixels} pixels, {_gb(max_bytes)}), "
            f"under {min_side} pixels across: its aspect ratio is too extreme",
        )
    cost = fixed + math.ceil(per_pixel * input_height * input_width)
    return ImagePlan(height, width, input_height, input_width, cost)


def activation_bytes_per_pixel(model, side: int = 64) -> float:
    """An upper bound of the bytes a model's activations hold per input pixel: every layer's
    output of a forward pass on a ``side`` x ``side`` probe, summed (a forward under inference
    mode frees most of them as it goes, so the real peak is lower)."""
    import torch

    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(torch.zeros(1, 3, side, side, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return total / (side * side)


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
