"""What a teacher makes of unlabeled images (hard labels, their confidence and region centroids),
and the label store a labeling run writes them into.

The label job (jobs/label.py) opens its store with ``open_for_labeling`` on the driver and runs
``label_batch`` inside its Ray actors; anything else that labels images (a test, a notebook) gets
the same results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.centroids import find_centroids
from core.configs import InferenceSettings
from core.errors import StoreError
from core.inference import predict_batch
from core.labels import IGNORE_INDEX, LabelSpace
from core.store import LabelStore, path_taken


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


def describe_teacher(checkpoint_path: str | Path, checkpoint: dict) -> dict:
    """The teacher identity a store records: checkpoint file, its sha256, model and training config.

    Args:
        checkpoint_path: The checkpoint file.
        checkpoint: Its contents, as core.checkpoint.load_checkpoint returns them.
    """
    path = Path(checkpoint_path).resolve()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {
        "checkpoint": str(path),
        "sha256": digest.hexdigest(),
        "model_name": checkpoint["model_name"],
        "model_options": checkpoint["model_options"],
        "epoch": checkpoint["epoch"],
        "config": checkpoint["config"],
    }


# What makes two teachers the same: the weights (file hash) and the architecture that reads them.
TEACHER_IDENTITY = ("sha256", "model_name")


def open_for_labeling(
    path: str | Path,
    image_paths: Sequence[str],
    label_space: LabelSpace,
    teacher: dict,
    settings: dict,
    overwrite: bool = False,
) -> LabelStore:
    """The store a labeling run writes into, with every image of ``image_paths`` in its list.

    A missing store is created. An existing one is reused when it was made by the same teacher
    (`TEACHER_IDENTITY`) with the same settings, and the images it does not hold yet are appended.

    Args:
        path: The store.
        image_paths: The images to label (the source's list, sorted).
        label_space: The teacher's classes.
        teacher: From `describe_teacher`.
        settings: The inference settings that shape the labels.
        overwrite: Delete and recreate a store made by another teacher or with other settings.
            A store of the same teacher is kept either way, so a rerun resumes.

    Raises:
        StoreError: The store was made by another teacher or with other settings and
            ``overwrite`` is false, or ``path`` holds something else.
    """
    path = Path(path)
    if not path_taken(path):
        return LabelStore.create(path, image_paths, None, label_space, teacher, settings)
    store = LabelStore.open(path)
    differences = _differences(store, label_space, teacher, settings)
    if differences:
        if not overwrite:
            raise StoreError(
                path,
                f"labeled by another teacher or with other settings ({'; '.join(differences)}); "
                "set overwrite to delete it and label again",
            )
        return LabelStore.create(path, image_paths, None, label_space, teacher, settings, True)
    store.add_images(image_paths)
    return store


def _differences(
    store: LabelStore, label_space: LabelSpace, teacher: dict, settings: dict
) -> list[str]:
    differences = [
        f"teacher {key} {store.teacher.get(key)!r} != {teacher.get(key)!r}"
        for key in TEACHER_IDENTITY
        if store.teacher.get(key) != teacher.get(key)
    ]
    if store.label_space.to_dict() != label_space.to_dict():
        differences.append(f"classes {list(store.label_space.names)} != {list(label_space.names)}")
    for key in sorted(set(store.settings) | set(settings)):
        if store.settings.get(key) != settings.get(key):
            differences.append(f"{key} {store.settings.get(key)!r} != {settings.get(key)!r}")
    return differences
