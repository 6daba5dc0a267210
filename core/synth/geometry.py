"""World shapes (meters) that the drawing functions project and fill: rectangles, circles, outlines.

World coordinates: x to the right, y up, z ahead of the camera.
"""

from __future__ import annotations

import numpy as np


def rects(axis: str, at: object, a0: object, a1: object, b0: object, b1: object) -> np.ndarray:
    """World rectangles (N, 4, 3) on the plane ``axis = at``.

    (a, b) are the two other axes in x, y, z order: (y, z) on a plane of constant x, (x, z) on
    constant y, (x, y) on constant z. Every bound is a number or an array of N.
    """
    n = np.broadcast(*(np.asarray(v) for v in (at, a0, a1, b0, b1))).size
    ia, ib, ic = {"x": (1, 2, 0), "y": (0, 2, 1), "z": (0, 1, 2)}[axis]
    out = np.empty((n, 4, 3))
    out[:, :, ic] = np.reshape(at, (-1, 1))
    for corner, (a, b) in enumerate(((a0, b0), (a1, b0), (a1, b1), (a0, b1))):
        out[:, corner, ia] = a
        out[:, corner, ib] = b
    return out


def standing(points: np.ndarray | list, x: float, z: float, along_z: bool = False) -> np.ndarray:
    """World points (..., 3) of a flat shape given as (a, y) meters, standing at (x, z).

    The shape faces the camera (a along x) or stands sideways along the road (a along z).
    """
    p = np.asarray(points, dtype=np.float64)
    out = np.empty(p.shape[:-1] + (3,))
    out[..., 1] = p[..., 1]
    if along_z:
        out[..., 0] = x
        out[..., 2] = z + p[..., 0]
    else:
        out[..., 0] = x + p[..., 0]
        out[..., 2] = z
    return out


_UNIT_CIRCLES = {n: np.exp(2j * np.pi * np.arange(n) / n) for n in (8, 12, 16)}


def circle(ca: float, cy: float, r: float, n: int = 16) -> np.ndarray:
    """n points (a, y) on a circle."""
    unit = _UNIT_CIRCLES[n]
    return np.stack([ca + r * unit.real, cy + r * unit.imag], axis=-1)


def on_ground(x: float, z: float, outline: np.ndarray) -> np.ndarray:
    """World points of a shape given as (dx, dz) meters lying on the road around (x, z)."""
    out = np.zeros(outline.shape[:-1] + (3,))
    out[..., 0] = x + outline[..., 0]
    out[..., 2] = np.maximum(z + outline[..., 1], 0.3)
    return out
