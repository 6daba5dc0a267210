"""Region centroids of a label map, for centroid sampling (paper Sec. 3.2).

Each 8-connected region of one class is a candidate crop center; sampling a class first and then
one of its centroids lets rare classes appear in crops as often as common ones.
"""

from __future__ import annotations

import cv2
import numpy as np

from core.labels import IGNORE_INDEX

COLUMNS = ("class", "y", "x", "area")


def find_centroids(
    label: np.ndarray, min_area: int = 1, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """One row per 8-connected region of each class with at least ``min_area`` pixels.

    Args:
        label: ``(H, W)`` uint8 train ids.
        min_area: Smallest region (in pixels) to report.
        ignore_index: Value whose pixels form no region.

    Returns:
        float64 ``(N, 4)`` array with columns ``(class, y, x, area)``, where ``(y, x)`` is the
        mean pixel coordinate of the region, sorted by class, then y, then x. ``(0, 4)`` when
        there is none.
    """
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W) label map, got {label.dtype} {label.shape}")
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    rows = []
    for cls in present:
        if cls == ignore_index:
            continue
        mask = label == cls
        # Label only the class's bounding box: most classes cover a small part of the image.
        ys = np.flatnonzero(mask.any(axis=1))
        xs = np.flatnonzero(mask.any(axis=0))
        box = mask[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1].view(np.uint8)
        _, _, stats, centers = cv2.connectedComponentsWithStats(box, connectivity=8)
        # Component 0 is the background (pixels of other classes).
        areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
        keep = areas >= min_area
        n = int(keep.sum())
        if n:
            cx, cy = centers[1:][keep].T
            rows.append(
                np.column_stack([np.full(n, float(cls)), cy + ys[0], cx + xs[0], areas[keep]])
            )
    if not rows:
        return np.zeros((0, 4), dtype=np.float64)
    table = np.concatenate(rows)
    return table[np.lexsort((table[:, 2], table[:, 1], table[:, 0]))]
