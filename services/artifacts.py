"""Reading what the jobs leave behind: training progress and label stores (run folders are read
with core.runfiles), and pictures of labels for the dashboard.

The service never imports the jobs; it learns how a stage is doing from these files alone.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from core.errors import SelfTrainError
from core.runfiles import MetricsRow

# Overlays on the dashboard are shrunk to this width; a page of full-size Cityscapes frames is slow.
OVERLAY_MAX_WIDTH = 640


def train_progress(metrics: list[MetricsRow], epochs: int) -> dict:
    """Progress of a training job from its epoch rows: epochs done out of ``epochs``."""
    done = min(max((row.epoch + 1 for row in metrics), default=0), epochs)
    return {"done": done, "total": epochs, "unit": "epochs", "fraction": done / epochs}


def store_summary(store: str) -> dict | None:
    """``core.store.store_info`` of a label store plus its class names and colors and when it was
    taken; None while the store does not exist or cannot be read yet (a label job is creating it).

    This reads the store's status column and per-shard totals (one small read each per shard of
    the store, about 8,000 at 10^6 images): call it now and then, not on every poll.
    """
    from core.store import LabelStore

    if not Path(store).is_dir():
        return None
    try:
        opened = LabelStore.open(store, read_only=True)
        info, space = opened.summary(), opened.label_space
    except (SelfTrainError, OSError, KeyError, ValueError):
        return None
    summary = _jsonable(info)
    summary["class_names"] = list(space.names)
    summary["class_colors"] = [list(c) for c in space.colors]
    summary["summarized_at"] = time.time()
    return summary


def evaluation_summary(report: str) -> dict | None:
    """An evaluation stage's report (core.evaluation_run) as its stage's summary; None while the
    report does not exist or cannot be read."""
    from core.evaluation_run import read_report

    try:
        return read_report(report).model_dump(mode="json")
    except SelfTrainError:
        return None


def store_progress(store: str) -> dict | None:
    """Progress of a label job from the record its driver keeps in the store (cheap to read):
    images labeled or failed out of all; None before the job published any."""
    from core.store import LabelStore

    if not Path(store).is_dir():
        return None
    try:
        record = LabelStore.open(store, read_only=True).progress
    except (SelfTrainError, OSError, KeyError, ValueError):
        return None
    if not record:
        return None
    total = int(record.get("total", 0))
    done = int(record.get("done", 0)) + int(record.get("failed", 0))
    return {
        "done": done,
        "total": total,
        "unit": "images",
        "fraction": done / total if total else 0.0,
        "images_per_s": float(record.get("images_per_s") or 0.0),
    }


def overlay(
    image: np.ndarray, label: np.ndarray, colors: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """``image`` with the classes of ``label`` painted over it; ignored pixels keep the image.
    Computed in uint8 (3 bytes per pixel per buffer: core.image_cost counts them).

    Args:
        image: (H, W, 3) uint8 RGB.
        label: (H, W) uint8 train ids (255 = ignore).
        colors: (256, 3) uint8 palette (``LabelSpace.palette()``).
        alpha: Weight of the class color.
    """
    import cv2

    painted = colors[label]
    blended = cv2.addWeighted(image, 1 - alpha, painted, alpha, 0.0)
    ignored = label == 255
    blended[ignored] = image[ignored]
    return blended


def heat_map(confidence: np.ndarray) -> np.ndarray:
    """An RGB picture of a uint8 confidence map: blue where the teacher is unsure, red: sure."""
    import cv2

    return cv2.cvtColor(cv2.applyColorMap(confidence, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def shrink(image: np.ndarray, max_width: int = OVERLAY_MAX_WIDTH) -> np.ndarray:
    """``image`` scaled down (nearest, so label colors stay exact) to at most ``max_width`` wide."""
    import cv2

    height, width = image.shape[:2]
    if width <= max_width:
        return image
    size = (max_width, max(1, round(height * max_width / width)))
    return cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) gray or (H, W, 3) RGB uint8 array."""
    import cv2

    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def _jsonable(value):
    """Turn numpy scalars/arrays inside dicts and lists into plain Python values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
