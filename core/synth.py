"""Synthetic driving scenes with Cityscapes labels: the embedded data of the demo and the tests.

A scene is a street seen from a car: a pinhole camera at driver height looks down a road that runs
to a vanishing point, with sidewalks, facades, trees, poles, signs, traffic lights, vehicles, people
and riders placed in 3-D (meters: x to the right, y up, z ahead) and projected to the image. Things
are drawn far to near, so nearer things occlude farther ones, and every shape writes the picture
and the label map together.

The scenes are meant to be hard enough that a small model trained on a few of them stays clearly
imperfect: facades, vehicles, walls and sidewalks share colors, texture noise covers every surface,
sunlight casts shadows, and the rare classes (train, bus, truck, motorcycle, bicycle, rider) appear
in a minority of scenes and are small, while road, building, vegetation and sky take most pixels.

The two domains share the label semantics but not the look: ``source`` is a city by day (sun or
overcast); ``target`` is another city (brick and dark facades, other vehicle colors) at night, in
fog or in rain, so that a model trained on one meets a real domain shift on the other.

`write_synthetic_dataset` writes the Cityscapes layout, so every loader reads it as it reads
Cityscapes. docs/synth_source.png and docs/synth_target.png are `preview` pictures of scene 4 of
the source and scene 0 of the target domain written by ``write_synthetic_dataset(out, 5, domain)``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from core.labels import CITYSCAPES

DOMAINS = ("source", "target")

# Cityscapes regular label ids (as in cityscapesscripts.helpers.labels); CITYSCAPES maps them
# to train ids.
EGO_VEHICLE = 1
ROAD = 7
SIDEWALK = 8
BUILDING = 11
WALL = 12
FENCE = 13
POLE = 17
TRAFFIC_LIGHT = 19
TRAFFIC_SIGN = 20
VEGETATION = 21
TERRAIN = 22
SKY = 23
PERSON = 24
RIDER = 25
CAR = 26
TRUCK = 27
BUS = 28
TRAIN = 31
MOTORCYCLE = 32
BICYCLE = 33

Color = tuple[float, float, float]

# Depth marker of road, sidewalk and terrain pixels: their distance follows from the image row.
_GROUND = -1.0
# Smallest image the layout still makes sense for.
_MIN_SIZE = 32
# Things farther than this are not drawn (a few pixels at most).
_FARTHEST = 160.0


@dataclass(frozen=True)
class _Palette:
    """Surface colors of one domain (RGB, before light and weather)."""

    facades: tuple[Color, ...]
    vehicles: tuple[Color, ...]
    buses: tuple[Color, ...]
    trains: tuple[Color, ...]
    roads: tuple[Color, ...]
    sidewalks: tuple[Color, ...]
    terrains: tuple[Color, ...]
    greens: tuple[Color, ...]
    walls: tuple[Color, ...]
    clothes: tuple[Color, ...]


# Vehicle, wall and facade colors overlap on purpose (grey cars, grey walls and grey facades; green
# cars next to trees) so that color alone does not decide the class.
_SOURCE_PALETTE = _Palette(
    facades=(
        (205, 190, 160),
        (170, 166, 160),
        (225, 220, 208),
        (215, 195, 140),
        (200, 152, 122),
        (150, 160, 172),
        (185, 175, 150),
        (122, 112, 102),
    ),
    vehicles=(
        (182, 184, 187),
        (228, 228, 226),
        (32, 32, 35),
        (112, 114, 118),
        (30, 45, 92),
        (160, 30, 30),
        (44, 74, 48),
        (190, 175, 140),
        (120, 150, 182),
    ),
    buses=((228, 196, 40), (196, 40, 40), (236, 236, 236)),
    trains=((198, 42, 40), (238, 200, 46), (226, 226, 226)),
    roads=((112, 112, 114), (98, 99, 102), (126, 125, 122)),
    sidewalks=((168, 160, 158), (176, 146, 136), (150, 150, 152), (190, 184, 170)),
    terrains=((118, 140, 70), (150, 140, 92), (104, 128, 66)),
    greens=((62, 102, 42), (82, 122, 46), (46, 82, 36), (102, 132, 62)),
    walls=((175, 170, 160), (150, 146, 140), (196, 182, 150), (126, 116, 108)),
    clothes=(
        (30, 30, 34),
        (60, 70, 110),
        (150, 40, 40),
        (210, 210, 205),
        (110, 90, 70),
        (70, 110, 80),
        (180, 150, 60),
        (120, 120, 125),
    ),
)

_TARGET_PALETTE = _Palette(
    facades=(
        (150, 76, 56),
        (112, 62, 52),
        (86, 86, 96),
        (72, 120, 122),
        (210, 200, 172),
        (142, 140, 136),
        (182, 132, 62),
    ),
    vehicles=(
        (222, 182, 32),
        (232, 232, 232),
        (26, 26, 30),
        (112, 22, 32),
        (40, 72, 152),
        (212, 112, 32),
        (62, 112, 62),
        (96, 98, 104),
    ),
    buses=((42, 92, 172), (62, 142, 82), (232, 232, 232)),
    trains=((42, 62, 142), (62, 142, 92), (230, 230, 230)),
    roads=((80, 80, 86), (70, 72, 78), (92, 90, 92)),
    sidewalks=((122, 122, 126), (140, 124, 116), (104, 106, 110)),
    terrains=((90, 110, 70), (110, 100, 78)),
    greens=((40, 82, 52), (30, 62, 42), (62, 92, 52)),
    walls=((132, 130, 126), (150, 90, 70), (96, 96, 100)),
    clothes=((24, 24, 28), (40, 50, 80), (120, 30, 40), (190, 190, 190), (90, 70, 50)),
)

_PAINT = (235.0, 235.0, 228.0)
_TIRE = (26.0, 26.0, 28.0)
_POLES = ((150, 150, 150), (90, 96, 90), (60, 62, 66), (175, 172, 165))

# Standard deviation of the per-pixel texture noise of each label id (gray levels): asphalt, leaves
# and grass are rougher than sky and paint.
_NOISE = np.full(256, 6.0, dtype=np.float32)
_NOISE[[ROAD, SIDEWALK]] = 9.0
_NOISE[[VEGETATION, TERRAIN]] = 16.0
_NOISE[[WALL, BUILDING]] = 7.0
_NOISE[SKY] = 2.0


@dataclass(frozen=True)
class _Look:
    """Weather, light and ground colors of one scene."""

    domain: str
    weather: str  # "sun" or "overcast" (source); "night", "fog" or "rain" (target)
    palette: _Palette
    sky_top: Color
    sky_bottom: Color
    road: Color
    sidewalk: Color
    terrain: Color
    fog_color: Color
    fog_distance: float  # meters at which 63% of a color is fog
    lights_on: bool  # vehicle lights and street lamps shine
    lit_windows: float  # share of windows with the light on


@dataclass(frozen=True)
class _Camera:
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
        if not 0.3 < z < _FARTHEST:
            return False
        u, margin = self.cx + self.f * x / z, reach * self.f / z
        return -margin < u < self.cols + margin


@dataclass(frozen=True)
class _Street:
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
        return self.road_left if side < 0 else self.road_right

    def walk_edge(self, side: int) -> float:
        return self.walk_left if side < 0 else self.walk_right

    def facade(self, side: int) -> float:
        return self.facade_left if side < 0 else self.facade_right


class _Canvas:
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
        pts = _fixed_point(polys)
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
        pts = _fixed_point(lines)
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


def _fixed_point(polys: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    # OpenCV draws with sub-pixel precision from fixed-point coordinates (shift=4: 1/16 pixel);
    # far-away points are clipped so that the integers stay small.
    if isinstance(polys, np.ndarray):
        return list(_to_fixed(polys))
    return [_to_fixed(p) for p in polys]


def _to_fixed(pixels: np.ndarray) -> np.ndarray:
    return np.rint(np.minimum(np.maximum(pixels, -1e5), 1e5) * 16).astype(np.int32)


@dataclass
class _Scene:
    """Everything the drawing functions share."""

    rng: np.random.Generator
    look: _Look
    cam: _Camera
    street: _Street
    canvas: _Canvas
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
        """Fill a flat shape given as (a, y) meters standing at (x, z); see `_shape`."""
        self.paint(_shape(points, x, z, along_z), color, label, z, lit)

    def ball(self, x: float, y: float, z: float, r: float, color: Color, label: int | None) -> None:
        """A disc of radius r meters facing the camera, centered at (x, y, z)."""
        center = self.cam.project(np.array([x, y, z]))
        self.canvas.disc(center, r * self.cam.scale(z), color, label, z)

    def color(self, choices: tuple[Color, ...], jitter: float = 12.0) -> Color:
        """One of `choices`, a little brighter or darker and a little off in hue."""
        base = np.asarray(choices[int(self.rng.integers(len(choices)))], dtype=np.float64)
        light = 1.0 + self.rng.normal(0.0, jitter / 100)
        return _clip_color(base * light + self.rng.normal(0.0, jitter / 3, 3))


def _clip_color(color: np.ndarray) -> Color:
    r, g, b = (min(255.0, max(0.0, float(c))) for c in color)
    return (r, g, b)


def _scaled(color: Color, factor: float) -> Color:
    return _clip_color(np.asarray(color) * factor)


def _mix(a: Color, b: Color, t: float) -> Color:
    return _clip_color(np.asarray(a) * (1 - t) + np.asarray(b) * t)


# --------------------------------------------------------------------------------------------------
# Public API


def generate_scene(
    rng: np.random.Generator, size: tuple[int, int] = (256, 512), domain: str = "source"
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one random street scene.

    Args:
        rng: Source of all randomness; the same generator state gives the same scene.
        size: (height, width) in pixels.
        domain: ``"source"`` (a city by day) or ``"target"`` (another city at night, in fog or
            in rain).

    Returns:
        The picture, (H, W, 3) uint8 RGB, and its label map, (H, W) uint8 Cityscapes regular ids
        (7 road, 8 sidewalk, 11 building, ..., 33 bicycle; 1 for the hood of the car carrying the
        camera, "ego vehicle", which Cityscapes ignores in training).

    Raises:
        ValueError: Unknown domain, or a size that is not two integers >= 32.
    """
    _check_domain(domain)
    rows, cols = check_size(size)
    look = _random_look(rng, domain)
    cam = _Camera(
        f=cols * rng.uniform(0.8, 1.05),
        cx=cols * rng.uniform(0.4, 0.6),
        horizon=rows * rng.uniform(0.36, 0.48),
        height=rng.uniform(1.25, 1.7),
        rows=rows,
        cols=cols,
    )
    scene = _Scene(rng, look, cam, _random_street(rng), _Canvas(rows, cols))
    if look.weather == "sun":
        scene.sun = (rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.2), rng.uniform(-0.6, 0.6))
    _draw_sky(scene)
    _draw_ground(scene)
    _draw_skyline(scene)
    for side in (-1, 1):
        _draw_side(scene, side)
    _plan_traffic(scene)
    _plan_sidewalks(scene)
    if rng.random() < 0.6:
        _plan_crossing(scene)
    for _, draw in sorted(scene.things, key=lambda thing: -thing[0]):
        draw()
    if rng.random() < 0.5:
        _draw_hood(scene)
    return _finish(scene), scene.canvas.label


def write_synthetic_dataset(
    out: str | Path,
    n: int,
    domain: str = "source",
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    split: str = "train",
) -> list[Path]:
    """Write `n` scenes in the Cityscapes layout.

    Files: ``out/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` and, under
    ``out/gtFine/<split>/<city>/``, ``<stem>_gtFine_labelIds.png`` (regular ids) and
    ``<stem>_gtFine_labelTrainIds.png`` (train ids, 255 = ignore). The city is ``synth_<domain>``,
    the stem ``<city>_<i:06d>_000019``. Scene i depends only on (seed, domain, split, i): 16 scenes
    begin with the 8 of a run with n=8, and the train and val splits of one seed differ.

    Args:
        out: Dataset root.
        n: Number of scenes, at least 1.
        domain: ``"source"`` or ``"target"``.
        size: (height, width) in pixels.
        seed: Non-negative seed.
        split: Split folder name, e.g. ``"train"`` or ``"val"``.

    Returns:
        The image paths, in scene order.

    Raises:
        ValueError: A bad n, domain, size or seed.
        OSError: A file cannot be written.
    """
    if n < 1:
        raise ValueError(f"number of scenes must be at least 1, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    _check_domain(domain)
    check_size(size)
    city = f"synth_{domain}"
    image_dir = Path(out) / "leftImg8bit" / split / city
    label_dir = Path(out) / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    # crc32, unlike hash(), is the same in every process, so the files are reproducible.
    stream = [seed, DOMAINS.index(domain), zlib.crc32(split.encode())]
    paths = []
    for i in range(n):
        rgb, label = generate_scene(np.random.default_rng([*stream, i]), size, domain)
        stem = f"{city}_{i:06d}_000019"
        image_path = image_dir / f"{stem}_leftImg8bit.png"
        _write_png(image_path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        _write_png(label_dir / f"{stem}_gtFine_labelIds.png", label)
        _write_png(label_dir / f"{stem}_gtFine_labelTrainIds.png", CITYSCAPES.to_train_ids(label))
        paths.append(image_path)
    return paths


def preview(rgb: np.ndarray, label_ids: np.ndarray) -> np.ndarray:
    """The picture and its colorized label side by side, (H, 2W, 3) uint8 RGB."""
    colors = CITYSCAPES.colorize(CITYSCAPES.to_train_ids(label_ids))
    return np.concatenate([rgb, colors], axis=1)


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of: {', '.join(DOMAINS)}")


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """Check a scene size and return it as plain ints.

    Args:
        size: (height, width) in pixels.

    Returns:
        (height, width) as Python ints.

    Raises:
        ValueError: `size` is not two integers, or one of them is below 32.
    """
    if len(size) != 2 or not all(isinstance(s, int | np.integer) for s in size):
        raise ValueError(f"size must be (height, width) integers, got {size!r}")
    rows, cols = int(size[0]), int(size[1])
    if rows < _MIN_SIZE or cols < _MIN_SIZE:
        raise ValueError(f"size {rows}x{cols}: height and width must be at least {_MIN_SIZE}")
    return rows, cols


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


# --------------------------------------------------------------------------------------------------
# Layout


def _random_look(rng: np.random.Generator, domain: str) -> _Look:
    if domain == "source":
        palette = _SOURCE_PALETTE
        weather = "sun" if rng.random() < 0.6 else "overcast"
    else:
        palette = _TARGET_PALETTE
        weather = str(rng.choice(["night", "fog", "rain"], p=[0.4, 0.3, 0.3]))
    grey = rng.uniform(0, 1)
    if weather == "sun":
        top = (rng.uniform(55, 105), rng.uniform(115, 155), rng.uniform(190, 235))
        sky, fog = (top, (185, 210, 240)), ((195, 208, 225), rng.uniform(250, 600))
    elif weather == "overcast":
        g = 150 + 40 * grey
        sky, fog = ((g, g + 4, g + 10), (g + 35, g + 37, g + 40)), ((200, 202, 206), 300.0)
    elif weather == "night":
        sky, fog = ((8, 12, 30), (70, 52, 58)), ((30, 32, 45), rng.uniform(120, 300))
    elif weather == "fog":
        g = 140 + 45 * grey
        haze = (g, g + 3, g + 8)
        sky, fog = (haze, haze), (haze, rng.uniform(18, 55))
    else:  # rain
        g = 70 + 35 * grey
        sky = ((g - 20, g - 16, g - 8), (g + 20, g + 22, g + 28))
        fog = ((g, g + 3, g + 10), rng.uniform(50, 120))

    def pick(colors: tuple[Color, ...]) -> Color:
        base = np.asarray(colors[int(rng.integers(len(colors)))])
        return _clip_color(base * rng.uniform(0.9, 1.1) + rng.normal(0.0, 3.0, 3))

    return _Look(
        domain=domain,
        weather=weather,
        palette=palette,
        sky_top=_clip_color(np.asarray(sky[0])),
        sky_bottom=_clip_color(np.asarray(sky[1])),
        road=pick(palette.roads),
        sidewalk=pick(palette.sidewalks),
        terrain=pick(palette.terrains),
        fog_color=_clip_color(np.asarray(fog[0])),
        fog_distance=float(fog[1]),
        lights_on=domain == "target",
        lit_windows=rng.uniform(0.2, 0.5) if weather == "night" else 0.0,
    )


def _random_street(rng: np.random.Generator) -> _Street:
    lane = rng.uniform(2.8, 3.6)
    n_same = 1 if rng.random() < 0.7 else 2
    n_oncoming = int(rng.choice([0, 1, 2], p=[0.15, 0.6, 0.25]))
    ego = int(rng.integers(n_same))  # the lane the camera drives in, counted from the left
    same = [(k - ego) * lane for k in range(n_same)]
    oncoming = [same[0] - (k + 1) * lane for k in range(n_oncoming)]
    centers = sorted(same + oncoming)
    road_left = centers[0] - lane / 2 - (2.3 if rng.random() < 0.5 else 0.0)  # parking lanes
    road_right = centers[-1] + lane / 2 + (2.3 if rng.random() < 0.6 else 0.0)
    middles = [(a + b) / 2 for a, b in zip(centers, centers[1:], strict=False)]
    walk_left = road_left - rng.uniform(1.8, 5.0)
    walk_right = road_right + rng.uniform(1.8, 5.0)
    # Sometimes a lawn lies between the sidewalk and the houses.
    lawn_left = rng.uniform(1.0, 4.0) if rng.random() < 0.4 else 0.0
    lawn_right = rng.uniform(1.0, 4.0) if rng.random() < 0.4 else 0.0
    return _Street(
        road_left=road_left,
        road_right=road_right,
        walk_left=walk_left,
        walk_right=walk_right,
        facade_left=walk_left - lawn_left,
        facade_right=walk_right + lawn_right,
        lanes=tuple((c, c < same[0]) for c in centers),
        dividers=tuple((m, m < same[0]) for m in middles),
        far=rng.uniform(90, 220),
    )


# --------------------------------------------------------------------------------------------------
# Geometry


def _rects(axis: str, at: object, a0: object, a1: object, b0: object, b1: object) -> np.ndarray:
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


def _shape(points: np.ndarray | list, x: float, z: float, along_z: bool = False) -> np.ndarray:
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


def _circle(ca: float, cy: float, r: float, n: int = 16) -> np.ndarray:
    """n points (a, y) on a circle."""
    unit = _UNIT_CIRCLES[n]
    return np.stack([ca + r * unit.real, cy + r * unit.imag], axis=-1)


def _on_ground(x: float, z: float, outline: np.ndarray) -> np.ndarray:
    """World points of a shape given as (dx, dz) meters lying on the road around (x, z)."""
    out = np.zeros(outline.shape[:-1] + (3,))
    out[..., 0] = x + outline[..., 0]
    out[..., 2] = np.maximum(z + outline[..., 1], 0.3)
    return out


def _box(
    scene: _Scene,
    x: tuple[float, float],
    y: tuple[float, float],
    z: tuple[float, float],
    color: Color,
    label: int,
) -> float | None:
    """Draw the faces of a box that the camera sees; return the x of the visible side, if any."""
    side = None
    if y[1] < scene.cam.height:
        scene.paint(_rects("y", y[1], x[0], x[1], z[0], z[1]), _scaled(color, 1.08), label, z[0])
    if x[1] < 0:
        side = x[1]
    elif x[0] > 0:
        side = x[0]
    if side is not None:
        scene.paint(_rects("x", side, y[0], y[1], z[0], z[1]), _scaled(color, 0.82), label, z[0])
    scene.paint(_rects("z", z[0], x[0], x[1], y[0], y[1]), color, label, z[0])
    return side


# --------------------------------------------------------------------------------------------------
# Sky, ground and houses


def _draw_sky(scene: _Scene) -> None:
    canvas, cam, look = scene.canvas, scene.cam, scene.look
    rows = int(cam.horizon) + 2  # the ground covers the rest
    t = (np.arange(rows, dtype=np.float32) / np.float32(max(cam.horizon, 1.0))).clip(0, 1) ** 1.5
    t = t[:, None, None]
    top, bottom = np.asarray(look.sky_top, np.float32), np.asarray(look.sky_bottom, np.float32)
    image = np.broadcast_to(top * (1 - t) + bottom * t, (rows, cam.cols, 3))
    if look.weather in ("sun", "overcast"):
        clouds = _smooth_noise(scene.rng, rows, cam.cols, cell=max(8, cam.cols // 10))
        cover = np.clip(clouds * 0.6 + scene.rng.uniform(-0.4, 0.3), 0, 1)[..., None]
        image = image * (1 - cover) + np.float32(235) * cover
    canvas.rgb[:rows] = np.clip(image, 0, 255)
    canvas.label[:] = SKY


def _draw_ground(scene: _Scene) -> None:
    """Lawn everywhere below the horizon, then sidewalks, curbs and the road with its marks."""
    cam, st, look = scene.cam, scene.street, scene.look
    near, far = cam.z_bottom * 0.6, 2000.0
    below = np.array(
        [[0, cam.horizon], [cam.cols, cam.horizon], [cam.cols, cam.rows], [0, cam.rows]]
    )
    scene.canvas.fill([below], look.terrain, TERRAIN, _GROUND)
    walks = _rects("y", 0, [st.walk_left, st.road_right], [st.road_left, st.walk_right], near, far)
    scene.paint(walks, look.sidewalk, SIDEWALK, _GROUND)
    _draw_paving(scene, near)
    scene.paint(_rects("y", 0, st.road_left, st.road_right, near, far), look.road, ROAD, _GROUND)
    curbs = _rects(
        "y",
        0,
        [st.road_left - 0.25, st.road_right],
        [st.road_left, st.road_right + 0.25],
        near,
        far,
    )
    scene.paint(curbs, _scaled(look.sidewalk, 1.15), SIDEWALK, _GROUND)
    _draw_road_texture(scene, near)
    _draw_lane_marks(scene, near)


def _draw_paving(scene: _Scene, near: float) -> None:
    """Joints between the slabs of both sidewalks."""
    st = scene.street
    z = np.arange(near, 40.0, scene.rng.uniform(1.0, 2.0))
    joints = []
    for outer, inner in ((st.walk_left, st.road_left), (st.road_right, st.walk_right)):
        ends = np.zeros((len(z), 2, 3))
        ends[:, 0, 0], ends[:, 1, 0], ends[:, :, 2] = outer, inner, z[:, None]
        joints.append(scene.cam.project(ends))
    scene.canvas.stroke(np.concatenate(joints), 1, _scaled(scene.look.sidewalk, 0.8))


def _draw_road_texture(scene: _Scene, near: float) -> None:
    """Patches, sealed cracks and manholes: texture that is still road."""
    st, rng, road = scene.street, scene.rng, scene.look.road
    for _ in range(int(rng.integers(3, 10))):
        x, z = rng.uniform(st.road_left, st.road_right - 1), rng.uniform(near, 60)
        patch = _rects("y", 0, x, x + rng.uniform(0.8, 4), z, z + rng.uniform(1, 10))
        scene.paint(patch, _scaled(road, rng.uniform(0.75, 1.2)))
    cracks = []
    for _ in range(int(rng.integers(0, 6))):
        crack = np.zeros((8, 3))
        crack[:, 0] = rng.uniform(st.road_left, st.road_right) + np.cumsum(rng.normal(0, 0.4, 8))
        crack[:, 2] = rng.uniform(near, 40) + np.cumsum(rng.uniform(0.3, 1.5, 8))
        cracks.append(scene.cam.project(crack))
    scene.canvas.stroke(cracks, 1, _scaled(road, 0.55))
    for _ in range(int(rng.integers(0, 3))):
        x, z = rng.uniform(st.road_left + 1, st.road_right - 1), rng.uniform(near, 30)
        scene.paint(_on_ground(x, z, _circle(0, 0, 0.35)), _scaled(road, 0.6))


def _draw_lane_marks(scene: _Scene, near: float) -> None:
    st, rng = scene.street, scene.rng
    dash, gap = rng.uniform(2.5, 4), rng.uniform(5, 9)
    starts = np.arange(near - rng.uniform(0, dash + gap), 150, dash + gap)
    marks = []
    for x, solid in st.dividers:
        if solid:  # the double line between the two directions
            marks += [
                _rects("y", 0, x + dx - 0.06, x + dx + 0.06, near, 300) for dx in (-0.12, 0.12)
            ]
        else:
            marks.append(_rects("y", 0, x - 0.07, x + 0.07, starts, starts + dash))
    if rng.random() < 0.5:
        marks += [
            _rects("y", 0, x - 0.07, x + 0.07, near, 300)
            for x in (st.road_left + 0.3, st.road_right - 0.3)
        ]
    if marks:
        scene.paint(np.concatenate(marks), _scaled(_PAINT, rng.uniform(0.7, 1.0)))


def _draw_skyline(scene: _Scene) -> None:
    """Distant houses and trees that close the street at the horizon."""
    cam, rng, look = scene.cam, scene.rng, scene.look
    z = scene.street.far + rng.uniform(20, 80)
    half = z * (cam.cx + cam.cols) / cam.f
    x = -half
    while x < half:
        width, height = rng.uniform(8, 40), rng.uniform(4, 28)
        if rng.random() < 0.25:
            green = _mix(scene.color(look.palette.greens), look.sky_bottom, 0.3)
            scene.flat(_circle(width / 2, height * 0.6, width * 0.5), x, z, green, VEGETATION)
        else:
            color = _mix(scene.color(look.palette.facades), look.sky_bottom, 0.35)
            scene.paint(_rects("z", z, x, x + width, 0, height), color, BUILDING, z)
        x += width * rng.uniform(0.6, 1.1)


def _draw_side(scene: _Scene, side: int) -> None:
    """One side of the street: houses with gaps, then hedges, walls and fences in front."""
    rng, st = scene.rng, scene.street
    blocks = []
    z = rng.uniform(-12, 0)
    open_side = rng.random() < 0.1
    while z < st.far:
        gap = open_side or (z > 4 and rng.random() < 0.22)
        length = rng.uniform(4, 20) if gap else rng.uniform(8, 32)
        blocks.append((z, z + length, None if gap else rng.uniform(7, 28)))
        z += length
    for z0, z1, height in reversed(blocks):
        if z1 < 1.0:  # behind the camera
            continue
        if height is None:
            _draw_gap(scene, side, max(z0, 0.5), z1)
        else:
            setback = rng.uniform(0, 1.5) if rng.random() < 0.3 else 0.0
            _draw_house(scene, st.facade(side) + side * setback, max(z0, 0.5), z1, height, side)
    _draw_front_line(scene, side)


def _draw_house(scene: _Scene, x: float, z0: float, z1: float, height: float, side: int) -> None:
    rng = scene.rng
    color = scene.color(scene.look.palette.facades, 14)
    glassy = rng.random() < 0.1  # an office block, windows almost everywhere
    if glassy:
        color = _mix(color, (90, 110, 130), 0.6)
    sunlit = 1.0 if scene.sun is None or side * scene.sun[0] <= 0 else 0.78
    front = _rects("z", z0, x, x + side * 25, 0, height)
    scene.paint(front, _scaled(color, 0.86 * sunlit), BUILDING, z0)
    facade = _rects("x", x, 0, height, z0, z1)
    scene.paint(facade, _scaled(color, sunlit), BUILDING, (z0 + z1) / 2)
    _draw_windows(scene, x, z0, z1, height, color, glassy)
    if scene.sun is not None and scene.sun[0] * side < 0:
        # The shadow on the street: a parallelogram from the foot of the facade.
        dx = min(abs(scene.sun[0]) * height, abs(scene.street.facade(-side) - x))
        dz = scene.sun[1] * height
        foot = [[x, 0, z0], [x, 0, z1], [x - side * dx, 0, z1 + dz], [x - side * dx, 0, z0 + dz]]
        _shade(scene, np.array(foot))


def _shade(scene: _Scene, world: np.ndarray) -> None:
    pts = _fixed_point([scene.cam.project(world)])
    cv2.fillPoly(scene.canvas.shadow, pts, 255, cv2.LINE_AA, 4)


def _draw_windows(
    scene: _Scene, x: float, z0: float, z1: float, height: float, color: Color, glassy: bool
) -> None:
    rng, look = scene.rng, scene.look
    floor = rng.uniform(2.9, 3.6)
    spacing = rng.uniform(1.6, 2.2) if glassy else rng.uniform(2.2, 3.8)
    width = spacing * (rng.uniform(0.7, 0.9) if glassy else rng.uniform(0.35, 0.6))
    tall = floor * (rng.uniform(0.6, 0.8) if glassy else rng.uniform(0.4, 0.6))
    ys = np.arange(3.6, height - tall - 0.5, floor)
    zs = np.arange(z0 + rng.uniform(0.5, 1.5), min(z1, _FARTHEST) - width - 0.3, spacing)
    if len(ys) and len(zs):
        y, z = (a.ravel() for a in np.meshgrid(ys, zs))
        windows = _rects("x", x, y, y + tall, z, z + width)
        glass = _mix((60, 72, 90), look.sky_bottom, rng.uniform(0.0, 0.5))
        kind = rng.random(len(windows))
        scene.paint(windows[kind < 0.6], glass)
        scene.paint(windows[kind >= 0.6], _scaled(glass, rng.uniform(0.6, 1.4)))
        if look.lit_windows:
            on = rng.random(len(windows)) < look.lit_windows
            lamp = _scaled((255, 214, 150), rng.uniform(0.7, 1.0))
            scene.paint(windows[on], lamp, lit=True)
        scene.paint(_rects("x", x, ys - 0.45, ys - 0.25, z0, z1), _scaled(color, 0.8))  # ledges
    if rng.random() < 0.6:  # shop windows on the ground floor
        zs = np.arange(z0 + 0.6, min(z1, _FARTHEST) - 2.5, rng.uniform(3, 5))
        shops = _rects("x", x, 0.3, 2.7, zs, zs + rng.uniform(1.8, 2.6))
        dark = _mix((40, 45, 50), look.sky_bottom, 0.25)
        scene.paint(shops, dark, lit=look.weather == "night")
    scene.paint(_rects("x", x, height - 0.7, height, z0, z1), _scaled(color, 0.7))  # roof edge


def _draw_gap(scene: _Scene, side: int, z0: float, z1: float) -> None:
    """A gap between houses: a small park behind a wall or a fence, or nothing."""
    rng = scene.rng
    x = scene.street.facade(side)
    for _ in range(int(rng.integers(0, 4))):
        _draw_tree(scene, x + side * rng.uniform(2, 12), rng.uniform(z0, z1 + 1), big=True)
    kind = rng.random()
    if kind < 0.3:
        _draw_wall(scene, x, z0, z1, rng.uniform(1.0, 2.5))
    elif kind < 0.6:
        _draw_fence(scene, x, z0, z1, rng.uniform(1.0, 2.2))


def _draw_front_line(scene: _Scene, side: int) -> None:
    """Hedges, walls and fences between sidewalk and houses, or a railing along the curb."""
    rng, st = scene.rng, scene.street
    near = scene.cam.z_bottom * 0.5
    if rng.random() < 0.3:
        x = st.walk_edge(side) + side * 0.1
        z0 = rng.uniform(near, 40)
        z1 = z0 + rng.uniform(8, 60)
        choice = rng.random()
        if choice < 0.4:
            _draw_hedge(scene, x, z0, z1, rng.uniform(0.7, 1.6))
        elif choice < 0.7:
            _draw_wall(scene, x, z0, z1, rng.uniform(0.6, 2.0))
        else:
            _draw_fence(scene, x, z0, z1, rng.uniform(0.9, 1.8))
    if rng.random() < 0.15:
        z0 = rng.uniform(near, 20)
        x = st.road_edge(side) + side * 0.3
        _draw_fence(scene, x, z0, z0 + rng.uniform(5, 30), rng.uniform(0.8, 1.1), railing=True)


def _draw_wall(scene: _Scene, x: float, z0: float, z1: float, height: float) -> None:
    rng = scene.rng
    color = scene.color(scene.look.palette.walls, 14)
    inner = x - np.sign(x) * 0.3
    scene.paint(_rects("y", height, x, inner, z0, z1), _scaled(color, 1.1), WALL, z0)
    scene.paint(_rects("z", z0, x, inner, 0, height), _scaled(color, 0.9), WALL, z0)
    scene.paint(_rects("x", x, 0, height, z0, z1), color, WALL, (z0 + z1) / 2)
    if rng.random() < 0.5:  # joints between concrete slabs
        zs = np.arange(z0, z1, rng.uniform(1.5, 4))
        scene.paint(_rects("x", x, 0, height, zs, zs + 0.08), _scaled(color, 0.75))
    scene.paint(_rects("x", x, height - 0.15, height, z0, z1), _scaled(color, 1.15))


def _draw_fence(
    scene: _Scene, x: float, z0: float, z1: float, height: float, railing: bool = False
) -> None:
    """A fence: its label covers the whole outline, the picture shows posts, rails and mesh."""
    canvas, rng = scene.canvas, scene.rng
    color = scene.color(((90, 92, 96), (60, 80, 60), (150, 150, 150), (120, 90, 60)), 10)
    # Label only: the fence is see-through, what is behind stays in the picture.
    outline = _fixed_point(scene.cam.project(_rects("x", x, 0, height, z0, z1)))
    cv2.fillPoly(canvas.label, outline, FENCE, cv2.LINE_8, 4)
    cv2.fillPoly(canvas.depth, outline, z0, cv2.LINE_8, 4)
    cv2.fillPoly(canvas.lit, outline, 0, cv2.LINE_8, 4)
    bars = railing or rng.random() < 0.5
    zs = np.arange(z0, min(z1, _FARTHEST), 0.15 if bars else 0.4)
    lines = np.zeros((len(zs), 2, 3))
    lines[:, :, 0], lines[:, 1, 1] = x, height
    lines[:, 0, 2] = zs
    lines[:, 1, 2] = zs if bars else zs + height  # upright bars or diagonal wire mesh
    canvas.stroke(scene.cam.project(lines), 1, color)
    posts = np.arange(z0, min(z1, _FARTHEST), 2.5)
    scene.paint(_rects("x", x, 0, height, posts, posts + 0.1), _scaled(color, 0.8))
    scene.paint(
        _rects("x", x, [height * 0.1, height - 0.06], [height * 0.1 + 0.06, height], z0, z1), color
    )


def _draw_hedge(scene: _Scene, x: float, z0: float, z1: float, height: float) -> None:
    rng = scene.rng
    green = scene.color(scene.look.palette.greens)
    outline = np.zeros((42, 3))
    outline[:, 0] = x
    outline[:40, 1] = height + rng.normal(0, 0.12, 40)
    outline[:40, 2] = np.linspace(z0, z1, 40)
    outline[40:, 2] = z1, z0
    scene.paint(outline, green, VEGETATION, (z0 + z1) / 2)
    for _ in range(12):  # clumps of leaves in lighter and darker green
        blob = _circle(0, rng.uniform(0.2, height), rng.uniform(0.2, 0.5), 12)
        scene.flat(
            blob, x, rng.uniform(z0, z1), _scaled(green, rng.uniform(0.7, 1.3)), along_z=True
        )


def _draw_tree(scene: _Scene, x: float, z: float, big: bool = False) -> None:
    rng = scene.rng
    grow = 1.5 if big else 1.0
    trunk_height = rng.uniform(2.0, 3.5) * grow
    radius = rng.uniform(1.5, 3.2) * grow
    trunk = rng.uniform(0.12, 0.2) * grow
    top = trunk_height + radius
    bark = _clip_color(np.array([92, 78, 64]) * rng.uniform(0.6, 1.3))
    stem = [[-trunk, 0], [trunk, 0], [trunk * 0.7, top], [-trunk * 0.7, top]]
    scene.flat(stem, x, z, bark, VEGETATION)
    green = scene.color(scene.look.palette.greens, 14)
    center = trunk_height + radius * 0.8
    for _ in range(int(rng.integers(7, 13))):  # the crown: overlapping clumps of leaves
        a, y = rng.normal(0, radius * 0.4), center + rng.normal(0, radius * 0.3)
        light = (1.0 + 0.25 * (y - center) / radius) * rng.uniform(0.8, 1.15)
        scene.ball(x + a, y, z, radius * rng.uniform(0.35, 0.65), _scaled(green, light), VEGETATION)
    if scene.sun is not None:
        offset = np.array(scene.sun) * center
        _shade(scene, _on_ground(x + offset[0], z + offset[1], _circle(0, 0, radius * 0.9, 12)))


# --------------------------------------------------------------------------------------------------
# Street things: vehicles, people, poles, signs and trees, queued by distance


def _plan_traffic(scene: _Scene) -> None:
    rng, st = scene.rng, scene.street
    near = scene.cam.z_bottom * 0.7
    # Rare vehicles join the queues of random lanes; most scenes have none or one.
    special: list[list[str]] = [[] for _ in st.lanes]
    for kind, p in (("truck", 0.22), ("bus", 0.2), ("train", 0.16), ("motorcycle", 0.2)):
        if rng.random() < p:
            special[int(rng.integers(len(st.lanes)))].append(kind)
    for lane, (x, oncoming) in enumerate(st.lanes):
        kinds = ["car"] * int(rng.poisson(1.2)) + special[lane]
        rng.shuffle(kinds)
        z = near + rng.exponential(8) + (0 if oncoming or abs(x) > 1 else 5)
        for kind in kinds:
            length = _place_vehicle(scene, kind, x + rng.normal(0, 0.25), z, oncoming)
            z += length + rng.uniform(2, 6) + rng.exponential(12)
    for side in (-1, 1):  # parked cars, where there is a parking lane
        edge = st.road_edge(side)
        lanes_edge = min(abs(c - edge) for c, _ in st.lanes)
        if lanes_edge > 2.5 and rng.random() < 0.6:
            z = near + rng.uniform(-2, 4)
            while z < 70:
                if rng.random() < 0.45:
                    kind = "truck" if rng.random() < 0.02 else "car"
                    z += _place_vehicle(scene, kind, edge - side * 1.15, z, False)
                z += rng.uniform(0.8, 3.0)


def _place_vehicle(scene: _Scene, kind: str, x: float, z: float, oncoming: bool) -> float:
    """Queue one vehicle whose near end is at z; return its length."""
    rng = scene.rng
    if kind == "car":
        length = rng.uniform(3.8, 4.9)
        scene.add(_draw_car, x, z, length, oncoming)
    elif kind == "truck":
        length = rng.uniform(6, 10)
        scene.add(_draw_truck, x, z, length, oncoming)
    elif kind in ("bus", "train"):
        length = rng.uniform(11, 13) if kind == "bus" else rng.uniform(20, 32)
        scene.add(_draw_bus, x, z, length, oncoming, BUS if kind == "bus" else TRAIN)
    else:
        length = 2.0
        scene.add(_draw_two_wheeler, x, z, MOTORCYCLE, "back")
    return length


def _plan_sidewalks(scene: _Scene) -> None:
    rng, st, cam = scene.rng, scene.street, scene.cam
    near = cam.z_bottom * 0.7

    def anywhere() -> float:  # log-uniform distances: near and far things are both common
        return float(near * np.exp(rng.uniform(0, np.log(70 / near))))

    def add(draw: Callable[..., None], x: float, z: float, *args: object) -> None:
        if cam.sees(x, z, reach=4.0):
            scene.add(draw, x, z, *args)

    for side in (-1, 1):
        curb, walk = st.road_edge(side), st.walk_edge(side)
        if rng.random() < 0.6:  # street trees
            for z in np.arange(near + rng.uniform(0, 10), st.far, rng.uniform(7, 16)):
                add(_draw_tree, walk - side * rng.uniform(0.6, 1.2), float(z))
        if rng.random() < 0.75:  # street lamps
            for z in np.arange(near + rng.uniform(0, 20), 120, rng.uniform(22, 38)):
                add(_draw_lamp, curb + side * 0.5, float(z), side)
        for _ in range(int(rng.poisson(1.5))):
            add(_draw_sign, curb + side * rng.uniform(0.3, 0.8), anywhere())
        for _ in range(int(rng.poisson(3.0))):
            add(_draw_person, curb + (walk - curb) * rng.random(), anywhere())
        if rng.random() < 0.3:  # parked bicycles
            z = anywhere()
            view = "along" if rng.random() < 0.5 else "across"
            for k in range(int(rng.integers(1, 4))):
                add(_draw_two_wheeler, walk - side * 0.6, z + k * 0.7, BICYCLE, view, False)
        if rng.random() < 0.08:  # a parked motorcycle
            add(_draw_two_wheeler, curb + side * 0.8, anywhere(), MOTORCYCLE, "along", False)
    if rng.random() < 0.4:  # a cyclist riding along the right edge
        add(_draw_two_wheeler, st.road_right - 0.8, anywhere(), BICYCLE, "back")


def _plan_crossing(scene: _Scene) -> None:
    """A crossing with zebra stripes, traffic lights and people (or a cyclist) on it."""
    rng, st = scene.rng, scene.street
    z = rng.uniform(10, 45)
    if rng.random() < 0.7:
        xs = np.arange(st.road_left + 0.3, st.road_right - 0.5, 1.0)
        stripes = _rects("y", 0, xs, xs + 0.5, z, z + 3.5)
        scene.paint(stripes, _scaled(_PAINT, rng.uniform(0.7, 1.0)))
    for side in (-1, 1):
        if rng.random() < 0.8:
            overhead = rng.random() < 0.3
            scene.add(_draw_traffic_light, st.road_edge(side) + side * 0.5, z + 4, side, overhead)
    for _ in range(int(rng.integers(0, 4))):
        scene.add(_draw_person, rng.uniform(st.road_left, st.road_right), z + rng.uniform(0.5, 3))
    if rng.random() < 0.25:
        x = rng.uniform(st.road_left, st.road_right)
        scene.add(_draw_two_wheeler, x, z + rng.uniform(0.5, 3), BICYCLE, "across")


# Vehicles -----------------------------------------------------------------------------------------


def _draw_car(scene: _Scene, x: float, z: float, length: float, oncoming: bool) -> None:
    rng, look = scene.rng, scene.look
    half = rng.uniform(0.82, 0.97)
    van = rng.random() < 0.2
    color = scene.color(look.palette.vehicles, 10)
    top = rng.uniform(1.7, 2.0) if van else rng.uniform(1.35, 1.55)
    belt = rng.uniform(0.85, 1.0)
    _contact_shadow(scene, x, half, z, length)
    side = _box(scene, (x - half, x + half), (0.25, belt), (z, z + length), color, CAR)
    cab = (z + 0.4, z + length - 0.3) if van else (z + length * 0.25, z + length * 0.72)
    if oncoming:  # the hood comes first
        cab = (z + length - cab[1] + z, z + length - cab[0] + z)
    cab_side = _box(scene, (x - half + 0.12, x + half - 0.12), (belt, top), cab, color, CAR)
    glass = _mix((38, 44, 52), look.sky_bottom, rng.uniform(0.0, 0.4))
    scene.paint(
        _rects("z", cab[0], x - half + 0.22, x + half - 0.22, belt + 0.05, top - 0.07), glass
    )
    if cab_side is not None:
        mid = (cab[0] + cab[1]) / 2
        panes = _rects(
            "x",
            cab_side,
            belt + 0.05,
            top - 0.07,
            [cab[0] + 0.15, mid + 0.08],
            [mid - 0.08, cab[1] - 0.15],
        )
        scene.paint(panes, glass)
    _draw_wheels(scene, side, x, half, z, length, 0.32, CAR)
    _draw_vehicle_lights(scene, x, half, z, 0.6 if oncoming else 0.72, oncoming)
    scene.paint(_rects("z", z, x - 0.26, x + 0.26, 0.38, 0.5), (225, 225, 220))  # number plate


def _draw_truck(scene: _Scene, x: float, z: float, length: float, oncoming: bool) -> None:
    rng = scene.rng
    half = rng.uniform(1.15, 1.27)
    cab_color = scene.color(scene.look.palette.vehicles, 10)
    cargo_color = scene.color(((232, 232, 232), (180, 180, 184), (140, 40, 30), (50, 80, 130)), 10)
    cab_length = 2.2
    _contact_shadow(scene, x, half, z, length)
    cab = (z, z + cab_length) if oncoming else (z + length - cab_length, z + length)
    cargo = (z + cab_length, z + length) if oncoming else (z, z + length - cab_length)
    parts = [(cargo, (0.9, rng.uniform(3.2, 3.9)), cargo_color), (cab, (0.55, 3.0), cab_color)]
    if not oncoming:
        parts.reverse()
    side = None
    for zz, yy, color in parts:  # the far part first
        side = _box(scene, (x - half, x + half), yy, zz, color, TRUCK)
    if oncoming:
        scene.paint(_rects("z", z, x - half + 0.15, x + half - 0.15, 1.8, 2.8), (40, 46, 54))
    else:  # the chassis under the cargo box and the underrun guard
        scene.paint(_rects("z", z + 0.3, x - half + 0.4, x + half - 0.4, 0.3, 0.9), _TIRE, TRUCK, z)
        scene.paint(
            _rects("z", z, x - half + 0.1, x + half - 0.1, 0.4, 0.52), (60, 60, 64), TRUCK, z
        )
    _draw_wheels(scene, side, x, half, z, length, 0.5, TRUCK, tire_height=0.85)
    _draw_vehicle_lights(scene, x, half, z, 0.75, oncoming)


def _draw_bus(scene: _Scene, x: float, z: float, length: float, oncoming: bool, label: int) -> None:
    """A bus or, with label TRAIN, a tram: a long box with a band of windows."""
    rng, look = scene.rng, scene.look
    tram = label == TRAIN
    half, top = (1.2, 3.4) if tram else (1.25, 3.1)
    color = scene.color(look.palette.trains if tram else look.palette.buses, 8)
    _contact_shadow(scene, x, half, z, length)
    if tram:  # rails in the road
        rails = [x - 0.76, x - 0.68, x + 0.68, x + 0.76]
        near = scene.cam.z_bottom * 0.6
        scene.paint(_rects("y", 0, rails[::2], rails[1::2], near, 300), _scaled(look.road, 1.4))
    side = _box(scene, (x - half, x + half), (0.3, top), (z, z + length), color, label)
    glass = _mix((34, 40, 48), look.sky_bottom, rng.uniform(0.0, 0.3))
    lit = look.lights_on and rng.random() < 0.5
    scene.paint(_rects("z", z, x - half + 0.12, x + half - 0.12, 1.1, top - 0.35), glass, lit=lit)
    if side is not None:
        zs = np.arange(z + 0.6, z + length - 1.2, rng.uniform(1.4, 2.2))
        scene.paint(_rects("x", side, 1.2, top - 0.45, zs, zs + 1.1), glass, lit=lit)
    if tram:
        scene.paint(_rects("z", z, x - half, x + half, 0.3, 0.6), _scaled(color, 0.5))
    else:
        sign = _rects("z", z, x - half + 0.3, x + half - 0.3, top - 0.3, top - 0.08)
        scene.paint(sign, (250, 170, 40), lit=look.lights_on)  # destination display
        _draw_wheels(scene, side, x, half, z, length, 0.5, label)
    _draw_vehicle_lights(scene, x, half, z, 0.7, oncoming)


def _contact_shadow(scene: _Scene, x: float, half: float, z: float, length: float) -> None:
    shadow = _rects("y", 0, x - half - 0.1, x + half + 0.1, z - 0.1, z + length + 0.1)
    scene.paint(shadow, _scaled(scene.look.road, 0.35))


def _draw_wheels(
    scene: _Scene,
    side: float | None,
    x: float,
    half: float,
    z: float,
    length: float,
    r: float,
    label: int,
    tire_height: float = 0.3,
) -> None:
    for x0 in (x - half + 0.05, x + half - 0.3):  # the two seen below the near end
        scene.paint(_rects("z", z + 0.01, x0, x0 + 0.25, 0, tire_height), _TIRE, label, z)
    if side is None:
        return
    for zc in (z + r + 0.45, z + length - r - 0.5):
        scene.flat(_circle(0, r, r), side, zc, _TIRE, label, along_z=True)
        scene.flat(_circle(0, r, r * 0.55), side, zc, (120, 120, 124), along_z=True)


def _draw_vehicle_lights(
    scene: _Scene, x: float, half: float, z: float, y: float, front: bool
) -> None:
    on = scene.look.lights_on
    if front:
        color = (255, 246, 220) if on else (200, 200, 196)
    else:
        color = (220, 30, 24) if on else (160, 24, 20)
    lamps = _rects(
        "z", z, [x - half + 0.08, x + half - 0.38], [x - half + 0.38, x + half - 0.08], y, y + 0.15
    )
    scene.paint(lamps, color, lit=on)
    if on and front:  # the beams on the road ahead of an oncoming vehicle
        beam = np.array([[-half, 0], [half, 0], [1.5, -12], [-1.5, -12]])
        pts = _fixed_point([scene.cam.project(_on_ground(x, z, beam))])
        cv2.fillPoly(scene.canvas.glow, pts, 160, cv2.LINE_AA, 4)


# People and two-wheelers --------------------------------------------------------------------------


def _draw_person(scene: _Scene, x: float, z: float) -> None:
    rng = scene.rng
    k = rng.uniform(0.85, 1.1) if rng.random() > 0.1 else rng.uniform(0.6, 0.8)  # or a child
    clothes = scene.look.palette.clothes
    top, legs = scene.color(clothes, 18), scene.color(clothes, 18)
    sleeves = _scaled(top, 0.85)
    skin = _skin(rng)
    s = rng.uniform(-0.14, 0.14)  # stride
    hem = 0.45 if rng.random() < 0.3 else 0.85  # coats reach the knees
    parts = [
        ([[-0.15, 0.9], [-0.02, 0.9], [-0.05 - s, 0], [-0.17 - s, 0]], legs),
        ([[0.02, 0.9], [0.15, 0.9], [0.17 + s, 0], [0.05 + s, 0]], legs),
        ([[-0.21, 1.45], [0.21, 1.45], [0.19, hem], [-0.19, hem]], top),
        ([[-0.27, 1.42], [-0.19, 1.42], [-0.2 + s, 0.82], [-0.28 + s, 0.82]], sleeves),
        ([[0.19, 1.42], [0.27, 1.42], [0.28 - s, 0.82], [0.2 - s, 0.82]], sleeves),
        ([[-0.05, 1.45], [0.05, 1.45], [0.05, 1.52], [-0.05, 1.52]], skin),
    ]
    if rng.random() < 0.2:
        parts.append(([[0.25, 1.0], [0.45, 1.0], [0.45, 0.7], [0.25, 0.7]], scene.color(clothes)))
    for shape, color in parts:
        scene.flat(np.asarray(shape) * k, x, z, color, PERSON)
    _draw_head(scene, x, 1.63 * k, z, 0.115 * k, skin, PERSON, helmet=None)


def _skin(rng: np.random.Generator) -> Color:
    return _scaled((222, 180, 150), rng.uniform(0.45, 1.0))


def _draw_head(
    scene: _Scene,
    x: float,
    y: float,
    z: float,
    r: float,
    skin: Color,
    label: int,
    helmet: Color | None,
) -> None:
    """A head: hair or a helmet on top, the face (or the back of the head) below."""
    hair = helmet or _scaled((60, 45, 35), scene.rng.uniform(0.3, 2.0))
    scene.ball(x, y + r * 0.15, z, r * (1.1 if helmet else 1.0), hair, label)
    if scene.rng.random() < 0.6:
        scene.ball(x, y - r * 0.15, z, r * 0.85, skin, label)


def _draw_two_wheeler(
    scene: _Scene, x: float, z: float, label: int, view: str, ridden: bool = True
) -> None:
    """A bicycle or a motorcycle, with or without a rider.

    `view` is ``"back"`` (riding ahead of the camera), ``"across"`` (side view: crossing the road,
    or parked across the sidewalk) or ``"along"`` (side view: parked along the curb).
    """
    if view == "back":
        _draw_two_wheeler_back(scene, x, z, label, ridden)
        return
    cam, moto = scene.cam, label == MOTORCYCLE
    r = 0.32 if moto else 0.34
    bike_colors = ((30, 30, 30), (150, 30, 30), (40, 60, 120), (200, 200, 200))
    frame = scene.color(scene.look.palette.vehicles if moto else bike_colors, 10)

    def place(points: np.ndarray | list) -> np.ndarray:
        return cam.project(_shape(points, x, z, along_z=view == "along"))

    s = cam.scale(z)
    for ca in (-0.55, 0.55):
        wheel = _circle(ca, r, r)
        if moto:
            scene.canvas.fill([place(wheel)], _TIRE, label, z)
            scene.canvas.fill([place(_circle(ca, r, r * 0.5, 12))], (110, 110, 112))
        else:
            scene.canvas.stroke([place(np.vstack([wheel, wheel[:1]]))], 0.06 * s, _TIRE, label, z)
    if moto:
        body = [
            [-0.55, 0.45], [-0.75, 0.8], [-0.15, 0.85], [0.25, 0.98],
            [0.5, 0.95], [0.55, 0.55], [0.2, 0.32], [-0.3, 0.35],
        ]  # fmt: skip
        scene.canvas.fill([place(body)], frame, label, z)
    else:
        tubes = [
            [[-0.55, r], [-0.15, 0.85], [0.0, 0.3], [-0.55, r]],
            [[-0.15, 0.85], [0.42, 0.88], [0.55, r]],
            [[0.0, 0.3], [0.42, 0.88], [0.45, 1.0], [0.35, 1.02]],
        ]
        scene.canvas.stroke([place(t) for t in tubes], 0.05 * s, frame, label, z)
    if ridden:
        _draw_rider_side(scene, place, moto, z)


def _draw_two_wheeler_back(scene: _Scene, x: float, z: float, label: int, ridden: bool) -> None:
    """Seen from behind: the rear wheel, the rider's back and the handlebar."""
    moto = label == MOTORCYCLE
    w, h = (0.09, 0.6) if moto else (0.05, 0.68)
    scene.flat([[-w, 0], [w, 0], [w, h], [-w, h]], x, z, _TIRE, label)
    if moto:
        color = scene.color(scene.look.palette.vehicles, 10)
        scene.flat(
            [[-0.25, 0.45], [0.25, 0.45], [0.2, 0.95], [-0.2, 0.95]], x, z + 0.3, color, label
        )
        lamp = (220, 30, 24) if scene.look.lights_on else (160, 24, 20)
        scene.flat(
            [[-0.08, 0.7], [0.08, 0.7], [0.08, 0.8], [-0.08, 0.8]],
            x,
            z,
            lamp,
            lit=scene.look.lights_on,
        )
    scene.flat(
        [[-0.32, 1.0], [0.32, 1.0], [0.32, 1.05], [-0.32, 1.05]], x, z + 0.8, (40, 40, 40), label
    )
    if ridden:
        _draw_rider_back(scene, x, z + 0.3, moto)


def _draw_rider_side(
    scene: _Scene, place: Callable[[list], np.ndarray], moto: bool, z: float
) -> None:
    clothes = scene.look.palette.clothes
    jacket, trousers = scene.color(clothes, 18), scene.color(clothes, 18)
    seat = 0.95 if moto else 0.9
    parts = [
        ([[-0.3, seat], [-0.05, seat], [0.1, 0.35], [-0.05, 0.3]], trousers),
        ([[-0.35, seat], [-0.05, seat], [0.05, seat + 0.6], [-0.22, seat + 0.62]], jacket),
        (
            [[-0.05, seat + 0.55], [0.05, seat + 0.5], [0.42, 1.0], [0.35, 0.95]],
            _scaled(jacket, 0.85),
        ),
    ]
    helmet = scene.color(scene.look.palette.vehicles) if moto else _skin(scene.rng)
    parts.append((_circle(-0.05, seat + 0.78, 0.13 if moto else 0.115, 12), helmet))
    for shape, color in parts:
        scene.canvas.fill([place(shape)], color, RIDER, z)


def _draw_rider_back(scene: _Scene, x: float, z: float, moto: bool) -> None:
    rng, clothes = scene.rng, scene.look.palette.clothes
    jacket, trousers = scene.color(clothes, 18), scene.color(clothes, 18)
    seat = 0.95 if moto else 0.9
    lift = rng.uniform(0, 0.3)  # one foot up on its pedal
    sleeves = _scaled(jacket, 0.85)
    parts = [
        ([[-0.18, seat], [-0.05, seat], [-0.08, 0.3 + lift], [-0.16, 0.3 + lift]], trousers),
        ([[0.05, seat], [0.18, seat], [0.16, 0.6 - lift], [0.08, 0.6 - lift]], trousers),
        ([[-0.22, seat + 0.55], [0.22, seat + 0.55], [0.18, seat], [-0.18, seat]], jacket),
        ([[-0.3, seat + 0.5], [-0.22, seat + 0.55], [-0.28, 1.02], [-0.34, 1.02]], sleeves),
        ([[0.22, seat + 0.55], [0.3, seat + 0.5], [0.34, 1.02], [0.28, 1.02]], sleeves),
    ]
    for shape, color in parts:
        scene.flat(shape, x, z, color, RIDER)
    helmet = scene.color(scene.look.palette.vehicles) if moto or rng.random() < 0.5 else None
    _draw_head(scene, x, seat + 0.72, z, 0.12, _skin(rng), RIDER, helmet)


# Poles, lamps, signs and traffic lights -----------------------------------------------------------


def _draw_pole(scene: _Scene, x: float, z: float, height: float, r: float, color: Color) -> None:
    scene.flat([[-r, 0], [r, 0], [r * 0.8, height], [-r * 0.8, height]], x, z, color, POLE)


def _draw_lamp(scene: _Scene, x: float, z: float, side: int) -> None:
    rng = scene.rng
    h = rng.uniform(6, 9)
    color = scene.color(_POLES, 10)
    _draw_pole(scene, x, z, h, 0.09, color)
    reach = -side * rng.uniform(0.8, 2.2)
    scene.flat(
        [[0, h - 0.1], [reach, h + 0.2], [reach, h + 0.08], [0, h - 0.22]], x, z, color, POLE
    )
    on = scene.look.weather in ("night", "rain", "fog")
    head = [[reach - 0.3, h + 0.22], [reach + 0.3, h + 0.22], [reach + 0.25, h], [reach - 0.25, h]]
    scene.flat(head, x, z, (255, 236, 190) if on else _scaled(color, 0.7), POLE, lit=on)
    if on:  # the pool of light on the ground below
        pool = _on_ground(x + reach, z, _circle(0, 0, h * 0.45))
        cv2.fillPoly(
            scene.canvas.glow, _fixed_point([scene.cam.project(pool)]), 110, cv2.LINE_AA, 4
        )


def _draw_sign(scene: _Scene, x: float, z: float) -> None:
    rng = scene.rng
    h = rng.uniform(2.2, 3.2)
    _draw_pole(scene, x, z, h, 0.04, scene.color(_POLES, 10))
    size = rng.uniform(0.3, 0.45)
    y = h + size * 0.8
    kind = int(rng.integers(4))
    outline = [
        _circle(0, y, size),
        np.array([[-size, y - size * 0.6], [size, y - size * 0.6], [0, y + size]]),
        np.array([[-size, y - size], [size, y - size], [size, y + size], [-size, y + size]]),
        _circle(0, y, size, 8),  # an octagon
    ][kind]
    if rng.random() < 0.3:  # seen from behind: a grey plate, still a sign
        scene.flat(outline, x, z, scene.color(_POLES, 10), TRAFFIC_SIGN)
        return
    rim = [(200, 30, 30), (200, 30, 30), (30, 70, 160), (200, 30, 30)][kind]
    scene.flat(outline, x, z, rim, TRAFFIC_SIGN)
    face = (240, 240, 235) if kind < 2 else _scaled(rim, 1.1)
    scene.flat((outline - [0, y]) * 0.72 + [0, y], x, z, face)
    if kind == 2:  # an arrow or a word, roughly
        glyph = np.array([[-0.3, -0.1], [0.3, -0.1], [0.3, 0.1], [-0.3, 0.1]]) * size + [0, y]
        scene.flat(glyph, x, z, (240, 240, 235))


def _draw_traffic_light(scene: _Scene, x: float, z: float, side: int, overhead: bool) -> None:
    rng = scene.rng
    color = scene.color(_POLES, 10)
    h = rng.uniform(2.6, 3.6)
    _draw_pole(scene, x, z, 5.8 if overhead else h, 0.07, color)
    if overhead:  # hanging from an arm over the road
        reach = -side * rng.uniform(2.5, 5)
        scene.flat([[0, 5.6], [reach, 5.6], [reach, 5.72], [0, 5.72]], x, z, color, POLE)
        x, h = x + reach, 4.6
    housing = scene.color(((30, 30, 32), (40, 44, 40), (170, 150, 50)), 8)
    scene.flat([[-0.2, h], [0.2, h], [0.2, h + 1.0], [-0.2, h + 1.0]], x, z, housing, TRAFFIC_LIGHT)
    if rng.random() < 0.3:  # seen from behind: only the housing
        return
    on = int(rng.integers(3))
    for k, lamp in enumerate(((255, 40, 30), (255, 180, 0), (40, 255, 130))):
        center = scene.cam.project(np.array([x, h + 0.82 - k * 0.32, z]))
        color = lamp if k == on else _scaled(lamp, 0.25)
        scene.canvas.disc(center, 0.12 * scene.cam.scale(z), color, lit=k == on)


# --------------------------------------------------------------------------------------------------
# The car carrying the camera; light, weather and noise


def _draw_hood(scene: _Scene) -> None:
    rng, rows, cols = scene.rng, scene.cam.rows, scene.cam.cols
    top = rows * rng.uniform(0.88, 0.95)
    xs = np.linspace(-0.05 * cols, 1.05 * cols, 24)
    curve = top + (rows - top) * 0.8 * ((xs - cols / 2) / (0.55 * cols)) ** 2
    edge = np.stack([xs, curve], -1)
    outline = np.concatenate([edge, [[1.05 * cols, rows + 2], [-0.05 * cols, rows + 2]]])
    paint = scene.color(scene.look.palette.vehicles, 6)
    scene.canvas.fill([outline], _scaled(paint, 0.6), EGO_VEHICLE, 1.0)
    shine = edge[6:18] + [0, (rows - top) * 0.35]  # the sky mirrored in the paint
    scene.canvas.stroke([shine], max(1.0, rows * 0.006), _mix(paint, scene.look.sky_bottom, 0.5))


def _smooth_noise(rng: np.random.Generator, rows: int, cols: int, cell: int) -> np.ndarray:
    """Noise of about unit size that varies over `cell` pixels, (rows, cols) float32."""
    coarse = rng.standard_normal((rows // cell + 2, cols // cell + 2), dtype=np.float32)
    return cv2.resize(coarse, (cols, rows), interpolation=cv2.INTER_CUBIC) * np.float32(0.6)


def _finish(scene: _Scene) -> np.ndarray:
    """Light, weather, texture noise and the camera's response, applied to the drawn colors."""
    canvas, look, rng, cam = scene.canvas, scene.look, scene.rng, scene.cam
    sky = canvas.label == SKY
    # Uneven light and dirt over large areas, and fine grain whose strength depends on the surface.
    light = 1.0 + 0.12 * _smooth_noise(rng, cam.rows, cam.cols, max(8, cam.cols // 16))
    grain = rng.standard_normal((cam.rows, cam.cols), dtype=np.float32) * _NOISE[canvas.label]
    image = canvas.rgb * light[..., None] + grain[..., None]
    if scene.sun is not None:
        shadow = cv2.blur(canvas.shadow, (3, 3)).astype(np.float32) / 255.0
        shadow[sky | (canvas.label == BUILDING)] = 0
        image *= (1.0 - rng.uniform(0.35, 0.5) * shadow)[..., None]
    if look.weather == "night":
        image = _night(scene, image, sky)
    elif look.lights_on:
        image = _bloom(canvas, image, 0.5)
    depth = _pixel_depth(canvas.depth, cam)
    haze = (1.0 - np.exp(-depth / np.float32(look.fog_distance)))[..., None]
    image = image * (1 - haze) + np.asarray(look.fog_color, np.float32) * haze
    if look.weather == "rain":
        image = _rain(rng, image)
    return _camera_response(rng, image, look)


def _pixel_depth(depth: np.ndarray, cam: _Camera) -> np.ndarray:
    """Distance of every pixel; that of road, sidewalk and terrain follows from the row."""
    rows = np.arange(cam.rows, dtype=np.float32)
    ground = (cam.f * cam.height / np.maximum(rows - cam.horizon, 0.5)).astype(np.float32)
    return np.where(depth == _GROUND, ground[:, None], depth)


def _bloom(canvas: _Canvas, image: np.ndarray, strength: float) -> np.ndarray:
    """Halos around lamps and headlights, blurred at a quarter of the size for speed."""
    rows, cols = canvas.label.shape
    lights = image * (canvas.lit[..., None] * np.float32(1 / 255))
    small = cv2.resize(lights, (max(1, cols // 4), max(1, rows // 4)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 2.5)
    return image + 2.0 * strength * cv2.resize(small, (cols, rows), interpolation=cv2.INTER_LINEAR)


def _night(scene: _Scene, image: np.ndarray, sky: np.ndarray) -> np.ndarray:
    canvas, rng = scene.canvas, scene.rng
    ambient = rng.uniform(0.2, 0.35) * np.array([0.8, 0.9, 1.2], np.float32)
    lit = canvas.lit[..., None] * np.float32(1 / 255)
    glow = cv2.GaussianBlur(canvas.glow, (0, 0), 3)[..., None] * np.float32(0.9 / 255)
    gain = ambient + glow * np.array([1.0, 0.85, 0.6], np.float32)  # warm lamp light
    gain[sky] = 1.0  # the night sky is drawn dark already
    image = image * (gain * (1 - lit) + lit)
    image = _bloom(canvas, image, 1.0)
    # A dark picture is a noisy picture.
    noise = rng.standard_normal(image.shape[:2], dtype=np.float32) * np.float32(rng.uniform(3, 7))
    return image + noise[..., None]


def _rain(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    rows, cols = image.shape[:2]
    n = int(rows * cols / rng.uniform(150, 400))
    start = rng.uniform([0, -20], [cols, rows], (n, 2))
    length = rng.uniform(6, 18, n) * rows / 256
    end = start + np.stack([length * rng.uniform(-0.3, 0.3), length], -1)
    streaks = np.zeros((rows, cols), np.uint8)
    cv2.polylines(streaks, _fixed_point(np.stack([start, end], 1)), False, 255, 1, cv2.LINE_AA, 4)
    alpha = streaks[..., None] * np.float32(rng.uniform(0.15, 0.35) / 255)
    image = image * (1 - alpha) + np.float32(200) * alpha
    return cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.0))  # water on the lens


def _camera_response(rng: np.random.Generator, image: np.ndarray, look: _Look) -> np.ndarray:
    """Exposure, white balance, saturation and contrast of the camera, then 8 bits.

    All four are linear in the colors, so they are applied together as one 3x4 color matrix.
    """
    source = look.domain == "source"
    tint = np.array([1.03, 1.0, 0.96] if source else [0.9, 0.95, 1.08])
    gain = tint * rng.uniform(0.95, 1.05, 3) * rng.uniform(0.85, 1.15)
    saturation = rng.uniform(0.8, 1.2) if source else rng.uniform(0.55, 0.9)
    contrast = rng.uniform(0.85, 1.15)
    # Saturation pulls each pixel toward its gray (x - gray) * s + gray; contrast pulls all
    # pixels toward the mean gray level of the picture.
    mix = saturation * np.eye(3) + (1 - saturation) / 3 * np.ones((3, 3))
    matrix = contrast * mix @ np.diag(gain)
    mean = float(np.dot(cv2.mean(image)[:3], gain)) / 3
    offset = np.full((3, 1), (1 - contrast) * mean)
    out = cv2.transform(image, np.hstack([matrix, offset]).astype(np.float32))
    return np.clip(out, 0, 255).astype(np.uint8)
