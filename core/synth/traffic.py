"""Vehicles: where they drive and park, how cars, trucks, buses and trams look; the camera's hood.

Vehicles are boxes seen from behind or (oncoming) from the front; only the faces the camera sees
are drawn. Motorcycles in traffic are drawn by `people.draw_two_wheeler`.
"""

from __future__ import annotations

import cv2
import numpy as np

from core.synth.canvas import fixed_point
from core.synth.classes import BUS, CAR, EGO_VEHICLE, MOTORCYCLE, TRAIN, TRUCK
from core.synth.geometry import circle, on_ground, rects
from core.synth.palette import TIRE, Color, mix, scaled
from core.synth.people import draw_two_wheeler
from core.synth.scene import Scene


def _box(
    scene: Scene,
    x: tuple[float, float],
    y: tuple[float, float],
    z: tuple[float, float],
    color: Color,
    label: int,
) -> float | None:
    """Draw the faces of a box that the camera sees; return the x of the visible side, if any."""
    side = None
    if y[1] < scene.cam.height:
        scene.paint(rects("y", y[1], x[0], x[1], z[0], z[1]), scaled(color, 1.08), label, z[0])
    if x[1] < 0:
        side = x[1]
    elif x[0] > 0:
        side = x[0]
    if side is not None:
        scene.paint(rects("x", side, y[0], y[1], z[0], z[1]), scaled(color, 0.82), label, z[0])
    scene.paint(rects("z", z[0], x[0], x[1], y[0], y[1]), color, label, z[0])
    return side


def plan_traffic(scene: Scene) -> None:
    """Queue the vehicles of every lane, rare ones included, and the cars parked at the curbs."""
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


def _place_vehicle(scene: Scene, kind: str, x: float, z: float, oncoming: bool) -> float:
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
        scene.add(draw_two_wheeler, x, z, MOTORCYCLE, "back")
    return length


def _draw_car(scene: Scene, x: float, z: float, length: float, oncoming: bool) -> None:
    """A car or a van: body, cabin with windows, wheels, lights and number plate."""
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
    glass = mix((38, 44, 52), look.sky_bottom, rng.uniform(0.0, 0.4))
    scene.paint(
        rects("z", cab[0], x - half + 0.22, x + half - 0.22, belt + 0.05, top - 0.07), glass
    )
    if cab_side is not None:
        mid = (cab[0] + cab[1]) / 2
        panes = rects(
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
    scene.paint(rects("z", z, x - 0.26, x + 0.26, 0.38, 0.5), (225, 225, 220))  # number plate


def _draw_truck(scene: Scene, x: float, z: float, length: float, oncoming: bool) -> None:
    """A truck: a cab and a taller cargo box, the cab first when it comes toward the camera."""
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
        scene.paint(rects("z", z, x - half + 0.15, x + half - 0.15, 1.8, 2.8), (40, 46, 54))
    else:  # the chassis under the cargo box and the underrun guard
        scene.paint(rects("z", z + 0.3, x - half + 0.4, x + half - 0.4, 0.3, 0.9), TIRE, TRUCK, z)
        scene.paint(
            rects("z", z, x - half + 0.1, x + half - 0.1, 0.4, 0.52), (60, 60, 64), TRUCK, z
        )
    _draw_wheels(scene, side, x, half, z, length, 0.5, TRUCK, tire_height=0.85)
    _draw_vehicle_lights(scene, x, half, z, 0.75, oncoming)


def _draw_bus(scene: Scene, x: float, z: float, length: float, oncoming: bool, label: int) -> None:
    """A bus or, with label TRAIN, a tram: a long box with a band of windows."""
    rng, look = scene.rng, scene.look
    tram = label == TRAIN
    half, top = (1.2, 3.4) if tram else (1.25, 3.1)
    color = scene.color(look.palette.trains if tram else look.palette.buses, 8)
    _contact_shadow(scene, x, half, z, length)
    if tram:  # rails in the road
        rails = [x - 0.76, x - 0.68, x + 0.68, x + 0.76]
        near = scene.cam.z_bottom * 0.6
        scene.paint(rects("y", 0, rails[::2], rails[1::2], near, 300), scaled(look.road, 1.4))
    side = _box(scene, (x - half, x + half), (0.3, top), (z, z + length), color, label)
    glass = mix((34, 40, 48), look.sky_bottom, rng.uniform(0.0, 0.3))
    lit = look.lights_on and rng.random() < 0.5
    scene.paint(rects("z", z, x - half + 0.12, x + half - 0.12, 1.1, top - 0.35), glass, lit=lit)
    if side is not None:
        zs = np.arange(z + 0.6, z + length - 1.2, rng.uniform(1.4, 2.2))
        scene.paint(rects("x", side, 1.2, top - 0.45, zs, zs + 1.1), glass, lit=lit)
    if tram:
        scene.paint(rects("z", z, x - half, x + half, 0.3, 0.6), scaled(color, 0.5))
    else:
        sign = rects("z", z, x - half + 0.3, x + half - 0.3, top - 0.3, top - 0.08)
        scene.paint(sign, (250, 170, 40), lit=look.lights_on)  # destination display
        _draw_wheels(scene, side, x, half, z, length, 0.5, label)
    _draw_vehicle_lights(scene, x, half, z, 0.7, oncoming)


def _contact_shadow(scene: Scene, x: float, half: float, z: float, length: float) -> None:
    """The dark patch of road under a vehicle."""
    shadow = rects("y", 0, x - half - 0.1, x + half + 0.1, z - 0.1, z + length + 0.1)
    scene.paint(shadow, scaled(scene.look.road, 0.35))


def _draw_wheels(
    scene: Scene,
    side: float | None,
    x: float,
    half: float,
    z: float,
    length: float,
    r: float,  # wheel radius in meters
    label: int,
    tire_height: float = 0.3,
) -> None:
    """Wheels under the near end and, when a side shows, along that side."""
    for x0 in (x - half + 0.05, x + half - 0.3):  # the two seen below the near end
        scene.paint(rects("z", z + 0.01, x0, x0 + 0.25, 0, tire_height), TIRE, label, z)
    if side is None:
        return
    for zc in (z + r + 0.45, z + length - r - 0.5):
        scene.flat(circle(0, r, r), side, zc, TIRE, label, along_z=True)
        scene.flat(circle(0, r, r * 0.55), side, zc, (120, 120, 124), along_z=True)


def _draw_vehicle_lights(
    scene: Scene, x: float, half: float, z: float, y: float, front: bool
) -> None:
    """Head- or taillights at height y; at night an oncoming vehicle lights the road."""
    on = scene.look.lights_on
    if front:
        color = (255, 246, 220) if on else (200, 200, 196)
    else:
        color = (220, 30, 24) if on else (160, 24, 20)
    lamps = rects(
        "z", z, [x - half + 0.08, x + half - 0.38], [x - half + 0.38, x + half - 0.08], y, y + 0.15
    )
    scene.paint(lamps, color, lit=on)
    if on and front:  # the beams on the road ahead of an oncoming vehicle
        beam = np.array([[-half, 0], [half, 0], [1.5, -12], [-1.5, -12]])
        pts = fixed_point([scene.cam.project(on_ground(x, z, beam))])
        cv2.fillPoly(scene.canvas.glow, pts, 160, cv2.LINE_AA, 4)


def draw_hood(scene: Scene) -> None:
    """The hood of the car carrying the camera, at the bottom of the picture."""
    rng, rows, cols = scene.rng, scene.cam.rows, scene.cam.cols
    top = rows * rng.uniform(0.88, 0.95)
    xs = np.linspace(-0.05 * cols, 1.05 * cols, 24)
    curve = top + (rows - top) * 0.8 * ((xs - cols / 2) / (0.55 * cols)) ** 2
    edge = np.stack([xs, curve], -1)
    outline = np.concatenate([edge, [[1.05 * cols, rows + 2], [-0.05 * cols, rows + 2]]])
    paint = scene.color(scene.look.palette.vehicles, 6)
    scene.canvas.fill([outline], scaled(paint, 0.6), EGO_VEHICLE, 1.0)
    shine = edge[6:18] + [0, (rows - top) * 0.35]  # the sky mirrored in the paint
    scene.canvas.stroke([shine], max(1.0, rows * 0.006), mix(paint, scene.look.sky_bottom, 0.5))
