"""The pseudo-label store: a Zarr v3 group that a teacher's labels are written into, shard by shard.

One group per labeling: one teacher, one set of inference settings, a list of images that can grow.
Each execution of the label job on it is a "run". The arrays (format version 2) are described in
core.store_layout and docs/store.md; in short, images are grouped into shards of
``images_per_shard`` consecutive indices, every per-image array has one chunk per shard, and label
maps and confidences live in one sharded array per image size. A shard is written by exactly one
`ShardWriter` (core.store_writer) at a time, status last, so an image counts as done only once
everything about it is on disk.

Readers read columns (the done set, the centroid table, per-shard totals) in one read per shard,
never one per image: at 10^6 images and 256 per shard, that is about 4,000 small reads.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

from core.configs import IMAGES_PER_SHARD, check_images_per_shard
from core.errors import StoreError
from core.labels import LabelSpace
from core.store_check import class_totals
from core.store_layout import (
    CENTROID_ROWS,
    FORMAT,
    FORMAT_VERSION,
    TABLES,
    ImageStatus,
    check_format,
    create_tables,
    delete_store,
    n_shards,
    open_group,
    open_or_create_image_arrays,
    open_or_create_probability_array,
    path_taken,
    resize_tables,
    size_key,
)
from core.store_writer import FLUSH_BYTES, ShardWriter

# Shards whose centroid tables are read in one call (a block is padded to its longest table).
_CENTROID_BLOCK = 64


class LabelStore:
    """A label store opened with `LabelStore.create` or `LabelStore.open`.

    Writers: the labeling driver adds images and records runs and progress; each shard is written
    by one `ShardWriter` (`shard_writer`). Readers (the student, `selftrain store-info`, the
    dashboard) use `done_indices`, `label`, `centroids`, `class_pixels` and `summary`.

    Attributes:
        path: The store's folder.
        label_space: The teacher's classes.
        teacher: The teacher's identity (core.labeling.describe_teacher).
        settings: The inference settings that shaped the labels.
        images_per_shard: Images per shard (a power of two, fixed when the store is created).
        tables: The per-image and per-shard zarr arrays, by name (for `ShardWriter`).
    """

    def __init__(self, path: Path, group: zarr.Group) -> None:
        attrs = group.attrs.asdict()
        check_format(path, attrs)
        self.path = path
        self._group = group
        self.label_space = LabelSpace.from_dict(attrs["label_space"])
        self.teacher: dict = attrs["teacher"]
        self.settings: dict = attrs["settings"]
        self.images_per_shard = int(attrs["images_per_shard"])
        self._open_arrays()

    def _open_arrays(self) -> None:
        self.tables: dict[str, zarr.Array] = {}
        for name in TABLES:
            try:
                self.tables[name] = self._group[name]
            except KeyError as exc:
                raise StoreError(self.path, f"damaged label store: {name!r} is missing") from exc
            except (ValueError, OSError) as exc:  # metadata that is not JSON, or unreadable
                raise StoreError(self.path, f"damaged label store: {name!r}: {exc}") from exc
        self._image_arrays: dict[str, tuple[zarr.Array, zarr.Array]] = {}

    # ----------------------------------------------------------------------------------------------
    # Creating and opening

    @classmethod
    def create(
        cls,
        path: str | Path,
        image_paths: Sequence[str],
        image_sizes: Sequence[tuple[int, int] | None] | None,
        label_space: LabelSpace,
        teacher: dict,
        settings: dict,
        overwrite: bool = False,
        images_per_shard: int = IMAGES_PER_SHARD,
    ) -> LabelStore:
        """Create an empty store holding the list of images to label.

        Args:
            path: A folder that does not exist yet (or an existing store, with ``overwrite``).
            image_paths: The images, in the order they get their indices.
            image_sizes: (height, width) of each image where already known, else ``None``; the
                writers record sizes as they read the images.
            label_space: The teacher's classes.
            teacher: The teacher's identity (checkpoint, sha256, model name, ...), JSON-able.
            settings: The inference settings that shape the labels (mode, scales, ...), JSON-able.
            overwrite: Delete an existing store at ``path`` first (of any format version).
            images_per_shard: Images per shard, a power of two (core.store_layout).

        Raises:
            StoreError: ``path`` exists and ``overwrite`` is false, or ``path`` holds something
                that is not a label store (never deleted, even with ``overwrite``).
            ValueError: ``images_per_shard`` is not a power of two up to 65536.
        """
        path = Path(path)
        check_images_per_shard(images_per_shard)
        if path_taken(path):
            if not overwrite:
                raise StoreError(path, "already exists; set overwrite to replace it")
            delete_store(path)
        attributes = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "images_per_shard": images_per_shard,
            "label_space": label_space.to_dict(),
            "class_names": list(label_space.names),
            "ignore_index": label_space.ignore_index,
            "teacher": teacher,
            "settings": settings,
            "created_at": time.time(),
            "runs": [],
            "progress": None,
        }
        group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        create_tables(group, label_space.num_classes, images_per_shard)
        # The attributes are the commit point: a reader that opens the store while it is being
        # created sees "not a label store", never a store without its arrays. (One write:
        # `group.attrs.update` would write zarr.json once per key.)
        group.update_attributes(attributes)
        store = cls(path, group)
        store.add_images(image_paths, image_sizes)
        return store

    @classmethod
    def open(cls, path: str | Path, read_only: bool = False) -> LabelStore:
        """Open an existing store.

        Raises:
            StoreVersionError: It is a label store of another format version (relabel it).
            StoreError: Nothing is at ``path``, or it is not a label store.
        """
        path = Path(path)
        return cls(path, open_group(path, read_only))

    def add_images(
        self,
        image_paths: Sequence[str],
        image_sizes: Sequence[tuple[int, int] | None] | None = None,
    ) -> list[int]:
        """Append the images not in the store yet (driver only, while no writer runs).

        Paths already in the store are skipped, so the same list can be offered on every run.

        Returns:
            The indices given to the new images, in the order offered.
        """
        if image_sizes is not None and len(image_sizes) != len(image_paths):
            raise ValueError(f"{len(image_paths)} image paths but {len(image_sizes)} sizes")
        known = set(self.image_paths())
        new: list[int] = []
        for position, image_path in enumerate(image_paths):
            if image_path not in known:
                known.add(image_path)
                new.append(position)
        if not new:
            return []
        start = self.n_images
        end = start + len(new)
        # Every other array grows first and `paths` last: n_images is len(paths), so an append cut
        # short leaves no image without its rows.
        resize_tables(self._group, end, self.images_per_shard)
        self._open_arrays()
        if image_sizes is not None:
            known_sizes = [(start + k, image_sizes[p]) for k, p in enumerate(new)]
            rows = [(i, s) for i, s in known_sizes if s is not None]
            if rows:
                self.tables["size"].set_orthogonal_selection(
                    (np.array([i for i, _ in rows]), slice(None)), np.array([s for _, s in rows])
                )
        self.tables["paths"].append(np.array([image_paths[p] for p in new], dtype=str))
        self._open_arrays()
        return list(range(start, end))

    # ----------------------------------------------------------------------------------------------
    # The image list, shards and per-image status

    @property
    def n_images(self) -> int:
        return int(self.tables["paths"].shape[0])

    @property
    def n_shards(self) -> int:
        return n_shards(self.n_images, self.images_per_shard)

    def shard_range(self, shard: int) -> tuple[int, int]:
        """The images of a shard: ``range(first, stop)``."""
        first = shard * self.images_per_shard
        return first, min(first + self.images_per_shard, self.n_images)

    def shards_of(self, indices: Sequence[int] | np.ndarray) -> list[tuple[int, np.ndarray]]:
        """``(shard, its indices among these)`` for each shard that holds any, in shard order."""
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        if indices.size == 0:
            return []
        shards = indices // self.images_per_shard
        parts = np.split(indices, np.flatnonzero(np.diff(shards)) + 1)
        return [(int(part[0] // self.images_per_shard), part) for part in parts]

    def image_paths(self) -> list[str]:
        """Every image path, index order."""
        return [str(p) for p in self.tables["paths"][:]] if self.n_images else []

    def image_path(self, index: int) -> str:
        self._check_index(index)
        return str(self.tables["paths"][index])

    def paths_of(self, indices: Sequence[int] | np.ndarray) -> list[str]:
        """The paths of the given images (one read per chunk of the list, not per image)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return []
        self._check_indices(indices)
        return [str(p) for p in self.tables["paths"].get_coordinate_selection(indices)]

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of an image.

        Raises:
            StoreError: The image has not been read yet (pending, or failed before decoding).
        """
        self._check_index(index)
        height, width = (int(v) for v in self.tables["size"][index])
        if height == 0:
            raise StoreError(self.path, f"size of image {index} is not known yet")
        return height, width

    def status(self, index: int) -> ImageStatus:
        self._check_index(index)
        return ImageStatus(int(self.tables["status"][index]))

    def statuses(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Status values (uint8, see `ImageStatus`) of the given images, or of all."""
        if indices is None:
            return self.tables["status"][:] if self.n_images else np.zeros(0, dtype=np.uint8)
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return np.zeros(0, dtype=np.uint8)
        self._check_indices(indices)
        return self.tables["status"].get_coordinate_selection(indices)

    def pending_indices(self, include_failed: bool = True) -> np.ndarray:
        """Indices of the images still to label: pending, and failed ones unless told otherwise."""
        status = self.statuses()
        todo = status == ImageStatus.PENDING
        if include_failed:
            todo |= status == ImageStatus.FAILED
        return np.flatnonzero(todo)

    def done_indices(self) -> np.ndarray:
        return np.flatnonzero(self.statuses() == ImageStatus.DONE)

    def failures(self) -> list[tuple[int, str, str]]:
        """(index, image path, reason) of every failed image."""
        failed = np.flatnonzero(self.statuses() == ImageStatus.FAILED)
        if failed.size == 0:
            return []
        paths = self.paths_of(failed)
        reasons = self.tables["reason"].get_coordinate_selection(failed)
        return [(int(i), p, str(r)) for i, p, r in zip(failed, paths, reasons, strict=True)]

    def image_record(self, index: int) -> dict:
        """Everything recorded about one image, JSON-able."""
        status = self.status(index)
        record: dict = {
            "index": index,
            "path": self.image_path(index),
            "status": status.name.lower(),
            "size": None,
            "reason": None,
            "run": None,
            "labeled_at": None,
        }
        height, width = (int(v) for v in self.tables["size"][index])
        if height:
            record["size"] = [height, width]
        if status == ImageStatus.FAILED:
            record["reason"] = str(self.tables["reason"][index])
        if status == ImageStatus.DONE:
            record["run"] = int(self.tables["run"][index])
            record["labeled_at"] = float(self.tables["labeled_at"][index])
        return record

    # ----------------------------------------------------------------------------------------------
    # Writing (one writer per shard)

    def shard_writer(self, shard: int, run: int = 0, flush_bytes: int = FLUSH_BYTES) -> ShardWriter:
        """The writer of ``shard``; the caller makes sure it is the shard's only one.

        Args:
            shard: The shard (images ``shard_range(shard)``).
            run: The labeling run recorded with each image it writes.
            flush_bytes: Write out buffered images once this many label and confidence bytes wait.
        """
        return ShardWriter(self, shard, run, flush_bytes)

    def write(
        self,
        index: int,
        label: np.ndarray,
        confidence: np.ndarray,
        centroids: np.ndarray,
        run: int = 0,
        probabilities: np.ndarray | None = None,
    ) -> None:
        """Store the teacher's output for one image and mark it done: a writer of its shard for
        one image (tests and tools; the label job writes whole shards).

        Args:
            index: The image.
            label: (H, W) uint8 class ids (``ignore_index`` allowed).
            confidence: (H, W) uint8, max softmax x 255.
            centroids: (k, 4) rows (class, y, x, area) from core.centroids.find_centroids.
            run: The labeling run writing it.
            probabilities: Soft labels, in a store that keeps them (`soft_stride`).
        """
        self._check_index(index)
        with self.shard_writer(index // self.images_per_shard, run) as writer:
            writer.write(index, label, confidence, centroids, probabilities)

    def mark_failed(self, index: int, reason: str, size: tuple[int, int] | None = None) -> None:
        """Record that an image could not be labeled, and why (one image; see `write`)."""
        self._check_index(index)
        with self.shard_writer(index // self.images_per_shard) as writer:
            writer.mark_failed(index, reason, size)

    def image_arrays(
        self, height: int, width: int, create: bool = False
    ) -> tuple[zarr.Array, zarr.Array]:
        """The ``labels`` and ``confidence`` arrays of the images of size ``height x width``;
        StoreError when none of that size were written (and ``create`` is false)."""
        key = size_key(height, width)
        if key not in self._image_arrays:
            if create:
                arrays = open_or_create_image_arrays(
                    self._group,
                    height,
                    width,
                    self.n_images,
                    self.images_per_shard,
                    self.label_space.ignore_index,
                )
            else:
                try:
                    arrays = (self._group[f"labels/{key}"], self._group[f"confidence/{key}"])
                except KeyError as exc:
                    raise StoreError(self.path, f"damaged: no arrays for {key} images") from exc
            self._image_arrays[key] = arrays
        return self._image_arrays[key]

    @property
    def soft_stride(self) -> int | None:
        """The cell size of the class probabilities this store keeps (soft labels), else None."""
        stride = self.settings.get("soft_stride")
        return None if stride is None else int(stride)

    def probability_array(self, height: int, width: int, create: bool = False) -> zarr.Array:
        """The ``probabilities`` array of the images of size ``height x width``.

        Raises:
            StoreError: The store keeps no probabilities, or none of that size were written (and
                ``create`` is false).
        """
        stride, key = self.soft_stride, size_key(height, width)
        if stride is None:
            raise StoreError(self.path, "keeps hard labels only; label with soft_labels: true")
        if create:
            return open_or_create_probability_array(
                self._group,
                height,
                width,
                self.n_images,
                self.images_per_shard,
                self.label_space.num_classes,
                stride,
            )
        try:
            return self._group[f"probabilities/{key}"]
        except KeyError as exc:
            raise StoreError(self.path, f"damaged: no probabilities for {key} images") from exc

    # ----------------------------------------------------------------------------------------------
    # Reading labels and centroids

    def probabilities(self, index: int) -> np.ndarray:
        """(C, ceil(H / s), ceil(W / s)) float32 class probabilities of a done image (s x s cell
        averages, s = `soft_stride`)."""
        self._require_done(index)
        height, width = (int(v) for v in self.tables["size"][index])
        return self.probability_array(height, width)[index].astype(np.float32)

    def label(self, index: int, confidence_threshold: float = 0.0) -> np.ndarray:
        """The hard label map of a done image.

        Args:
            index: The image.
            confidence_threshold: Pixels whose confidence is below this (0..1) become ignore.

        Returns:
            (H, W) uint8 class ids, ``ignore_index`` where ignored.
        """
        labels, confidence = self._done_image_arrays(index)
        label = labels[index]
        if confidence_threshold > 0:
            confident = confidence[index] >= confidence_threshold * 255
            label = np.where(confident, label, np.uint8(self.label_space.ignore_index))
        return label

    def confidence(self, index: int) -> np.ndarray:
        """(H, W) uint8 teacher confidence (max softmax x 255) of a done image."""
        return self._done_image_arrays(index)[1][index]

    def image_centroids(self, index: int) -> np.ndarray:
        """(k, 4) float64 rows (class, y, x, area) of a done image."""
        self._require_done(index)
        table = self.centroids(indices=[index])
        return table[:, 1:]

    def centroids(
        self,
        indices: Sequence[int] | np.ndarray | None = None,
        done: np.ndarray | None = None,
    ) -> np.ndarray:
        """The centroids table over done images (all, or those among ``indices``), read one block
        of shards at a time.

        Args:
            indices: Only these images (those of them that are done).
            done: The done indices, when the caller has just read them (`done_indices`).

        Returns:
            (N, 5) float64 rows (image index, class, y, x, area), by image index.
        """
        if done is None:
            done = self.done_indices()
        if indices is not None:
            done = np.intersect1d(done, np.asarray(indices, dtype=np.int64))
        if done.size == 0:
            return np.zeros((0, 5))
        shards = np.unique(done // self.images_per_shard)
        totals = self.tables["shard_totals"]
        rows = totals.get_orthogonal_selection((shards, [CENTROID_ROWS]))[:, 0]
        table = np.empty((int(rows.sum()), 5))
        starts = np.cumsum(rows) - rows
        for first in range(0, len(shards), _CENTROID_BLOCK):
            block = slice(first, first + _CENTROID_BLOCK)
            longest = int(rows[block].max())
            if longest == 0:
                continue
            # One read for the block: its tables padded to the longest.
            data = self.tables["centroids"].get_orthogonal_selection(
                (shards[block], slice(0, longest), slice(None))
            )
            for k, (count, start) in enumerate(zip(rows[block], starts[block], strict=True)):
                table[start : start + count] = data[k, :count]
        return self._rows_of_done_images(table, done)

    def _rows_of_done_images(self, table: np.ndarray, done: np.ndarray) -> np.ndarray:
        """The rows of ``table`` whose image is done (the others, and NaN rows, a killed writer
        left), by image index."""
        is_done = np.zeros(self.n_images + 1, dtype=bool)  # the last entry stands for NaN
        is_done[done] = True
        image = np.where(np.isnan(table[:, 0]), self.n_images, table[:, 0]).astype(np.int64)
        keep = is_done[image]
        if not keep.all():
            table = table[np.flatnonzero(keep)]
        if (np.diff(table[:, 0]) < 0).any():
            # Stable: an image's rows keep the order find_centroids gave them.
            table = table[np.argsort(table[:, 0], kind="stable")]
        return table

    def _done_image_arrays(self, index: int) -> tuple[zarr.Array, zarr.Array]:
        self._require_done(index)
        height, width = (int(v) for v in self.tables["size"][index])
        return self.image_arrays(height, width)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.n_images:
            raise StoreError(self.path, f"image index {index} out of range 0..{self.n_images - 1}")

    def _check_indices(self, indices: np.ndarray) -> None:
        for index in (int(indices.min()), int(indices.max())):
            self._check_index(index)

    def _require_done(self, index: int) -> None:
        status = self.status(index)
        if status != ImageStatus.DONE:
            raise StoreError(self.path, f"image {index} is {status.name.lower()}, not labeled")

    # ----------------------------------------------------------------------------------------------
    # Runs, progress, summary (the driver writes; anyone reads)

    @property
    def attributes(self) -> dict:
        """The group's attributes as they were when the store was opened."""
        return self._group.attrs.asdict()

    @property
    def progress(self) -> dict | None:
        """The latest run's progress: run, state, done, failed, total, images_per_s, updated_at.

        Open the store again to see a running job's newer progress.
        """
        return self._group.attrs.get("progress")

    def start_run(self, job_config: dict) -> int:
        """Record the start of a labeling run; returns its number (0, 1, ...)."""
        runs = list(self._group.attrs.get("runs", []))
        run = len(runs)
        runs.append(
            {
                "run": run,
                "state": "running",
                "started_at": time.time(),
                "finished_at": None,
                "job_config": job_config,
            }
        )
        self._group.update_attributes({"runs": runs})
        return run

    def set_progress(
        self, run: int, state: str, done: int, failed: int, total: int, images_per_s: float
    ) -> None:
        """Publish progress (driver only): done and failed images out of total in this store."""
        progress = {
            "run": run,
            "state": state,
            "done": done,
            "failed": failed,
            "total": total,
            "images_per_s": round(images_per_s, 3),
            "updated_at": time.time(),
        }
        attributes: dict = {"progress": progress}
        if state != "running":
            runs = list(self._group.attrs.get("runs", []))
            runs[run] = {**runs[run], "state": state, "finished_at": time.time(), **progress}
            attributes["runs"] = runs
        self._group.update_attributes(attributes)

    def set_audit(self, audit: dict) -> None:
        """Record the teacher's audit (core.audit.Audit as JSON; driver only)."""
        self._group.update_attributes({"audit": audit})

    def class_pixels(self) -> np.ndarray:
        """(C,) int64 pixels of each class over the done images (from the per-shard totals)."""
        return class_totals(self, self.statuses())[0]

    def summary(self) -> dict:
        """JSON-able summary: counts of images by status, and pixels and centroids per class.

        Reads the status column and the per-shard totals: one read each per shard.
        """
        status = self.statuses()
        counts = np.bincount(status, minlength=len(ImageStatus))
        names = self.label_space.names
        pixels, centroids = class_totals(self, status)
        return {
            "path": str(self.path),
            "n_images": self.n_images,
            "n_done": int(counts[ImageStatus.DONE]),
            "n_failed": int(counts[ImageStatus.FAILED]),
            "n_pending": int(counts[ImageStatus.PENDING]),
            "images_per_shard": self.images_per_shard,
            "pixels_per_class": {n: int(c) for n, c in zip(names, pixels, strict=True)},
            "centroids_per_class": {n: int(c) for n, c in zip(names, centroids, strict=True)},
            "teacher": self.teacher,
            "settings": self.settings,
            "progress": self.progress,
            "audit": self._group.attrs.get("audit"),
        }


def store_info(path: str | Path) -> dict:
    """The summary of the store at ``path`` (what `selftrain store-info` prints)."""
    return LabelStore.open(path, read_only=True).summary()
