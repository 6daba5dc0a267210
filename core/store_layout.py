"""The arrays of a label store (format version 2), how they are chunked, and the format checks.

Images are grouped into **shards** of ``images_per_shard`` (S, a power of two) consecutive
indices: shard k holds images ``[k * S, (k + 1) * S)``. A shard is the unit of writing: one writer
(core.store_writer.ShardWriter) writes every file of a shard, and nothing else writes them:

    paths               (n,) str, chunk 4096                  image list (driver only)
    status              (n,) uint8, chunk S                   0 pending, 1 done, 2 failed
    size                (n, 2) int32, chunk (S, 2)            height, width (0, 0 until read)
    reason              (n,) str, chunk S                     why an image failed
    run                 (n,) int32, chunk S                   the run that labeled it (-1: none)
    labeled_at          (n,) float64, chunk S                 when (Unix seconds)
    class_pixels        (n, C) int64, chunk (S, C)            pixels per class of each label
    centroids           (n_shards, S * 4096, 5) float64,      per shard, rows (image, class, y,
                        chunk (1, 4096, 5)                    x, area) of its done images
    shard_totals        (n_shards, 2 + 2C) int64, chunk 1 row done, centroid rows, pixels per
                                                              class, centroids per class
    labels/<H>x<W>      (n, H, W) uint8, sharded              label maps of the H x W images
    confidence/<H>x<W>  (n, H, W) uint8, sharded              max softmax x 255
    probabilities/<H>x<W> (n, C, ceil(H/s), ceil(W/s))        soft labels (stores labeled with
                        float16, sharded                      soft_stride s only)

Every per-image array has one chunk per shard, so reading a column for the whole store (the done
set, all sizes) is one read per shard, not per image. Label maps and confidences live in one
array per image size (a *size group*), written through zarr's sharding codec: the images of one
size within a shard share a few files (``images_per_file`` of them per file) instead of one file
each. An image is found by its size (``size[i]``), then ``labels/<H>x<W>[i]``; positions of other
sizes stay empty (never written, so they take no space).
"""

from __future__ import annotations

import shutil
from enum import IntEnum
from pathlib import Path

import zarr
from zarr.codecs import ZstdCodec
from zarr.errors import ContainsArrayError

from core.errors import StoreError, StoreVersionError

FORMAT = "selftrain-label-store"
FORMAT_VERSION = 2

# The driver appends paths in blocks; large chunks keep the list to a few files.
PATHS_CHUNK = 4096
# Rows per chunk of a shard's centroid table (a shard of 256 images with up to 16 centroids each
# is one chunk; a reader decodes whole chunks, so larger ones cost more than their rows), and the
# table's capacity per image on average (only the rows written take space; readers read the
# first `shard_totals[k, CENTROID_ROWS]` rows).
CENTROID_CHUNK_ROWS = 4096
CENTROIDS_PER_IMAGE_CAPACITY = 4096
# Columns of `shard_totals` before the per-class counts.
DONE, CENTROID_ROWS = 0, 1
# Raw bytes of label pixels per inner chunk (one random read decodes one chunk) and per file.
CHUNK_PIXELS = 1 << 18
FILE_PIXELS = 1 << 26
# Label maps and confidences compress well and are written once: fast zstd.
IMAGE_COMPRESSOR = ZstdCodec(level=1)
IMAGE_KINDS = ("labels", "confidence")
# Class probabilities per size group, in stores labeled with soft labels only.
PROBABILITIES = "probabilities"
# The per-image and per-shard arrays (LabelStore.tables).
TABLES = ("paths", "status", "size", "reason", "run", "labeled_at", "class_pixels")
TABLES += ("centroids", "shard_totals")


class ImageStatus(IntEnum):
    """Where one image stands; the values are what the `status` array holds."""

    PENDING = 0
    DONE = 1
    FAILED = 2


def n_shards(n_images: int, images_per_shard: int) -> int:
    return -(-n_images // images_per_shard)


def create_tables(group: zarr.Group, num_classes: int, images_per_shard: int) -> None:
    """The empty per-image and per-shard arrays, and the groups of image arrays, of a new store.

    Dimension names let xarray open them (``xr.open_zarr(path)``: one dataset, dims ``image``,
    ``shard``, ...).
    """
    s = images_per_shard
    image = ("image",)

    def column(name: str, dtype: str | type, fill, width: int | None = None, dim: str = "") -> None:
        shape, chunks, dims = (0,), (s,), image
        if width is not None:
            shape, chunks, dims = (0, width), (s, width), ("image", dim)
        group.create_array(
            name, shape=shape, dtype=dtype, chunks=chunks, fill_value=fill, dimension_names=dims
        )

    group.create_array("paths", shape=(0,), dtype=str, chunks=(PATHS_CHUNK,), dimension_names=image)
    column("status", "uint8", 0)
    column("size", "int32", 0, 2, "side")
    column("reason", str, "")
    column("run", "int32", -1)
    column("labeled_at", "float64", 0.0)
    column("class_pixels", "int64", 0, num_classes, "class")
    capacity = s * CENTROIDS_PER_IMAGE_CAPACITY
    group.create_array(
        "centroids",
        shape=(0, capacity, 5),
        dtype="float64",
        chunks=(1, min(CENTROID_CHUNK_ROWS, capacity), 5),
        fill_value=float("nan"),
        dimension_names=("shard", "centroid_row", "centroid_field"),
    )
    width = 2 + 2 * num_classes
    group.create_array(
        "shard_totals",
        shape=(0, width),
        dtype="int64",
        chunks=(1, width),
        fill_value=0,
        dimension_names=("shard", "total"),
    )
    for kind in IMAGE_KINDS:
        group.create_group(kind)


def resize_tables(group: zarr.Group, n_images: int, images_per_shard: int) -> None:
    """Grow every array of the store to ``n_images`` images (driver only, while no writer runs)."""
    shards = n_shards(n_images, images_per_shard)
    for name in ("status", "size", "reason", "run", "labeled_at", "class_pixels"):
        array = group[name]
        array.resize((n_images, *array.shape[1:]))
    for name in ("centroids", "shard_totals"):
        array = group[name]
        array.resize((shards, *array.shape[1:]))
    for kind in (*IMAGE_KINDS, PROBABILITIES):
        if kind in group:
            for _, array in group[kind].arrays():
                array.resize((n_images, *array.shape[1:]))


def size_key(height: int, width: int) -> str:
    """The name of a size group: ``"<height>x<width>"``."""
    return f"{height}x{width}"


def images_per_chunk_and_file(height: int, width: int, images_per_shard: int) -> tuple[int, int]:
    """Images per inner chunk and per file of a size group: about `CHUNK_PIXELS` and `FILE_PIXELS`
    raw bytes, powers of two, so both divide the shard and no file spans two shards.

    E.g. 64 x 128 images with 256 per shard: 32 per chunk, 256 per file (one file per shard);
    1024 x 2048: 1 per chunk, 32 per file.
    """
    pixels = height * width

    def power_of_two_at_most(value: int) -> int:
        return 1 << (max(1, value).bit_length() - 1)

    chunk = min(images_per_shard, power_of_two_at_most(CHUNK_PIXELS // pixels))
    file = min(images_per_shard, max(chunk, power_of_two_at_most(FILE_PIXELS // pixels)))
    return chunk, file


def open_or_create_image_arrays(
    group: zarr.Group,
    height: int,
    width: int,
    n_images: int,
    images_per_shard: int,
    ignore_index: int,
) -> tuple[zarr.Array, zarr.Array]:
    """The ``labels`` and ``confidence`` arrays of the ``height x width`` size group, created when
    missing.

    Two writers may create the same group at once: both write the same metadata (zarr writes a
    file whole, by rename), and the one that finds it made already opens it.
    """
    key = size_key(height, width)
    chunk, file = images_per_chunk_and_file(height, width, images_per_shard)
    arrays = []
    for kind, fill in zip(IMAGE_KINDS, (ignore_index, 0), strict=True):
        path = f"{kind}/{key}"
        try:
            array = group[path]
        except KeyError:
            try:
                array = group.create_array(
                    path,
                    shape=(n_images, height, width),
                    dtype="uint8",
                    chunks=(chunk, height, width),
                    shards=(file, height, width),
                    fill_value=fill,
                    compressors=IMAGE_COMPRESSOR,
                    dimension_names=("image", f"y{height}", f"x{width}"),
                )
            except ContainsArrayError:
                array = group[path]
        arrays.append(array)
    return arrays[0], arrays[1]


def open_or_create_probability_array(
    group: zarr.Group,
    height: int,
    width: int,
    n_images: int,
    images_per_shard: int,
    num_classes: int,
    stride: int,
) -> zarr.Array:
    """The ``probabilities`` array of the ``height x width`` size group (soft labels: each class's
    probability averaged over ``stride x stride`` pixels), created when missing; its files hold as
    many images as the label maps' do, so none spans two shards."""
    key = size_key(height, width)
    path = f"{PROBABILITIES}/{key}"
    shape = (num_classes, -(-height // stride), -(-width // stride))
    chunk, file = images_per_chunk_and_file(height, width, images_per_shard)
    try:
        return group[path]
    except KeyError:
        pass
    group.require_group(PROBABILITIES)
    try:
        return group.create_array(
            path,
            shape=(n_images, *shape),
            dtype="float16",
            chunks=(chunk, *shape),
            shards=(file, *shape),
            fill_value=0.0,
            compressors=IMAGE_COMPRESSOR,
            dimension_names=("image", "class", f"y{height}s{stride}", f"x{width}s{stride}"),
        )
    except ContainsArrayError:
        return group[path]


def open_group(path: Path, read_only: bool) -> zarr.Group:
    """The Zarr v3 group at ``path``.

    Raises:
        StoreError: There is none.
    """
    if not (path / "zarr.json").is_file():
        raise StoreError(path, "no label store here (zarr.json not found)")
    try:
        return zarr.open_group(str(path), mode="r" if read_only else "r+", zarr_format=3)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise StoreError(path, f"not a readable Zarr v3 group ({exc})") from exc


def check_format(path: Path, attrs: dict) -> None:
    """Check that a group's attributes are those of a label store of this format version.

    Raises:
        StoreVersionError: A label store of another version (the message says how to relabel).
        StoreError: Not a label store.
    """
    if attrs.get("format") != FORMAT:
        raise StoreError(
            path, f"not a label store, or one still being created (no format {FORMAT!r})"
        )
    version = attrs.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreVersionError(
            path,
            f"label store format version {version}; this code reads version {FORMAT_VERSION}. "
            "Label the images again: rerun the label job with overwrite: true (it replaces this "
            "store) or with a new store path",
        )


def path_taken(path: Path) -> bool:
    """Whether ``path`` holds anything: a file, or a folder that is not empty."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def delete_store(path: Path) -> None:
    """Delete the label store (of any format version) at ``path``.

    Raises:
        StoreError: ``path`` holds something else; an overwrite pointed at the wrong folder must
            not wipe it.
    """
    try:
        check_format(path, open_group(path, read_only=True).attrs.asdict())
    except StoreVersionError:
        pass
    except StoreError as exc:
        raise StoreError(
            path, f"exists and is not a label store; not deleting it ({exc.problem})"
        ) from exc
    shutil.rmtree(path)
