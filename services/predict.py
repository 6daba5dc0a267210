"""Prediction for the API: a cache of loaded models and the three answers (label PNG, overlay PNG,
per-class shares).

A model is loaded once per checkpoint file and kept while the file is unchanged (the cache key holds
its modification time, so a retrained checkpoint at the same path is loaded afresh).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from services.artifacts import encode_png, overlay

# Models kept in memory; a few checkpoints of small to mid-sized models.
CACHE_SIZE = 4


class ModelCache:
    """Loaded models keyed by (checkpoint path, modification time, device), least recently used
    dropped first."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._models: OrderedDict[tuple[str, int, str], tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a checkpoint was read (tests check the cache works)

    def get(self, checkpoint: Path, device: str = "cpu") -> tuple[Any, Any]:
        """``(model in eval mode, LabelSpace)`` of ``checkpoint``.

        Raises:
            CheckpointError: The file is not a usable checkpoint.
        """
        from core.checkpoint import load_model

        key = (str(checkpoint), checkpoint.stat().st_mtime_ns, device)
        # Loading under the lock: two requests for a new model must not load it twice.
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            model, label_space, _ = load_model(checkpoint, device=device)
            self.loads += 1
            self._models[key] = (model, label_space)
            while len(self._models) > self.size:
                self._models.popitem(last=False)
            return model, label_space


def predict_label(model, image: np.ndarray, device: str = "cpu") -> np.ndarray:
    """The (H, W) uint8 train-id map of an RGB image."""
    import torch

    from core.inference import predict

    with torch.inference_mode():
        label, _ = predict(model, image, mode="whole", device=device)
    return label


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
