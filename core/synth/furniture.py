"""Street furniture and where things stand: lamps, signs and traffic lights, sidewalks, crossings.

`plan_sidewalks` and `plan_crossing` queue trees, lamps, signs, people, bicycles and traffic lights
on the scene; they are drawn later, far to near, with everything else.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from core.synth.canvas import fixed_point
from core.synth.classes import BICYCLE, MOTORCYCLE, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN
from core.synth.geometry import circle, on_ground, rects
from core.synth.palette import PAINT, POLES, Color, scaled
from core.synth.people import draw_person, draw_two_wheeler
from core.synth.scene import Scene
from core.synth.street import draw_tree


def plan_sidewalks(scene: Scene) -> None:
    """Queue street trees, lamps, signs, pedestrians and bicycles on both sidewalks."""
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
                add(draw_tree, walk - side * rng.uniform(0.6, 1.2), float(z))
        if rng.random() < 0.75:  # street lamps
            for z in np.arange(near + rng.uniform(0, 20), 120, rng.uniform(22, 38)):
                add(_draw_lamp, curb + side * 0.5, float(z), side)
        for _ in range(int(rng.poisson(1.5))):
            add(_draw_sign, curb + side * rng.uniform(0.3, 0.8), anywhere())
        for _ in range(int(rng.poisson(3.0))):
            add(draw_person, curb + (walk - curb) * rng.random(), anywhere())
        if rng.random() < 0.3:  # parked bicycles
            z = anywhere()
            view = "along" if rng.random() < 0.5 else "across"
            for k in range(int(rng.integers(1, 4))):
                add(draw_two_wheeler, walk - side * 0.6, z + k * 0.7, BICYCLE, view, False)
        if rng.random() < 0.08:  # a parked motorcycle
            add(draw_two_wheeler, curb + side * 0.8, anywhere(), MOTORCYCLE, "along", False)
    if rng.random() < 0.4:  # a cyclist riding along the right edge
        add(draw_two_wheeler, st.road_right - 0.8, anywhere(), BICYCLE, "back")


def plan_crossing(scene: Scene) -> None:
    """A crossing with zebra stripes, traffic lights and people (or a cyclist) on it."""
    rng, st = scene.rng, scene.street
    z = rng.uniform(10, 45)
    if rng.random() < 0.7:
        xs = np.arange(st.road_left + 0.3, st.road_right - 0.5, 1.0)
        stripes = rects("y", 0, xs, xs + 0.5, z, z + 3.5)
        scene.paint(stripes, scaled(PAINT, rng.uniform(0.7, 1.0)))
    for side in (-1, 1):
        if rng.random() < 0.8:
            overhead = rng.random() < 0.3
            scene.add(_draw_traffic_light, st.road_edge(side) + side * 0.5, z + 4, side, overhead)
    for _ in range(int(rng.integers(0, 4))):
        scene.add(draw_person, rng.uniform(st.road_left, st.road_right), z + rng.uniform(0.5, 3))
    if rng.random() < 0.25:
        x = rng.uniform(st.road_left, st.road_right)
        scene.add(draw_two_wheeler, x, z + rng.uniform(0.5, 3), BICYCLE, "across")


def _draw_pole(scene: Scene, x: float, z: float, height: float, r: float, color: Color) -> None:
    """A pole of radius r meters, a little thinner at the top."""
    scene.flat([[-r, 0], [r, 0], [r * 0.8, height], [-r * 0.8, height]], x, z, color, POLE)


def _draw_lamp(scene: Scene, x: float, z: float, side: int) -> None:
    """A street lamp whose arm reaches over the road; lit at night, in rain and in fog."""
    rng = scene.rng
    h = rng.uniform(6, 9)
    color = scene.color(POLES, 10)
    _draw_pole(scene, x, z, h, 0.09, color)
    reach = -side * rng.uniform(0.8, 2.2)
    scene.flat(
        [[0, h - 0.1], [reach, h + 0.2], [reach, h + 0.08], [0, h - 0.22]], x, z, color, POLE
    )
    on = scene.look.weather in ("night", "rain", "fog")
    head = [[reach - 0.3, h + 0.22], [reach + 0.3, h + 0.22], [reach + 0.25, h], [reach - 0.25, h]]
    scene.flat(head, x, z, (255, 236, 190) if on else scaled(color, 0.7), POLE, lit=on)
    if on:  # the pool of light on the ground below
        pool = on_ground(x + reach, z, circle(0, 0, h * 0.45))
        cv2.fillPoly(scene.canvas.glow, fixed_point([scene.cam.project(pool)]), 110, cv2.LINE_AA, 4)


def _draw_sign(scene: Scene, x: float, z: float) -> None:
    """A traffic sign on a pole: round, triangular, square or octagonal, or its back."""
    rng = scene.rng
    h = rng.uniform(2.2, 3.2)
    _draw_pole(scene, x, z, h, 0.04, scene.color(POLES, 10))
    size = rng.uniform(0.3, 0.45)
    y = h + size * 0.8
    kind = int(rng.integers(4))
    outline = [
        circle(0, y, size),
        np.array([[-size, y - size * 0.6], [size, y - size * 0.6], [0, y + size]]),
        np.array([[-size, y - size], [size, y - size], [size, y + size], [-size, y + size]]),
        circle(0, y, size, 8),  # an octagon
    ][kind]
    if rng.random() < 0.3:  # seen from behind: a grey plate, still a sign
        scene.flat(outline, x, z, scene.color(POLES, 10), TRAFFIC_SIGN)
        return
    rim = [(200, 30, 30), (200, 30, 30), (30, 70, 160), (200, 30, 30)][kind]
    scene.flat(outline, x, z, rim, TRAFFIC_SIGN)
    face = (240, 240, 235) if kind < 2 else scaled(rim, 1.1)
    scene.flat((outline - [0, y]) * 0.72 + [0, y], x, z, face)
    if kind == 2:  # an arrow or a word, roughly
        glyph = np.array([[-0.3, -0.1], [0.3, -0.1], [0.3, 0.1], [-0.3, 0.1]]) * size + [0, y]
        scene.flat(glyph, x, z, (240, 240, 235))


def _draw_traffic_light(scene: Scene, x: float, z: float, side: int, overhead: bool) -> None:
    """A traffic light beside the road or hanging over it, one of its three lamps on."""
    rng = scene.rng
    color = scene.color(POLES, 10)
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
        color = lamp if k == on else scaled(lamp, 0.25)
        scene.canvas.disc(center, 0.12 * scene.cam.scale(z), color, lit=k == on)
