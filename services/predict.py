"""Prediction for the API: a cache of loaded models and the three answers (label PNG, overlay PNG,
per-class shares).

A model is loaded once per checkpoint file and kept while the file is unchanged (the cache key holds
its modification time, so a retrained checkpoint at the same path is loaded afresh).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.artifacts import encode_png, overlay

# Models kept in memory; a few checkpoints of small to mid-sized models.
CACHE_SIZE = 4


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint's model in eval mode, its label space, and its activations' bytes per input
    pixel (core.image_cost.activation_bytes_per_pixel)."""

    model: Any
    label_space: Any
    activation_bytes_per_pixel: float


class MemoryBudget:
    """Bytes that the predictions running at once share: each reserves its estimate first.

    Args:
        total: The bytes to share.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._room = threading.Condition()

    def acquire(self, n: int, timeout: float) -> bool:
        """Reserve ``n`` bytes, waiting up to ``timeout`` seconds for room; False if none came."""
        with self._room:
            if not self._room.wait_for(lambda: self.used + n <= self.total, timeout):
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._room:
            self.used -= n
            self._room.notify_all()


class ModelCache:
    """Loaded models keyed by (checkpoint path, modification time, device), least recently used
    dropped first."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._models: OrderedDict[tuple[str, int, str], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a checkpoint was read (tests check the cache works)

    def get(self, checkpoint: Path, device: str = "cpu") -> LoadedModel:
        """The model of ``checkpoint``, loaded once.

        Raises:
            CheckpointError: The file is not a usable checkpoint.
        """
        from core.checkpoint import load_model
        from core.image_cost import activation_bytes_per_pixel

        key = (str(checkpoint), checkpoint.stat().st_mtime_ns, device)
        # Loading under the lock: two requests for a new model must not load it twice.
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            model, label_space, _ = load_model(checkpoint, device=device)
            loaded = LoadedModel(model, label_space, activation_bytes_per_pixel(model))
            self.loads += 1
            self._models[key] = loaded
            while len(self._models) > self.size:
                self._models.popitem(last=False)
            return loaded


def predict_label(
    model, image: np.ndarray, input_size: tuple[int, int] | None = None, device: str = "cpu"
) -> np.ndarray:
    """The (H, W) uint8 train-id map of an RGB image, predicted on the image scaled to
    ``input_size`` (height, width; default: its own size) and scaled back (nearest)."""
    return predict_label_confidence(model, image, input_size, device)[0]


def predict_label_confidence(
    model, image: np.ndarray, input_size: tuple[int, int] | None = None, device: str = "cpu"
) -> tuple[np.ndarray, float]:
    """`predict_label`, and the mean of the winning class's probability over the model's input."""
    import cv2
    import torch

    from core.inference import predict

    height, width = image.shape[:2]
    if input_size is not None and input_size != (height, width):
        image = cv2.resize(image, input_size[::-1], interpolation=cv2.INTER_AREA)
    with torch.inference_mode():
        label, confidence = predict(model, image, mode="whole", device=device)
    if label.shape != (height, width):
        label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    return label, float(confidence.mean())


def label_png(label: np.ndarray) -> bytes:
    """The label map as a gray PNG: each pixel's value is its train id (255 = ignore)."""
    return encode_png(label)


def overlay_png(image: np.ndarray, label: np.ndarray, label_space) -> bytes:
    """The image with its predicted classes painted over it, as RGB PNG."""
    return encode_png(overlay(image, label, label_space.palette()))


def class_shares(label: np.ndarray, label_space) -> list[dict]:
    """Fraction of pixels of every class, in class order (ignored pixels count in the total)."""
    counts = np.bincount(label.ravel(), minlength=256)
    total = max(int(label.size), 1)
    return [
        {"id": i, "name": name, "share": float(counts[i]) / total}
        for i, name in enumerate(label_space.names)
    ]
