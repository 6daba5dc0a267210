"""The state that every drawing function shares: the scene's look, street, camera and canvas."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from core.synth.camera import Camera
from core.synth.canvas import Canvas
from core.synth.geometry import standing
from core.synth.palette import Color, Palette, clip_color


@dataclass(frozen=True)
class Look:
    """Weather, light and ground colors of one scene."""

    domain: str
    weather: str  # "sun" or "overcast" (source); "night", "fog" or "rain" (target)
    palette: Palette
    sky_top: Color  # at the top of the picture
    sky_bottom: Color  # at the horizon
    road: Color
    sidewalk: Color
    terrain: Color
    fog_color: Color
    fog_distance: float  # meters at which 63% of a color is fog
    lights_on: bool  # vehicle lights and street lamps shine
    lit_windows: float  # share of windows with the light on


@dataclass(frozen=True)
class Street:
    """The cross-section of the street (x in meters; the camera is at x = 0)."""

    road_left: float
    road_right: float
    walk_left: float  # outer edges of the sidewalks
    walk_right: float
    facade_left: float
    facade_right: float
    lanes: tuple[tuple[float, bool], ...]  # (center, oncoming)
    dividers: tuple[tuple[float, bool], ...]  # (x, solid)
    far: float  # where the houses end

    def road_edge(self, side: int) -> float:
        """x of the curb on the left (side < 0) or the right (side > 0)."""
        return self.road_left if side < 0 else self.road_right

    def walk_edge(self, side: int) -> float:
        """x of the outer edge of the left or the right sidewalk."""
        return self.walk_left if side < 0 else self.walk_right

    def facade(self, side: int) -> float:
        """x of the house fronts on the left or the right."""
        return self.facade_left if side < 0 else self.facade_right


@dataclass
class Scene:
    """Everything the drawing functions share."""

    rng: np.random.Generator
    look: Look
    cam: Camera
    street: Street
    canvas: Canvas
    sun: tuple[float, float] | None = None  # shadow offset (x, z) per meter of height
    things: list[tuple[float, Callable[[], None]]] = field(default_factory=list)

    def add(self, draw: Callable[..., None], x: float, z: float, *args: object) -> None:
        """Queue a street-level thing at (x, z); things are drawn far to near."""
        self.things.append((z, partial(draw, self, x, z, *args)))

    def paint(
        self,
        world: np.ndarray,
        color: Color,
        label: int | None = None,
        depth: float = 0.0,
        lit: bool = False,
    ) -> None:
        """Fill world polygons, (N, k, 3) or one (k, 3)."""
        pixels = self.cam.project(world)
        self.canvas.fill(pixels if pixels.ndim == 3 else [pixels], color, label, depth, lit)

    def flat(
        self,
        points: np.ndarray | list,
        x: float,
        z: float,
        color: Color,
        label: int | None = None,
        lit: bool = False,
        along_z: bool = False,
    ) -> None:
        """Fill a flat shape given as (a, y) meters standing at (x, z); see `standing`."""
        self.paint(standing(points, x, z, along_z), color, label, z, lit)

    def ball(self, x: float, y: float, z: float, r: float, color: Color, label: int | None) -> None:
        """A disc of radius r meters facing the camera, centered at (x, y, z)."""
        center = self.cam.project(np.array([x, y, z]))
        self.canvas.disc(center, r * self.cam.scale(z), color, label, z)

    def color(self, choices: tuple[Color, ...], jitter: float = 12.0) -> Color:
        """One of `choices`, a little brighter or darker and a little off in hue."""
        base = np.asarray(choices[int(self.rng.integers(len(choices)))], dtype=np.float64)
        light = 1.0 + self.rng.normal(0.0, jitter / 100)
        return clip_color(base * light + self.rng.normal(0.0, jitter / 3, 3))
