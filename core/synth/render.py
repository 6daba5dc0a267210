"""`generate_scene`: the order in which a scene is drawn, and the checks of its arguments."""

from __future__ import annotations

import numpy as np

from core.labels import CITYSCAPES
from core.synth.camera import Camera
from core.synth.canvas import Canvas
from core.synth.furniture import plan_crossing, plan_sidewalks
from core.synth.scene import Scene
from core.synth.street import draw_ground, draw_side, draw_skyline, random_street
from core.synth.traffic import draw_hood, plan_traffic
from core.synth.weather import draw_sky, finish, random_look

DOMAINS = ("source", "target")

# Smallest image the layout still makes sense for.
_MIN_SIZE = 32


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
    check_domain(domain)
    rows, cols = check_size(size)
    look = random_look(rng, domain)
    cam = Camera(
        f=cols * rng.uniform(0.8, 1.05),
        cx=cols * rng.uniform(0.4, 0.6),
        horizon=rows * rng.uniform(0.36, 0.48),
        height=rng.uniform(1.25, 1.7),
        rows=rows,
        cols=cols,
    )
    scene = Scene(rng, look, cam, random_street(rng), Canvas(rows, cols))
    if look.weather == "sun":
        scene.sun = (rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.2), rng.uniform(-0.6, 0.6))
    draw_sky(scene)
    draw_ground(scene)
    draw_skyline(scene)
    for side in (-1, 1):
        draw_side(scene, side)
    plan_traffic(scene)
    plan_sidewalks(scene)
    if rng.random() < 0.6:
        plan_crossing(scene)
    for _, draw in sorted(scene.things, key=lambda thing: -thing[0]):
        draw()
    if rng.random() < 0.5:
        draw_hood(scene)
    return finish(scene), scene.canvas.label


def preview(rgb: np.ndarray, label_ids: np.ndarray) -> np.ndarray:
    """The picture and its colorized label side by side, (H, 2W, 3) uint8 RGB."""
    colors = CITYSCAPES.colorize(CITYSCAPES.to_train_ids(label_ids))
    return np.concatenate([rgb, colors], axis=1)


def check_domain(domain: str) -> None:
    """Raise ValueError unless `domain` is one of `DOMAINS`."""
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
