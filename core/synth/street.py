"""The street itself: its cross-section, the ground, the houses and what stands in front of them.

Sidewalks, curbs, road marks, the skyline at the end of the street, houses with windows and
shadows, the gaps between them, walls, fences, hedges and trees.
"""

from __future__ import annotations

import cv2
import numpy as np

from core.synth.camera import FARTHEST
from core.synth.canvas import GROUND, fixed_point
from core.synth.classes import BUILDING, FENCE, ROAD, SIDEWALK, TERRAIN, VEGETATION, WALL
from core.synth.geometry import circle, on_ground, rects
from core.synth.palette import PAINT, Color, clip_color, mix, scaled
from core.synth.scene import Scene, Street


def random_street(rng: np.random.Generator) -> Street:
    """Lanes, parking lanes, sidewalks and lawns of a random street."""
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
    return Street(
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


def draw_ground(scene: Scene) -> None:
    """Lawn everywhere below the horizon, then sidewalks, curbs and the road with its marks."""
    cam, st, look = scene.cam, scene.street, scene.look
    near, far = cam.z_bottom * 0.6, 2000.0
    below = np.array(
        [[0, cam.horizon], [cam.cols, cam.horizon], [cam.cols, cam.rows], [0, cam.rows]]
    )
    scene.canvas.fill([below], look.terrain, TERRAIN, GROUND)
    walks = rects("y", 0, [st.walk_left, st.road_right], [st.road_left, st.walk_right], near, far)
    scene.paint(walks, look.sidewalk, SIDEWALK, GROUND)
    _draw_paving(scene, near)
    scene.paint(rects("y", 0, st.road_left, st.road_right, near, far), look.road, ROAD, GROUND)
    curbs = rects(
        "y",
        0,
        [st.road_left - 0.25, st.road_right],
        [st.road_left, st.road_right + 0.25],
        near,
        far,
    )
    scene.paint(curbs, scaled(look.sidewalk, 1.15), SIDEWALK, GROUND)
    _draw_road_texture(scene, near)
    _draw_lane_marks(scene, near)


def _draw_paving(scene: Scene, near: float) -> None:
    """Joints between the slabs of both sidewalks."""
    st = scene.street
    z = np.arange(near, 40.0, scene.rng.uniform(1.0, 2.0))
    joints = []
    for outer, inner in ((st.walk_left, st.road_left), (st.road_right, st.walk_right)):
        ends = np.zeros((len(z), 2, 3))
        ends[:, 0, 0], ends[:, 1, 0], ends[:, :, 2] = outer, inner, z[:, None]
        joints.append(scene.cam.project(ends))
    scene.canvas.stroke(np.concatenate(joints), 1, scaled(scene.look.sidewalk, 0.8))


def _draw_road_texture(scene: Scene, near: float) -> None:
    """Patches, sealed cracks and manholes: texture that is still road."""
    st, rng, road = scene.street, scene.rng, scene.look.road
    for _ in range(int(rng.integers(3, 10))):
        x, z = rng.uniform(st.road_left, st.road_right - 1), rng.uniform(near, 60)
        patch = rects("y", 0, x, x + rng.uniform(0.8, 4), z, z + rng.uniform(1, 10))
        scene.paint(patch, scaled(road, rng.uniform(0.75, 1.2)))
    cracks = []
    for _ in range(int(rng.integers(0, 6))):
        crack = np.zeros((8, 3))
        crack[:, 0] = rng.uniform(st.road_left, st.road_right) + np.cumsum(rng.normal(0, 0.4, 8))
        crack[:, 2] = rng.uniform(near, 40) + np.cumsum(rng.uniform(0.3, 1.5, 8))
        cracks.append(scene.cam.project(crack))
    scene.canvas.stroke(cracks, 1, scaled(road, 0.55))
    for _ in range(int(rng.integers(0, 3))):
        x, z = rng.uniform(st.road_left + 1, st.road_right - 1), rng.uniform(near, 30)
        scene.paint(on_ground(x, z, circle(0, 0, 0.35)), scaled(road, 0.6))


def _draw_lane_marks(scene: Scene, near: float) -> None:
    """Dashed lines between lanes, a double line between directions, sometimes edge lines."""
    st, rng = scene.street, scene.rng
    dash, gap = rng.uniform(2.5, 4), rng.uniform(5, 9)
    starts = np.arange(near - rng.uniform(0, dash + gap), 150, dash + gap)
    marks = []
    for x, solid in st.dividers:
        if solid:  # the double line between the two directions
            marks += [
                rects("y", 0, x + dx - 0.06, x + dx + 0.06, near, 300) for dx in (-0.12, 0.12)
            ]
        else:
            marks.append(rects("y", 0, x - 0.07, x + 0.07, starts, starts + dash))
    if rng.random() < 0.5:
        marks += [
            rects("y", 0, x - 0.07, x + 0.07, near, 300)
            for x in (st.road_left + 0.3, st.road_right - 0.3)
        ]
    if marks:
        scene.paint(np.concatenate(marks), scaled(PAINT, rng.uniform(0.7, 1.0)))


def draw_skyline(scene: Scene) -> None:
    """Distant houses and trees that close the street at the horizon."""
    cam, rng, look = scene.cam, scene.rng, scene.look
    z = scene.street.far + rng.uniform(20, 80)
    half = z * (cam.cx + cam.cols) / cam.f
    x = -half
    while x < half:
        width, height = rng.uniform(8, 40), rng.uniform(4, 28)
        if rng.random() < 0.25:
            green = mix(scene.color(look.palette.greens), look.sky_bottom, 0.3)
            scene.flat(circle(width / 2, height * 0.6, width * 0.5), x, z, green, VEGETATION)
        else:
            color = mix(scene.color(look.palette.facades), look.sky_bottom, 0.35)
            scene.paint(rects("z", z, x, x + width, 0, height), color, BUILDING, z)
        x += width * rng.uniform(0.6, 1.1)


def draw_side(scene: Scene, side: int) -> None:
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


def _draw_house(scene: Scene, x: float, z0: float, z1: float, height: float, side: int) -> None:
    """A house front from z0 to z1 with its windows, and the shadow it casts on the street."""
    rng = scene.rng
    color = scene.color(scene.look.palette.facades, 14)
    glassy = rng.random() < 0.1  # an office block, windows almost everywhere
    if glassy:
        color = mix(color, (90, 110, 130), 0.6)
    sunlit = 1.0 if scene.sun is None or side * scene.sun[0] <= 0 else 0.78
    front = rects("z", z0, x, x + side * 25, 0, height)
    scene.paint(front, scaled(color, 0.86 * sunlit), BUILDING, z0)
    facade = rects("x", x, 0, height, z0, z1)
    scene.paint(facade, scaled(color, sunlit), BUILDING, (z0 + z1) / 2)
    _draw_windows(scene, x, z0, z1, height, color, glassy)
    if scene.sun is not None and scene.sun[0] * side < 0:
        # The shadow on the street: a parallelogram from the foot of the facade.
        dx = min(abs(scene.sun[0]) * height, abs(scene.street.facade(-side) - x))
        dz = scene.sun[1] * height
        foot = [[x, 0, z0], [x, 0, z1], [x - side * dx, 0, z1 + dz], [x - side * dx, 0, z0 + dz]]
        _shade(scene, np.array(foot))


def _shade(scene: Scene, world: np.ndarray) -> None:
    """Mark a world polygon as out of the sun; `weather.finish` darkens it."""
    pts = fixed_point([scene.cam.project(world)])
    cv2.fillPoly(scene.canvas.shadow, pts, 255, cv2.LINE_AA, 4)


def _draw_windows(
    scene: Scene, x: float, z0: float, z1: float, height: float, color: Color, glassy: bool
) -> None:
    """Rows of windows with ledges, shop windows on the ground floor, and the roof edge."""
    rng, look = scene.rng, scene.look
    floor = rng.uniform(2.9, 3.6)
    spacing = rng.uniform(1.6, 2.2) if glassy else rng.uniform(2.2, 3.8)
    width = spacing * (rng.uniform(0.7, 0.9) if glassy else rng.uniform(0.35, 0.6))
    tall = floor * (rng.uniform(0.6, 0.8) if glassy else rng.uniform(0.4, 0.6))
    ys = np.arange(3.6, height - tall - 0.5, floor)
    zs = np.arange(z0 + rng.uniform(0.5, 1.5), min(z1, FARTHEST) - width - 0.3, spacing)
    if len(ys) and len(zs):
        y, z = (a.ravel() for a in np.meshgrid(ys, zs))
        windows = rects("x", x, y, y + tall, z, z + width)
        glass = mix((60, 72, 90), look.sky_bottom, rng.uniform(0.0, 0.5))
        kind = rng.random(len(windows))
        scene.paint(windows[kind < 0.6], glass)
        scene.paint(windows[kind >= 0.6], scaled(glass, rng.uniform(0.6, 1.4)))
        if look.lit_windows:
            on = rng.random(len(windows)) < look.lit_windows
            lamp = scaled((255, 214, 150), rng.uniform(0.7, 1.0))
            scene.paint(windows[on], lamp, lit=True)
        scene.paint(rects("x", x, ys - 0.45, ys - 0.25, z0, z1), scaled(color, 0.8))  # ledges
    if rng.random() < 0.6:  # shop windows on the ground floor
        zs = np.arange(z0 + 0.6, min(z1, FARTHEST) - 2.5, rng.uniform(3, 5))
        shops = rects("x", x, 0.3, 2.7, zs, zs + rng.uniform(1.8, 2.6))
        dark = mix((40, 45, 50), look.sky_bottom, 0.25)
        scene.paint(shops, dark, lit=look.weather == "night")
    scene.paint(rects("x", x, height - 0.7, height, z0, z1), scaled(color, 0.7))  # roof edge


def _draw_gap(scene: Scene, side: int, z0: float, z1: float) -> None:
    """A gap between houses: a small park behind a wall or a fence, or nothing."""
    rng = scene.rng
    x = scene.street.facade(side)
    for _ in range(int(rng.integers(0, 4))):
        draw_tree(scene, x + side * rng.uniform(2, 12), rng.uniform(z0, z1 + 1), big=True)
    kind = rng.random()
    if kind < 0.3:
        _draw_wall(scene, x, z0, z1, rng.uniform(1.0, 2.5))
    elif kind < 0.6:
        _draw_fence(scene, x, z0, z1, rng.uniform(1.0, 2.2))


def _draw_front_line(scene: Scene, side: int) -> None:
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


def _draw_wall(scene: Scene, x: float, z0: float, z1: float, height: float) -> None:
    """A low wall along the street, with a coping on top and sometimes joints between slabs."""
    rng = scene.rng
    color = scene.color(scene.look.palette.walls, 14)
    inner = x - np.sign(x) * 0.3
    scene.paint(rects("y", height, x, inner, z0, z1), scaled(color, 1.1), WALL, z0)
    scene.paint(rects("z", z0, x, inner, 0, height), scaled(color, 0.9), WALL, z0)
    scene.paint(rects("x", x, 0, height, z0, z1), color, WALL, (z0 + z1) / 2)
    if rng.random() < 0.5:  # joints between concrete slabs
        zs = np.arange(z0, z1, rng.uniform(1.5, 4))
        scene.paint(rects("x", x, 0, height, zs, zs + 0.08), scaled(color, 0.75))
    scene.paint(rects("x", x, height - 0.15, height, z0, z1), scaled(color, 1.15))


def _draw_fence(
    scene: Scene, x: float, z0: float, z1: float, height: float, railing: bool = False
) -> None:
    """A fence: its label covers the whole outline, the picture shows posts, rails and mesh."""
    canvas, rng = scene.canvas, scene.rng
    color = scene.color(((90, 92, 96), (60, 80, 60), (150, 150, 150), (120, 90, 60)), 10)
    # Label only: the fence is see-through, what is behind stays in the picture.
    outline = fixed_point(scene.cam.project(rects("x", x, 0, height, z0, z1)))
    cv2.fillPoly(canvas.label, outline, FENCE, cv2.LINE_8, 4)
    cv2.fillPoly(canvas.depth, outline, z0, cv2.LINE_8, 4)
    cv2.fillPoly(canvas.lit, outline, 0, cv2.LINE_8, 4)
    bars = railing or rng.random() < 0.5
    zs = np.arange(z0, min(z1, FARTHEST), 0.15 if bars else 0.4)
    lines = np.zeros((len(zs), 2, 3))
    lines[:, :, 0], lines[:, 1, 1] = x, height
    lines[:, 0, 2] = zs
    lines[:, 1, 2] = zs if bars else zs + height  # upright bars or diagonal wire mesh
    canvas.stroke(scene.cam.project(lines), 1, color)
    posts = np.arange(z0, min(z1, FARTHEST), 2.5)
    scene.paint(rects("x", x, 0, height, posts, posts + 0.1), scaled(color, 0.8))
    scene.paint(
        rects("x", x, [height * 0.1, height - 0.06], [height * 0.1 + 0.06, height], z0, z1), color
    )


def _draw_hedge(scene: Scene, x: float, z0: float, z1: float, height: float) -> None:
    """A hedge with an uneven top and clumps of lighter and darker leaves."""
    rng = scene.rng
    green = scene.color(scene.look.palette.greens)
    outline = np.zeros((42, 3))
    outline[:, 0] = x
    outline[:40, 1] = height + rng.normal(0, 0.12, 40)
    outline[:40, 2] = np.linspace(z0, z1, 40)
    outline[40:, 2] = z1, z0
    scene.paint(outline, green, VEGETATION, (z0 + z1) / 2)
    for _ in range(12):  # clumps of leaves in lighter and darker green
        blob = circle(0, rng.uniform(0.2, height), rng.uniform(0.2, 0.5), 12)
        scene.flat(blob, x, rng.uniform(z0, z1), scaled(green, rng.uniform(0.7, 1.3)), along_z=True)


def draw_tree(scene: Scene, x: float, z: float, big: bool = False) -> None:
    """A tree standing at (x, z): a trunk, a crown of leaf clumps, and its shadow in the sun."""
    rng = scene.rng
    grow = 1.5 if big else 1.0
    trunk_height = rng.uniform(2.0, 3.5) * grow
    radius = rng.uniform(1.5, 3.2) * grow
    trunk = rng.uniform(0.12, 0.2) * grow
    top = trunk_height + radius
    bark = clip_color(np.array([92, 78, 64]) * rng.uniform(0.6, 1.3))
    stem = [[-trunk, 0], [trunk, 0], [trunk * 0.7, top], [-trunk * 0.7, top]]
    scene.flat(stem, x, z, bark, VEGETATION)
    green = scene.color(scene.look.palette.greens, 14)
    center = trunk_height + radius * 0.8
    for _ in range(int(rng.integers(7, 13))):  # the crown: overlapping clumps of leaves
        a, y = rng.normal(0, radius * 0.4), center + rng.normal(0, radius * 0.3)
        light = (1.0 + 0.25 * (y - center) / radius) * rng.uniform(0.8, 1.15)
        scene.ball(x + a, y, z, radius * rng.uniform(0.35, 0.65), scaled(green, light), VEGETATION)
    if scene.sun is not None:
        offset = np.array(scene.sun) * center
        _shade(scene, on_ground(x + offset[0], z + offset[1], circle(0, 0, radius * 0.9, 12)))
