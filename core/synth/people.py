"""People: pedestrians, and bicycles and motorcycles with or without their riders.

Bodies are flat shapes facing the camera, or seen from the side for two-wheelers that cross the
road or are parked.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core.synth.classes import MOTORCYCLE, PERSON, RIDER
from core.synth.geometry import circle, standing
from core.synth.palette import TIRE, Color, scaled
from core.synth.scene import Scene


def draw_person(scene: Scene, x: float, z: float) -> None:
    """A pedestrian (sometimes a child, sometimes with a bag) standing or walking at (x, z)."""
    rng = scene.rng
    k = rng.uniform(0.85, 1.1) if rng.random() > 0.1 else rng.uniform(0.6, 0.8)  # or a child
    clothes = scene.look.palette.clothes
    top, legs = scene.color(clothes, 18), scene.color(clothes, 18)
    sleeves = scaled(top, 0.85)
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
    """A random skin tone."""
    return scaled((222, 180, 150), rng.uniform(0.45, 1.0))


def _draw_head(
    scene: Scene,
    x: float,
    y: float,
    z: float,
    r: float,  # radius of the head, meters
    skin: Color,
    label: int,
    helmet: Color | None,
) -> None:
    """A head: hair or a helmet on top, the face (or the back of the head) below."""
    hair = helmet or scaled((60, 45, 35), scene.rng.uniform(0.3, 2.0))
    scene.ball(x, y + r * 0.15, z, r * (1.1 if helmet else 1.0), hair, label)
    if scene.rng.random() < 0.6:
        scene.ball(x, y - r * 0.15, z, r * 0.85, skin, label)


def draw_two_wheeler(
    scene: Scene, x: float, z: float, label: int, view: str, ridden: bool = True
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
        return cam.project(standing(points, x, z, along_z=view == "along"))

    s = cam.scale(z)
    for ca in (-0.55, 0.55):
        wheel = circle(ca, r, r)
        if moto:
            scene.canvas.fill([place(wheel)], TIRE, label, z)
            scene.canvas.fill([place(circle(ca, r, r * 0.5, 12))], (110, 110, 112))
        else:
            scene.canvas.stroke([place(np.vstack([wheel, wheel[:1]]))], 0.06 * s, TIRE, label, z)
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


def _draw_two_wheeler_back(scene: Scene, x: float, z: float, label: int, ridden: bool) -> None:
    """Seen from behind: the rear wheel, the rider's back and the handlebar."""
    moto = label == MOTORCYCLE
    w, h = (0.09, 0.6) if moto else (0.05, 0.68)
    scene.flat([[-w, 0], [w, 0], [w, h], [-w, h]], x, z, TIRE, label)
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
    scene: Scene, place: Callable[[list], np.ndarray], moto: bool, z: float
) -> None:
    """The rider of a two-wheeler seen from the side; `place` projects its (a, y) shapes."""
    clothes = scene.look.palette.clothes
    jacket, trousers = scene.color(clothes, 18), scene.color(clothes, 18)
    seat = 0.95 if moto else 0.9
    parts = [
        ([[-0.3, seat], [-0.05, seat], [0.1, 0.35], [-0.05, 0.3]], trousers),
        ([[-0.35, seat], [-0.05, seat], [0.05, seat + 0.6], [-0.22, seat + 0.62]], jacket),
        (
            [[-0.05, seat + 0.55], [0.05, seat + 0.5], [0.42, 1.0], [0.35, 0.95]],
            scaled(jacket, 0.85),
        ),
    ]
    helmet = scene.color(scene.look.palette.vehicles) if moto else _skin(scene.rng)
    parts.append((circle(-0.05, seat + 0.78, 0.13 if moto else 0.115, 12), helmet))
    for shape, color in parts:
        scene.canvas.fill([place(shape)], color, RIDER, z)


def _draw_rider_back(scene: Scene, x: float, z: float, moto: bool) -> None:
    """The rider of a two-wheeler seen from behind, one foot up on its pedal."""
    rng, clothes = scene.rng, scene.look.palette.clothes
    jacket, trousers = scene.color(clothes, 18), scene.color(clothes, 18)
    seat = 0.95 if moto else 0.9
    lift = rng.uniform(0, 0.3)  # one foot up on its pedal
    sleeves = scaled(jacket, 0.85)
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
