"""The surface colors of each domain, and the small color arithmetic the drawing functions use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Color = tuple[float, float, float]


@dataclass(frozen=True)
class Palette:
    """Surface colors of one domain (RGB, before light and weather)."""

    facades: tuple[Color, ...]  # houses, and the skyline at the end of the street
    vehicles: tuple[Color, ...]  # cars, truck cabs, motorcycles, helmets, the camera's hood
    buses: tuple[Color, ...]
    trains: tuple[Color, ...]  # trams
    roads: tuple[Color, ...]
    sidewalks: tuple[Color, ...]
    terrains: tuple[Color, ...]  # the lawn below everything else
    greens: tuple[Color, ...]  # leaves of trees and hedges
    walls: tuple[Color, ...]
    clothes: tuple[Color, ...]  # people and riders


# Vehicle, wall and facade colors overlap on purpose (grey cars, grey walls and grey facades; green
# cars next to trees) so that color alone does not decide the class.
# fmt: off
SOURCE_PALETTE = Palette(
    facades=(
        (205, 190, 160), (170, 166, 160), (225, 220, 208), (215, 195, 140),
        (200, 152, 122), (150, 160, 172), (185, 175, 150), (122, 112, 102),
    ),
    vehicles=(
        (182, 184, 187), (228, 228, 226), (32, 32, 35), (112, 114, 118), (30, 45, 92),
        (160, 30, 30), (44, 74, 48), (190, 175, 140), (120, 150, 182),
    ),
    buses=((228, 196, 40), (196, 40, 40), (236, 236, 236)),
    trains=((198, 42, 40), (238, 200, 46), (226, 226, 226)),
    roads=((112, 112, 114), (98, 99, 102), (126, 125, 122)),
    sidewalks=((168, 160, 158), (176, 146, 136), (150, 150, 152), (190, 184, 170)),
    terrains=((118, 140, 70), (150, 140, 92), (104, 128, 66)),
    greens=((62, 102, 42), (82, 122, 46), (46, 82, 36), (102, 132, 62)),
    walls=((175, 170, 160), (150, 146, 140), (196, 182, 150), (126, 116, 108)),
    clothes=(
        (30, 30, 34), (60, 70, 110), (150, 40, 40), (210, 210, 205),
        (110, 90, 70), (70, 110, 80), (180, 150, 60), (120, 120, 125),
    ),
)

# Brick and dark facades, other vehicle colors, darker asphalt: a city that looks different.
TARGET_PALETTE = Palette(
    facades=(
        (150, 76, 56), (112, 62, 52), (86, 86, 96), (72, 120, 122),
        (210, 200, 172), (142, 140, 136), (182, 132, 62),
    ),
    vehicles=(
        (222, 182, 32), (232, 232, 232), (26, 26, 30), (112, 22, 32),
        (40, 72, 152), (212, 112, 32), (62, 112, 62), (96, 98, 104),
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
# fmt: on

# Colors both domains share: road paint, rubber, and the metal of poles.
PAINT = (235.0, 235.0, 228.0)
TIRE = (26.0, 26.0, 28.0)
POLES = ((150, 150, 150), (90, 96, 90), (60, 62, 66), (175, 172, 165))


def clip_color(color: np.ndarray) -> Color:
    """The color as three floats, each clipped to [0, 255]."""
    r, g, b = (min(255.0, max(0.0, float(c))) for c in color)
    return (r, g, b)


def scaled(color: Color, factor: float) -> Color:
    """The color made brighter (factor > 1) or darker (factor < 1)."""
    return clip_color(np.asarray(color) * factor)


def mix(a: Color, b: Color, t: float) -> Color:
    """The blend of `a` and `b` that is a share `t` of `b`."""
    return clip_color(np.asarray(a) * (1 - t) + np.asarray(b) * t)
