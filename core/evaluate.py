"""Evaluate a model on a labeled dataset: predict every image and count a confusion matrix."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.checkpoint import load_model
from core.cityscapes_metrics import InstanceCounts, category_iou, is_cityscapes, mean_defined
from core.configs import DataSource, InferenceMode
from core.datasets import (
    SegmentationDataset,
    instance_map_path,
    open_source,
    read_instance_map,
)
from core.errors import CheckpointError, DataError, SizeMismatchError
from core.inference import predict
from core.labels import LabelSpace
from core.metrics import ConfusionMatrix

# What evaluate iterates: anything with len() and [i] -> (image, label or None, image path),
# e.g. core.datasets.SegmentationDataset.
Sample = tuple[np.ndarray, np.ndarray | None, str]


def evaluate(
    model: nn.Module,
    dataset: Sequence[Sample],
    label_space: LabelSpace,
    mode: InferenceMode = "whole",
    device: str | torch.device = "cpu",
    observe: Callable[[int, np.ndarray], None] | None = None,
    **inference_options: Any,
) -> ConfusionMatrix:
    """Predict every image of ``dataset`` and compare with its label.

    Args:
        model: Segmentation model on ``device``; put in eval mode here and restored afterwards.
        dataset: Samples (image uint8 HWC, label uint8 HW train ids, image path).
        label_space: The model's classes (and ignore index).
        mode: Inference mode, see core.inference.
        device: Where the forward passes run.
        observe: Called with each sample's index and predicted train ids (e.g. for instance
            scores).
        **inference_options: Passed to core.inference.predict (scales, flip, crop, bf16, ...).

    Raises:
        DataError: A sample has no label.
        SizeMismatchError: A label's size differs from its image's.
    """
    matrix = ConfusionMatrix(label_space.num_classes, label_space.ignore_index)
    was_training = model.training
    model.eval()
    try:
        for index in range(len(dataset)):
            image, label, path = dataset[index]
            if label is None:
                raise DataError(path, "has no label to evaluate against")
            if label.shape != image.shape[:2]:
                raise SizeMismatchError(
                    path,
                    f"label is {label.shape[1]}x{label.shape[0]} but the image is "
                    f"{image.shape[1]}x{image.shape[0]}",
                )
            prediction, _ = predict(model, image, mode=mode, device=device, **inference_options)
            matrix.update(prediction, label)
            if observe is not None:
                observe(index, prediction)
    finally:
        model.train(was_training)
    return matrix


def evaluate_checkpoint(
    checkpoint: str | Path,
    source: DataSource,
    mode: InferenceMode = "whole",
    device: str | torch.device = "cpu",
    **inference_options: Any,
) -> dict[str, Any]:
    """Evaluate a stored model on the labeled data a config describes (``selftrain evaluate``).

    Returns:
        ``{"miou", "pixel_accuracy", "per_class_iou": {class name: iou}, "n_images"}``, JSON-able
        (undefined values are None). For Cityscapes' 19 classes also ``category_iou`` and its
        mean ``category_miou``, and where every image has an instance map (Cityscapes, KITTI)
        ``iiou_per_class``, ``iiou``, ``category_iiou`` and ``category_iiou_mean``
        (core.cityscapes_metrics).

    Raises:
        CheckpointError: The checkpoint cannot be loaded, or its classes differ from the data's.
        DataError: The data has images without labels (or any error opening it).
    """
    model, label_space, _ = load_model(checkpoint, device)
    dataset = open_source(source)
    if not dataset.is_labeled():
        raise DataError(source.root, f"format {source.format!r} has no labels to evaluate against")
    data_names = None if dataset.label_space is None else list(dataset.label_space.names)
    if data_names != list(label_space.names):
        raise CheckpointError(
            checkpoint,
            f"model classes {list(label_space.names)} differ from the data's classes {data_names}",
        )
    paths = _instance_paths(dataset, source.format, label_space)
    instances: InstanceCounts | None = None
    observe = None
    if paths is not None:
        instances = InstanceCounts()
        observe = _observer(paths, source.format, instances)
    matrix = evaluate(model, dataset, label_space, mode, device, observe, **inference_options)
    result = {**matrix.to_dict(label_space.names), "n_images": len(dataset)}
    if is_cityscapes(label_space.names):
        result.update(_cityscapes_scores(matrix, instances))
    return result


def _instance_paths(
    dataset: SegmentationDataset, source_format: str, label_space: LabelSpace
) -> list[Path] | None:
    """Each image's instance map when the classes are Cityscapes' and every image has one."""
    if not is_cityscapes(label_space.names):
        return None
    found = [instance_map_path(source_format, label) for _, label in dataset.items]
    paths = [path for path in found if path is not None]
    return paths if len(paths) == len(found) else None


def _observer(
    paths: list[Path], source_format: str, counts: InstanceCounts
) -> Callable[[int, np.ndarray], None]:
    """Adds each prediction and its image's instance map to ``counts``."""

    def observe(index: int, prediction: np.ndarray) -> None:
        counts.update(prediction, read_instance_map(source_format, paths[index]))

    return observe


def _cityscapes_scores(matrix: ConfusionMatrix, instances: InstanceCounts | None) -> dict:
    def json_able(scores: dict[str, float]) -> dict[str, float | None]:
        return {k: None if np.isnan(v) else v for k, v in scores.items()}

    categories = category_iou(matrix)
    scores: dict[str, Any] = {
        "category_iou": json_able(categories),
        "category_miou": mean_defined(categories),
    }
    if instances is not None:
        classes, groups = instances.class_iiou(matrix), instances.category_iiou(matrix)
        scores.update(
            iiou_per_class=json_able(classes),
            iiou=mean_defined(classes),
            category_iiou=json_able(groups),
            category_iiou_mean=mean_defined(groups),
        )
    return scores
