"""The pinhole camera that projects the street (meters) onto the picture (pixels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Things farther than this are not drawn (a few pixels at most).
FARTHEST = 160.0


@dataclass(frozen=True)
class Camera:
    """A pinhole camera `height` meters above the road, looking along +z."""

    f: float  # focal length in pixels
    cx: float  # column of the vanishing point
    horizon: float  # row of the vanishing point
    height: float
    rows: int
    cols: int

    @property
    def z_bottom(self) -> float:
        """Distance of the road seen in the bottom image row."""
        return self.f * self.height / (self.rows - self.horizon)

    def project(self, world: np.ndarray) -> np.ndarray:
        """Pixel (column, row) of world points (..., 3)."""
        z = np.maximum(world[..., 2], 0.2)
        pixels = np.empty(world.shape[:-1] + (2,))
        pixels[..., 0] = self.cx + self.f * world[..., 0] / z
        pixels[..., 1] = self.horizon + self.f * (self.height - world[..., 1]) / z
        return pixels

    def scale(self, z: float) -> float:
        """Pixels per meter at distance z."""
        return self.f / max(z, 0.2)

    def sees(self, x: float, z: float, reach: float) -> bool:
        """Whether something within `reach` meters of (x, z) can show in the picture."""
        if not 0.3 < z < FARTHEST:
            return False
        u, margin = self.cx + self.f * x / z, reach * self.f / z
        return -margin < u < self.cols + margin
