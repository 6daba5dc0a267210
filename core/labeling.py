"""What a teacher makes of unlabeled images: hard labels, their confidence and region centroids.

The label job (jobs/label.py) runs ``label_batch`` inside its Ray actors and writes the results into
the label store; anything else that labels images (a test, a notebook) gets the same results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.centroids import find_centroids
from core.configs import InferenceSettings
from core.inference import predict_batch
from core.labels import IGNORE_INDEX


@dataclass(frozen=True)
class LabeledImage:
    """A teacher's output for one image.

    Attributes:
        label: (H, W) uint8 train ids.
        confidence: (H, W) uint8, the winning class's probability times 255, rounded.
        centroids: (N, 4) float64 rows ``(class, y, x, area)`` (core.centroids).
    """

    label: np.ndarray
    confidence: np.ndarray
    centroids: np.ndarray


def label_batch(
    model: nn.Module,
    images: list[np.ndarray],
    settings: InferenceSettings,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> list[LabeledImage]:
    """Label ``images`` (uint8 (H, W, 3) RGB, sizes may differ) with ``model``.

    Images of one size go through the model as one batch; the results come back in input order.

    Args:
        model: The teacher, in eval mode, on ``device``.
        images: The images.
        settings: Inference mode and its options, precision, smallest centroid region.
        device: Where the model runs; on CUDA the uint8 batch is pinned and normalized there.
        channels_last: Run the model in channels-last memory format.
        ignore_index: The label value that forms no centroid region.
    """
    results: dict[int, LabeledImage] = {}
    for group in same_size_groups(images):
        batch = torch.from_numpy(np.stack([images[i] for i in group]))
        if torch.device(device).type == "cuda":
            batch = batch.pin_memory()  # uint8 goes to the GPU asynchronously
        # Only the options the mode uses are set; predict_batch ignores the others.
        options = settings.model_dump(include={"scales", "flip", "crop"}, exclude_none=True)
        labels, confidence = predict_batch(
            model,
            batch,
            mode=settings.mode,
            device=device,
            bf16=settings.precision == "bf16",
            channels_last=channels_last,
            **options,
        )
        confidence_u8 = confidence.mul(255).round_().to(torch.uint8).numpy()
        for k, index in enumerate(group):
            label = labels[k].numpy()
            centroids = find_centroids(label, settings.min_centroid_area, ignore_index)
            results[index] = LabeledImage(label, confidence_u8[k], centroids)
    return [results[i] for i in range(len(images))]


def same_size_groups(images: list[np.ndarray]) -> list[list[int]]:
    """Positions of ``images`` grouped by shape, in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(image.shape, []).append(index)
    return list(groups.values())
