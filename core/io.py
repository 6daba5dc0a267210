"""Reading and writing images and label maps, checking each file as it is read.

Images come back as (H, W, 3) uint8 RGB, label maps as (H, W) uint8 train ids (255 = ignore). A file
that cannot be used raises an error from core.errors that names the file and the problem, so a bad
sample fails loudly where it is read instead of silently training on garbage.

Label files must hold one channel of class ids (8- or 16-bit PNG). A 3-channel label whose three
channels are identical (a grayscale picture saved as RGB) is accepted as that one channel; any other
multi-channel label (a color-coded label, a palette PNG, which OpenCV expands to colors) is refused,
unless the dataset names its class colors (``read_label(colors=...)``, Mapillary Vistas): then a
palette PNG's indices are its ids and a color picture's colors map to the ids of those colors.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import (
    ConfigError,
    CorruptImageError,
    DataError,
    ImageTooLargeError,
    InvalidLabelError,
    SizeMismatchError,
)
from core.labels import Color, LabelSpace

_JPEG_START = b"\xff\xd8"
_JPEG_START_OF_SCAN = b"\xff\xda"
_JPEG_END = b"\xff\xd9"
# The most offending values an error message lists.
_MAX_LISTED = 10


def image_size(data: bytes, name: str = "<bytes>") -> tuple[int, int]:
    """``(height, width)`` of an encoded image, read from its header without decoding the pixels:
    what a server checks before it lets a small file decode into gigabytes.

    Raises:
        CorruptImageError: The data is not an image whose header Pillow reads.
        ImageTooLargeError: The header declares more pixels than Pillow's decompression-bomb
            limit (about 179 million).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # the size is checked by the caller
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(name, f"declares too many pixels ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CorruptImageError(name, "not a readable image header") from exc
    return height, width


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: A JPEG or PNG (or any format OpenCV decodes) file.

    Returns:
        (H, W, 3) uint8 RGB; grayscale images are repeated to three channels, alpha is dropped.

    Raises:
        DataError: The file does not exist or cannot be read.
        CorruptImageError: The file is empty, truncated or not an image.
    """
    return decode_image(_read_bytes(path), name=str(path))


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode an encoded image (the bytes of a JPEG or PNG file) as RGB.

    Args:
        data: The encoded file contents, e.g. an upload or a row of a Ray Dataset.
        name: What to call the data in errors, usually its file name.

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        CorruptImageError: The data is empty, truncated or not an image.
    """
    # EXIF orientation is ignored: label files are aligned with the stored pixel grid, so an image
    # rotated on reading would no longer match its label.
    bgr = _decode(data, name, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_label(
    path: str | Path,
    label_space: LabelSpace,
    expect_shape: tuple[int, int] | None = None,
    *,
    stored_ids: Collection[int] | None = None,
    colors: Sequence[Color] | None = None,
) -> np.ndarray:
    """Read a label map and convert its stored ids to train ids.

    Args:
        path: A single-channel PNG of stored ids (see the module docstring for 3-channel files).
        label_space: Maps the stored ids to train ids.
        expect_shape: (H, W) the label must have, usually its image's size.
        stored_ids: The values the file may hold (e.g. 0..11 and 255 for CamVid), checked before
            mapping; ``None`` allows every value the label space accepts.
        colors: The color of each stored id, for datasets whose labels are palette PNGs (the
            index is the id) or color pictures (each pixel's color is looked up here).

    Returns:
        (H, W) uint8 train ids, ``label_space.ignore_index`` where a pixel has no class.

    Raises:
        DataError: The file does not exist or cannot be read.
        CorruptImageError: The file is empty, truncated or not an image.
        InvalidLabelError: The label has color channels, or holds ids that are not allowed or that
            are no class after mapping (the message lists them).
        SizeMismatchError: The label's size differs from ``expect_shape``.
    """
    name = str(path)
    if colors is not None:
        stored = decode_indexed_label(_read_bytes(path), name, colors)
    else:
        stored = _single_channel(_decode(_read_bytes(path), name, cv2.IMREAD_UNCHANGED), name)
    if expect_shape is not None and stored.shape != tuple(expect_shape):
        raise SizeMismatchError(
            name, f"label is {_hw(stored.shape)} but its image is {_hw(expect_shape)}"
        )
    present = np.flatnonzero(np.bincount(stored.ravel(), minlength=256))
    if present[-1] > 255:
        above = present[present > 255]
        raise InvalidLabelError(name, f"stored ids above 255 found: {_listed(above)}")
    if stored_ids is not None:
        unexpected = np.setdiff1d(present, np.fromiter(stored_ids, dtype=np.int64))
        if unexpected.size:
            raise InvalidLabelError(
                name,
                f"stored ids outside the allowed ids ({_ranges(stored_ids)}) found: "
                f"{_listed(unexpected)}",
            )
    # Mapping the few values present is enough to know whether the mapped map is valid.
    invalid = label_space.invalid_values(label_space.to_train_ids(present))
    if invalid:
        raise InvalidLabelError(
            name,
            f"ids >= {label_space.num_classes} (the number of {label_space.name} classes) found "
            f"after mapping: {_listed(invalid)}",
        )
    return label_space.to_train_ids(stored)


def read_instance_file(path: str | Path) -> np.ndarray:
    """A 16-bit instance map (Cityscapes' ``*_instanceIds.png``, KITTI's ``instance/``) as it is
    stored.

    Raises:
        DataError: The file is missing or does not decode to one channel.
    """
    name = str(path)
    array = _decode(_read_bytes(path), name, cv2.IMREAD_UNCHANGED)
    if array.ndim != 2:
        raise InvalidLabelError(name, f"instance map has shape {array.shape}; expected (H, W)")
    return array


def write_image(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 RGB image; the suffix picks the format (.png, .jpg or .jpeg).

    Parent folders are created. Returns the path written.
    """
    path = Path(path)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{path}: expected an (H, W, 3) uint8 image, got {rgb.dtype} {rgb.shape}")
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"{path}: image files must end in .png, .jpg or .jpeg")
    _write_encoded(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def write_label(path: str | Path, label: np.ndarray) -> Path:
    """Write an (H, W) uint8 label map as a single-channel PNG (lossless, so ids survive).

    Parent folders are created. Returns the path written.
    """
    path = Path(path)
    label = np.asarray(label)
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"{path}: expected an (H, W) uint8 label, got {label.dtype} {label.shape}")
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: label files must be PNG (a lossy format would change the ids)")
    _write_encoded(path, label)
    return path


def existing_path(path: str | Path, kind: Literal["file", "folder"]) -> Path:
    """``path`` as a Path when it is an existing file (or folder).

    Raises:
        DataError: It does not exist, or is a folder where a file is wanted (or the reverse).
    """
    path = Path(path)
    is_kind = path.is_file() if kind == "file" else path.is_dir()
    if not is_kind:
        other = "folder" if kind == "file" else "file"
        problem = f"is a {other}, not a {kind}" if path.exists() else f"{kind} does not exist"
        raise DataError(path, problem)
    return path


def output_folder(path: str | Path, what: str) -> Path:
    """The folder ``path`` (``what`` names it in errors: ``--output``, ``storage_path``), created
    with its parents when missing.

    Raises:
        ConfigError: A file is there, or the folder cannot be created (no right to write, a file
            among its parents, a full disk).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot create the folder ({exc.strerror})") from exc
    return path


def _read_bytes(path: str | Path) -> bytes:
    path = existing_path(path, "file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(path, f"cannot read file ({exc.strerror})") from exc
    return data


def _decode(data: bytes, name: str, flags: int) -> np.ndarray:
    if len(data) == 0:
        raise CorruptImageError(name, "empty file (0 bytes)")
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if array is None:
        raise CorruptImageError(name, "not a decodable image (truncated, corrupt or not an image)")
    # Some OpenCV builds decode a truncated JPEG into a partly gray picture instead of failing;
    # a complete JPEG has an end-of-image marker after its last scan.
    if data.startswith(_JPEG_START):
        last_scan = data.rfind(_JPEG_START_OF_SCAN)
        if last_scan == -1 or data.find(_JPEG_END, last_scan) == -1:
            raise CorruptImageError(name, "truncated JPEG (no end-of-image marker)")
    return array


def decode_indexed_label(data: bytes, name: str, colors: Sequence[Color]) -> np.ndarray:
    """The stored ids of a palette PNG (its indices), a gray label (its values) or a color label
    (the position of each pixel's color in ``colors``).

    Raises:
        CorruptImageError: Not an image.
        InvalidLabelError: A color that is not in ``colors``, or an image mode labels never have.
    """
    if len(data) == 0:
        raise CorruptImageError(name, "empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
            array = np.asarray(image)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise CorruptImageError(name, f"not a decodable image ({exc})") from exc
    if mode in ("P", "L"):
        return array.astype(np.uint8, copy=False)
    if mode.startswith("I"):
        return _single_channel(array.astype(np.uint16), name)
    if mode not in ("RGB", "RGBA"):
        raise InvalidLabelError(name, f"label image mode {mode}; expected palette, gray or RGB")
    rgb = array[..., :3].astype(np.int64)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(colors)}
    keys, inverse = np.unique(packed, return_inverse=True)
    unknown = [int(k) for k in keys if int(k) not in table]
    if unknown:
        shown = ", ".join(
            f"({k >> 16}, {(k >> 8) & 255}, {k & 255})" for k in unknown[:_MAX_LISTED]
        )
        raise InvalidLabelError(name, f"colors that are no class of the dataset: {shown}")
    ids = np.array([table[int(k)] for k in keys], dtype=np.uint16)
    return ids[inverse].reshape(packed.shape)


def _single_channel(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype not in (np.uint8, np.uint16):
        raise InvalidLabelError(name, f"label pixels are {array.dtype}; expected 8- or 16-bit ids")
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[2] == 1:
        return array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 3:
        first = array[:, :, 0]
        if np.array_equal(first, array[:, :, 1]) and np.array_equal(first, array[:, :, 2]):
            return first
        raise InvalidLabelError(
            name, "color (RGB) label; expected one channel of class ids (palette PNGs are color)"
        )
    raise InvalidLabelError(
        name, f"label has {array.shape[2]} channels; expected one channel of class ids"
    )


def _write_encoded(path: Path, array: np.ndarray) -> None:
    ok, encoded = cv2.imencode(path.suffix.lower(), array)
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode the array")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded.tobytes())


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]} (HxW)"


def _listed(values: Collection[int] | np.ndarray) -> str:
    values = [int(v) for v in values]
    text = ", ".join(str(v) for v in values[:_MAX_LISTED])
    if len(values) > _MAX_LISTED:
        text += f" and {len(values) - _MAX_LISTED} more"
    return text


def _ranges(ids: Collection[int]) -> str:
    # "0-11, 255" reads better than twelve numbers.
    parts: list[str] = []
    for value in sorted(set(ids)):
        if parts and value == int(parts[-1].split("-")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{value}"
        else:
            parts.append(str(value))
    return ", ".join(parts)
