"""The picture being drawn, with its label map and the per-pixel buffers that light and weather use.

Every shape is drawn into the picture and the label map together, so they always agree.
"""

from __future__ import annotations

import cv2
import numpy as np

from core.synth.palette import Color

# Depth marker of road, sidewalk and terrain pixels: their distance follows from the image row.
GROUND = -1.0


class Canvas:
    """The picture, its labels, and what light and weather need to know about each pixel."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rgb = np.zeros((rows, cols, 3), dtype=np.uint8)
        self.label = np.zeros((rows, cols), dtype=np.uint8)
        self.depth = np.full((rows, cols), np.inf, dtype=np.float32)  # meters, for fog
        self.lit = np.zeros((rows, cols), dtype=np.uint8)  # 255 where a surface emits light
        self.shadow = np.zeros((rows, cols), dtype=np.uint8)  # 255 where the sun is blocked
        self.glow = np.zeros((rows, cols), dtype=np.uint8)  # lamp light falling on surfaces

    def fill(
        self,
        polys: np.ndarray | list[np.ndarray],
        color: Color,
        label: int | None = None,
        depth: float = 0.0,
        lit: bool = False,
    ) -> None:
        """Fill pixel polygons; with `label` None only the picture changes (marks, windows)."""
        pts = fixed_point(polys)
        if not pts:
            return
        cv2.fillPoly(self.rgb, pts, color, cv2.LINE_AA, 4)
        if label is not None:
            cv2.fillPoly(self.label, pts, label, cv2.LINE_8, 4)
            cv2.fillPoly(self.depth, pts, depth, cv2.LINE_8, 4)
        if label is not None or lit:
            cv2.fillPoly(self.lit, pts, 255 if lit else 0, cv2.LINE_8, 4)

    def stroke(
        self,
        lines: np.ndarray | list[np.ndarray],
        width: float,
        color: Color,
        label: int | None = None,
        depth: float = 0.0,
    ) -> None:
        """Draw open polylines `width` pixels wide (at least one)."""
        pts = fixed_point(lines)
        if not pts:
            return
        thickness = max(1, round(width))
        cv2.polylines(self.rgb, pts, False, color, thickness, cv2.LINE_AA, 4)
        if label is not None:
            cv2.polylines(self.label, pts, False, label, thickness, cv2.LINE_8, 4)
            cv2.polylines(self.depth, pts, False, depth, thickness, cv2.LINE_8, 4)
            cv2.polylines(self.lit, pts, False, 0, thickness, cv2.LINE_8, 4)

    def disc(
        self,
        center: np.ndarray,
        radius: float,
        color: Color,
        label: int | None = None,
        depth: float = 0.0,
        lit: bool = False,
    ) -> None:
        """Fill a circle given in pixels."""
        c = (round(float(center[0]) * 16), round(float(center[1]) * 16))
        if max(abs(c[0]), abs(c[1])) > 1_000_000:
            return
        r = max(0, round(radius * 16))
        cv2.circle(self.rgb, c, r, color, -1, cv2.LINE_AA, 4)
        if label is not None:
            cv2.circle(self.label, c, r, label, -1, cv2.LINE_8, 4)
            cv2.circle(self.depth, c, r, depth, -1, cv2.LINE_8, 4)
        if label is not None or lit:
            cv2.circle(self.lit, c, r, 255 if lit else 0, -1, cv2.LINE_8, 4)


def fixed_point(polys: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    """Pixel polygons or polylines as the int32 arrays that OpenCV draws with ``shift=4``."""
    # OpenCV draws with sub-pixel precision from fixed-point coordinates (shift=4: 1/16 pixel);
    # far-away points are clipped so that the integers stay small.
    if isinstance(polys, np.ndarray):
        return list(_to_fixed(polys))
    return [_to_fixed(p) for p in polys]


def _to_fixed(pixels: np.ndarray) -> np.ndarray:
    """Pixels (..., 2) clipped to +-1e5 and scaled to 1/16 pixel, int32."""
    return np.rint(np.minimum(np.maximum(pixels, -1e5), 1e5) * 16).astype(np.int32)
