"""Sky, weather and light: the look of a scene, and the finish that turns drawn colors into a photo.

`random_look` picks the weather and colors of a scene, `draw_sky` paints the sky before anything
else, and `finish` applies light, shadows, night, fog, rain, texture noise and the camera's response
after everything is drawn.
"""

from __future__ import annotations

import cv2
import numpy as np

from core.synth.camera import Camera
from core.synth.canvas import GROUND, Canvas, fixed_point
from core.synth.classes import BUILDING, ROAD, SIDEWALK, SKY, TERRAIN, VEGETATION, WALL
from core.synth.palette import SOURCE_PALETTE, TARGET_PALETTE, Color, clip_color
from core.synth.scene import Look, Scene

# Standard deviation of the per-pixel texture noise of each label id (gray levels): asphalt, leaves
# and grass are rougher than sky and paint.
_NOISE = np.full(256, 6.0, dtype=np.float32)
_NOISE[[ROAD, SIDEWALK]] = 9.0
_NOISE[[VEGETATION, TERRAIN]] = 16.0
_NOISE[[WALL, BUILDING]] = 7.0
_NOISE[SKY] = 2.0


def random_look(rng: np.random.Generator, domain: str) -> Look:
    """The weather, light and ground colors of a scene of `domain`."""
    if domain == "source":
        palette = SOURCE_PALETTE
        weather = "sun" if rng.random() < 0.6 else "overcast"
    else:
        palette = TARGET_PALETTE
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
        return clip_color(base * rng.uniform(0.9, 1.1) + rng.normal(0.0, 3.0, 3))

    return Look(
        domain=domain,
        weather=weather,
        palette=palette,
        sky_top=clip_color(np.asarray(sky[0])),
        sky_bottom=clip_color(np.asarray(sky[1])),
        road=pick(palette.roads),
        sidewalk=pick(palette.sidewalks),
        terrain=pick(palette.terrains),
        fog_color=clip_color(np.asarray(fog[0])),
        fog_distance=float(fog[1]),
        lights_on=domain == "target",
        lit_windows=rng.uniform(0.2, 0.5) if weather == "night" else 0.0,
    )


def draw_sky(scene: Scene) -> None:
    """A gradient from the top of the picture to the horizon, with clouds by day."""
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


def _smooth_noise(rng: np.random.Generator, rows: int, cols: int, cell: int) -> np.ndarray:
    """Noise of about unit size that varies over `cell` pixels, (rows, cols) float32."""
    coarse = rng.standard_normal((rows // cell + 2, cols // cell + 2), dtype=np.float32)
    return cv2.resize(coarse, (cols, rows), interpolation=cv2.INTER_CUBIC) * np.float32(0.6)


def finish(scene: Scene) -> np.ndarray:
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


def _pixel_depth(depth: np.ndarray, cam: Camera) -> np.ndarray:
    """Distance of every pixel; that of road, sidewalk and terrain follows from the row."""
    rows = np.arange(cam.rows, dtype=np.float32)
    ground = (cam.f * cam.height / np.maximum(rows - cam.horizon, 0.5)).astype(np.float32)
    return np.where(depth == GROUND, ground[:, None], depth)


def _bloom(canvas: Canvas, image: np.ndarray, strength: float) -> np.ndarray:
    """Halos around lamps and headlights, blurred at a quarter of the size for speed."""
    rows, cols = canvas.label.shape
    lights = image * (canvas.lit[..., None] * np.float32(1 / 255))
    small = cv2.resize(lights, (max(1, cols // 4), max(1, rows // 4)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 2.5)
    return image + 2.0 * strength * cv2.resize(small, (cols, rows), interpolation=cv2.INTER_LINEAR)


def _night(scene: Scene, image: np.ndarray, sky: np.ndarray) -> np.ndarray:
    """Dim ambient light, warm pools of lamp light, halos around lights, and sensor noise."""
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
    """Streaks of falling rain, then the blur of water on the lens."""
    rows, cols = image.shape[:2]
    n = int(rows * cols / rng.uniform(150, 400))
    start = rng.uniform([0, -20], [cols, rows], (n, 2))
    length = rng.uniform(6, 18, n) * rows / 256
    end = start + np.stack([length * rng.uniform(-0.3, 0.3), length], -1)
    streaks = np.zeros((rows, cols), np.uint8)
    cv2.polylines(streaks, fixed_point(np.stack([start, end], 1)), False, 255, 1, cv2.LINE_AA, 4)
    alpha = streaks[..., None] * np.float32(rng.uniform(0.15, 0.35) / 255)
    image = image * (1 - alpha) + np.float32(200) * alpha
    return cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.0))  # water on the lens


def _camera_response(rng: np.random.Generator, image: np.ndarray, look: Look) -> np.ndarray:
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
