"""Joint image/label transforms for training, on numpy arrays.

An image is ``(H, W, 3)`` uint8 RGB and its label ``(H, W)`` uint8 train ids (255 = ignore). Every
transform is a callable ``(image, label, rng) -> (image, label)``; randomness comes only from the
``np.random.Generator`` passed in, so a sample is reproducible from its seed.

Labels are always resized with nearest neighbour, so they never hold a value that was not in the
input, and padded with the ignore index, so padding never teaches a class.

Centroid sampling (paper Sec. 3.2) needs the crop to contain a chosen pixel:
``augment_around_point`` runs the same pipeline as ``build_train_transform`` but moves the point
with the scale and crops with ``crop_containing``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

from core.configs import AugmentConfig, StrongAugmentConfig
from core.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# RGB -> gray weights (ITU-R BT.601), as PIL and torchvision use for saturation and contrast.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

Pair = tuple[np.ndarray, np.ndarray]
JointTransform = Callable[[np.ndarray, np.ndarray, np.random.Generator], Pair]


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        h, w = size, size
    else:
        h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"crop size must be positive, got {size!r}")
    return h, w


def scaled_size(hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """The ``(h, w)`` of an image of size ``hw`` scaled by ``scale`` (at least 1 pixel each)."""
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def resize_pair(image: np.ndarray, label: np.ndarray, size_hw: tuple[int, int]) -> Pair:
    """Resize an image (bilinear) and its label (nearest neighbour) to ``size_hw``."""
    h, w = size_hw
    if image.shape[:2] == (h, w):
        return image, label
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    return image, label


def pad_to(
    image: np.ndarray, label: np.ndarray, min_hw: tuple[int, int], ignore_index: int
) -> Pair:
    """Pad bottom and right to at least ``min_hw``: image with 0, label with ``ignore_index``.

    Padding only bottom/right keeps every pixel's coordinates, so points stay valid.
    """
    pad_h = max(0, min_hw[0] - image.shape[0])
    pad_w = max(0, min_hw[1] - image.shape[1])
    if pad_h == 0 and pad_w == 0:
        return image, label
    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=0)
    # A soft target (H, W, 1 + C) pads every channel; its first, the hard label, says ignore.
    extra = ((0, 0),) * (label.ndim - 2)
    label = np.pad(label, ((0, pad_h), (0, pad_w), *extra), constant_values=ignore_index)
    return image, label


def _window(image: np.ndarray, label: np.ndarray, y0: int, x0: int, hw: tuple[int, int]) -> Pair:
    # Copies, so a crop does not keep the whole (possibly 2x upscaled) image alive in a queue.
    ys, xs = slice(y0, y0 + hw[0]), slice(x0, x0 + hw[1])
    return np.ascontiguousarray(image[ys, xs]), np.ascontiguousarray(label[ys, xs])


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[JointTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Pair:
        if image.shape[:2] != label.shape[:2]:
            raise ValueError(f"image {image.shape[:2]} and label {label.shape} differ in size")
        for transform in self.transforms:
            image, label = transform(image, label, rng)
        return image, label

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomScale:
    """Scale image and label by a factor drawn uniformly from ``[min_scale, max_scale]``."""

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0) -> None:
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale = min_scale
        self.max_scale = max_scale

    def sample_scale(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.min_scale, self.max_scale))

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Pair:
        return resize_pair(image, label, scaled_size(image.shape[:2], self.sample_scale(rng)))

    def __repr__(self) -> str:
        return f"RandomScale({self.min_scale}, {self.max_scale})"


class RandomCrop:
    """Crop a random ``size`` window, padding first when the image is smaller than the crop."""

    def __init__(self, size: int | tuple[int, int], ignore_index: int = IGNORE_INDEX) -> None:
        self.size = _as_hw(size)
        self.ignore_index = ignore_index

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Pair:
        ch, cw = self.size
        image, label = pad_to(image, label, self.size, self.ignore_index)
        y0 = int(rng.integers(0, image.shape[0] - ch + 1))
        x0 = int(rng.integers(0, image.shape[1] - cw + 1))
        return _window(image, label, y0, x0, (ch, cw))

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


def _window_start(point: int, crop: int, padded: int, rng: np.random.Generator) -> int:
    # Every start in [point - crop + 1, point] puts the point inside the window; intersect with the
    # starts that keep the window inside the padded image. Non-empty because point < padded >= crop.
    low = max(0, point - crop + 1)
    high = min(point, padded - crop)
    return int(rng.integers(low, high + 1))


def crop_containing(
    image: np.ndarray,
    label: np.ndarray,
    point_yx: tuple[int, int],
    size: int | tuple[int, int],
    rng: np.random.Generator,
    ignore_index: int = IGNORE_INDEX,
) -> Pair:
    """Crop a ``size`` window that contains ``point_yx``.

    The image is padded (bottom/right) to at least the crop size, then the window's offset is drawn
    uniformly among all windows that contain the point and lie inside the padded image.

    Raises:
        ValueError: If the point lies outside the image.
    """
    ch, cw = _as_hw(size)
    py, px = int(point_yx[0]), int(point_yx[1])
    if not (0 <= py < image.shape[0] and 0 <= px < image.shape[1]):
        raise ValueError(f"point {point_yx} lies outside the image of size {image.shape[:2]}")
    image, label = pad_to(image, label, (ch, cw), ignore_index)
    y0 = _window_start(py, ch, image.shape[0], rng)
    x0 = _window_start(px, cw, image.shape[1], rng)
    return _window(image, label, y0, x0, (ch, cw))


class RandomHorizontalFlip:
    """Mirror image and label left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Pair:
        if rng.random() >= self.p:
            return image, label
        return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(label[:, ::-1])

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip({self.p})"


class GaussianBlur:
    """Blur the image (not the label) with probability ``p``, sigma uniform in ``sigma_range``."""

    def __init__(self, p: float = 0.5, sigma_range: tuple[float, float] = (0.15, 1.15)) -> None:
        self.p = p
        self.sigma_range = sigma_range

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Pair:
        if rng.random() >= self.p:
            return image, label
        sigma = float(rng.uniform(*self.sigma_range))
        # Kernel size (0, 0) lets OpenCV derive it from sigma (about 6 sigma wide).
        return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma), label

    def __repr__(self) -> str:
        return f"GaussianBlur({self.p}, {self.sigma_range})"


class ColorJitter:
    """Random brightness, contrast and saturation, each a factor in ``[1 - s, 1 + s]``."""

    def __init__(self, strength: float = 0.1) -> None:
        if not 0 <= strength <= 1:
            raise ValueError(f"color jitter strength must be in [0, 1], got {strength}")
        self.strength = strength

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Pair:
        if self.strength == 0:
            return image, label
        s = self.strength
        brightness, contrast, saturation = rng.uniform(1 - s, 1 + s, size=3)
        x = image.astype(np.float32) * brightness
        gray = x @ _LUMA
        x = (x - gray.mean()) * contrast + gray.mean()
        gray = x @ _LUMA
        x = gray[..., None] + (x - gray[..., None]) * saturation
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), label

    def __repr__(self) -> str:
        return f"ColorJitter({self.strength})"


class RandomApply:
    """Apply ``transform`` with probability ``p``."""

    def __init__(self, transform: JointTransform, p: float) -> None:
        self.transform = transform
        self.p = p

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Pair:
        if rng.random() >= self.p:
            return image, label
        return self.transform(image, label, rng)

    def __repr__(self) -> str:
        return f"RandomApply({self.transform!r}, {self.p})"


class Grayscale:
    """Turn the image gray: its luma in all three channels."""

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Pair:
        gray = np.clip(np.rint(image.astype(np.float32) @ _LUMA), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2), label

    def __repr__(self) -> str:
        return "Grayscale()"


class Cutout:
    """Blank one random rectangle (sides up to ``max_fraction`` of the image's): the image to 0,
    the label to ignore, so nothing is learned from the hole."""

    def __init__(self, max_fraction: float = 0.5, ignore_index: int = IGNORE_INDEX) -> None:
        self.max_fraction = max_fraction
        self.ignore_index = ignore_index

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Pair:
        h, w = label.shape[:2]
        ch = int(rng.integers(1, max(1, round(h * self.max_fraction)) + 1))
        cw = int(rng.integers(1, max(1, round(w * self.max_fraction)) + 1))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image, label = image.copy(), label.copy()
        image[y0 : y0 + ch, x0 : x0 + cw] = 0
        label[y0 : y0 + ch, x0 : x0 + cw] = self.ignore_index
        return image, label

    def __repr__(self) -> str:
        return f"Cutout({self.max_fraction})"


def build_strong_transform(strong: StrongAugmentConfig) -> Compose:
    """The pseudo samples' extra augmentation: strong color jitter (p 0.8), grayscale, a blur of
    up to sigma 2, cutout."""
    return Compose(
        [
            RandomApply(ColorJitter(strong.color_jitter), 0.8),
            RandomApply(Grayscale(), strong.grayscale),
            GaussianBlur(strong.blur, (0.1, 2.0)),
            RandomApply(Cutout(strong.cutout_max), strong.cutout),
        ]
    )


def _tail_transforms(aug: AugmentConfig) -> list[JointTransform]:
    """The transforms applied after the crop."""
    tail: list[JointTransform] = []
    if aug.flip:
        tail.append(RandomHorizontalFlip(0.5))
    if aug.blur:
        tail.append(GaussianBlur(0.5))
    if aug.color_jitter > 0:
        tail.append(ColorJitter(aug.color_jitter))
    return tail


def build_train_transform(aug: AugmentConfig, crop_size: int | tuple[int, int]) -> Compose:
    """Scale, crop to ``crop_size``, then flip, blur and color jitter as ``aug`` enables them."""
    return Compose(
        [RandomScale(aug.scale_min, aug.scale_max), RandomCrop(crop_size), *_tail_transforms(aug)]
    )


def augment_around_point(
    image: np.ndarray,
    label: np.ndarray,
    point_yx: tuple[int, int],
    aug: AugmentConfig,
    crop_size: int | tuple[int, int],
    rng: np.random.Generator,
) -> Pair:
    """``build_train_transform``'s pipeline with a crop that contains ``point_yx``.

    The point is moved with the random scale (pixel centers map to pixel centers) before cropping.
    """
    h, w = image.shape[:2]
    if not (0 <= point_yx[0] < h and 0 <= point_yx[1] < w):
        raise ValueError(f"point {point_yx} lies outside the image of size {(h, w)}")
    new_h, new_w = scaled_size((h, w), RandomScale(aug.scale_min, aug.scale_max).sample_scale(rng))
    image, label = resize_pair(image, label, (new_h, new_w))
    py = min(new_h - 1, max(0, round((point_yx[0] + 0.5) * new_h / h - 0.5)))
    px = min(new_w - 1, max(0, round((point_yx[1] + 0.5) * new_w / w - 0.5)))
    image, label = crop_containing(image, label, (py, px), crop_size, rng)
    return Compose(_tail_transforms(aug))(image, label, rng)


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` RGB -> float32 ``(N, 3, H, W)`` normalized with ImageNet mean/std.

    Runs on the tensor's device, so batches move to the GPU as uint8 (4x less to copy).
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"expected a uint8 (N, H, W, 3) tensor, got {images.dtype} {tuple(images.shape)}"
        )
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    x = images.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    return (x - mean) / std


def to_tensors(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack same-size samples into a uint8 ``(N, H, W, 3)`` and an int64 ``(N, H, W)`` tensor
    (soft targets, ``(H, W, 1 + C)`` from `soft_target`, stay uint8: ``(N, H, W, 1 + C)``)."""
    if not images or len(images) != len(labels):
        raise ValueError(
            f"need as many labels as images (>= 1), got {len(images)} and {len(labels)}"
        )
    shapes = {im.shape[:2] for im in images} | {lb.shape[:2] for lb in labels}
    if len(shapes) != 1:
        raise ValueError(f"samples of different sizes cannot be stacked: {sorted(shapes)}")
    image_batch = torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images]))
    stacked = np.stack(labels)
    soft = stacked.ndim == 4
    label_batch = torch.from_numpy(stacked if soft else stacked.astype(np.int64))
    return image_batch, label_batch


def soft_target(
    label: np.ndarray, probabilities: np.ndarray | None, num_classes: int
) -> np.ndarray:
    """A sample's soft target: ``(H, W, 1 + C)`` uint8, the hard label first (its ignored pixels
    count for nothing), then each class's probability x 255.

    Travelling as channels of the label, the probabilities take every geometric transform the
    label does (nearest-neighbour scaling, crops, flips, padding, cutout).

    Args:
        label: (H, W) uint8 hard label (``ignore_index`` where ignored).
        probabilities: (C, h, w) class probabilities on a coarser grid (a label store's soft
            labels), resized bilinearly to (H, W); None for a real sample, whose target is its
            label one-hot.
        num_classes: C.
    """
    height, width = label.shape
    if probabilities is None:
        channels = (label[..., None] == np.arange(num_classes)).astype(np.uint8) * 255
    else:
        if probabilities.shape[0] != num_classes:
            raise ValueError(f"expected {num_classes} classes, got {probabilities.shape[0]}")
        planes = np.ascontiguousarray(np.moveaxis(probabilities.astype(np.float32), 0, -1))
        resized = cv2.resize(planes, (width, height), interpolation=cv2.INTER_LINEAR)
        resized = resized.reshape(height, width, num_classes)
        channels = np.clip(np.rint(resized * 255), 0, 255).astype(np.uint8)
    return np.concatenate([label[..., None], channels], axis=-1)
