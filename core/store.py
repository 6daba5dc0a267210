"""The pseudo-label store: a Zarr v3 group that a teacher's labels are written into, image by image.

One group per labeling: one teacher, one set of inference settings, a list of images that can grow.
Each execution of the label job on it is a "run". The layout (documented in docs/store.md):

    zarr.json            attributes: format, label space, teacher identity, inference settings,
                         runs, progress (written by the driver only)
    paths                (n,) str, the image list in a fixed order (driver only)
    status               (n,) uint8, 0 pending, 1 done, 2 failed; chunk 1, written last for an image
    size                 (n, 2) int32, (height, width) once the image has been read; chunk (1, 2)
    reason               (n,) str, why an image failed; chunk 1
    class_pixels         (n, C) int64, pixels per class of each label map; chunk (1, C)
    labels/<i>           (H, W) uint8 hard label map of image i (255 = ignore), one chunk
    confidence/<i>       (H, W) uint8 max softmax x 255 of image i, one chunk
    centroids/<i>        (k, 4) float64 rows (class, y, x, area) of image i, one chunk

Every chunk belongs to one image, so actors labeling different images never write the same file,
and an image counts as done only once its status chunk says so: a writer killed half way through an
image leaves it pending, and the next run labels it again.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path

import numpy as np
import zarr

from core.errors import StoreError
from core.labels import LabelSpace

FORMAT = "selftrain-label-store"
FORMAT_VERSION = 1

# The driver appends paths in blocks; large chunks keep the list to a few files.
_PATHS_CHUNK = 4096
# Failure reasons longer than this are cut (a traceback does not belong in the store).
_MAX_REASON = 500


class ImageStatus(IntEnum):
    """Where one image stands; the values are what the `status` array holds."""

    PENDING = 0
    DONE = 1
    FAILED = 2


class LabelStore:
    """A label store opened with `LabelStore.create` or `LabelStore.open`.

    Writers: the labeling driver adds images and records runs and progress; actors call `write` and
    `mark_failed` for the images they were given, never for the same image at the same time.
    Readers (the student, `selftrain store-info`) use `done_indices`, `label`, `centroids` and
    `summary`.
    """

    def __init__(self, path: Path, group: zarr.Group) -> None:
        attrs = group.attrs.asdict()
        if attrs.get("format") != FORMAT:
            raise StoreError(
                path, f"not a label store, or one still being created (no format {FORMAT!r})"
            )
        if attrs.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                path,
                f"store format version {attrs.get('format_version')} is not the supported "
                f"version {FORMAT_VERSION}",
            )
        self.path = path
        self._group = group
        self.label_space = LabelSpace.from_dict(attrs["label_space"])
        self.teacher: dict = attrs["teacher"]
        self.settings: dict = attrs["settings"]
        self._open_arrays()

    def _open_arrays(self) -> None:
        try:
            self._paths = self._group["paths"]
            self._status = self._group["status"]
            self._size = self._group["size"]
            self._reason = self._group["reason"]
            self._class_pixels = self._group["class_pixels"]
            self._labels = self._group["labels"]
            self._confidence = self._group["confidence"]
            self._centroids = self._group["centroids"]
        except KeyError as exc:
            raise StoreError(self.path, f"damaged label store: {exc.args[0]!r} is missing") from exc

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
    ) -> LabelStore:
        """Create an empty store holding the list of images to label.

        Args:
            path: A folder that does not exist yet (or an existing store, with ``overwrite``).
            image_paths: The images, in the order they get their indices.
            image_sizes: (height, width) of each image where already known, else ``None``; the
                actors record sizes as they read the images.
            label_space: The teacher's classes.
            teacher: The teacher's identity (checkpoint, sha256, model name, ...), JSON-able.
            settings: The inference settings that shape the labels (mode, scales, ...), JSON-able.
            overwrite: Delete an existing store at ``path`` first.

        Raises:
            StoreError: ``path`` exists and ``overwrite`` is false, or ``path`` holds something
                that is not a label store (never deleted, even with ``overwrite``).
        """
        path = Path(path)
        if path_taken(path):
            if not overwrite:
                raise StoreError(path, "already exists; set overwrite to replace it")
            _delete_store(path)
        attributes = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
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
        _create_arrays(group, label_space.num_classes)
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
            StoreError: Nothing is at ``path``, or it is not a label store of this version.
        """
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise StoreError(path, "no label store here (zarr.json not found)")
        try:
            group = zarr.open_group(str(path), mode="r" if read_only else "r+", zarr_format=3)
        except (ValueError, KeyError, FileNotFoundError) as exc:
            raise StoreError(path, f"not a readable Zarr v3 group ({exc})") from exc
        return cls(path, group)

    def add_images(
        self,
        image_paths: Sequence[str],
        image_sizes: Sequence[tuple[int, int] | None] | None = None,
    ) -> list[int]:
        """Append the images not in the store yet (driver only).

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
        # The per-image arrays grow first and `paths` last: n_images is len(paths), so an append cut
        # short leaves no image without its rows.
        self._status.resize((end,))
        self._size.resize((end, 2))
        self._reason.resize((end,))
        self._class_pixels.resize((end, self.label_space.num_classes))
        if image_sizes is not None:
            for offset, position in enumerate(new):
                if image_sizes[position] is not None:
                    self._size[start + offset] = image_sizes[position]
        self._paths.append(np.array([image_paths[p] for p in new], dtype=str))
        self._open_arrays()
        return list(range(start, end))

    # ----------------------------------------------------------------------------------------------
    # The image list and per-image status

    @property
    def n_images(self) -> int:
        return int(self._paths.shape[0])

    def image_paths(self) -> list[str]:
        """Every image path, index order."""
        return [str(p) for p in self._paths[:]] if self.n_images else []

    def image_path(self, index: int) -> str:
        self._check_index(index)
        return str(self._paths[index])

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of an image.

        Raises:
            StoreError: The image has not been read yet (pending, or failed before decoding).
        """
        self._check_index(index)
        height, width = (int(v) for v in self._size[index])
        if height == 0:
            raise StoreError(self.path, f"size of image {index} is not known yet")
        return height, width

    def status(self, index: int) -> ImageStatus:
        self._check_index(index)
        return ImageStatus(int(self._status[index]))

    def statuses(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Status values (uint8, see `ImageStatus`) of the given images, or of all."""
        if indices is None:
            return self._status[:] if self.n_images else np.zeros(0, dtype=np.uint8)
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return np.zeros(0, dtype=np.uint8)
        for index in (int(indices.min()), int(indices.max())):
            self._check_index(index)
        return self._status.get_coordinate_selection(indices)

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
        paths = self.image_paths()
        return [(int(i), paths[i], str(self._reason[int(i)])) for i in failed]

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
        height, width = (int(v) for v in self._size[index])
        if height:
            record["size"] = [height, width]
        if status == ImageStatus.FAILED:
            record["reason"] = str(self._reason[index])
        if status == ImageStatus.DONE:
            attrs = self._labels[str(index)].attrs
            record["run"] = attrs.get("run")
            record["labeled_at"] = attrs.get("labeled_at")
        return record

    # ----------------------------------------------------------------------------------------------
    # Writing one image (actors)

    def write(
        self,
        index: int,
        label: np.ndarray,
        confidence: np.ndarray,
        centroids: np.ndarray,
        run: int = 0,
    ) -> None:
        """Store the teacher's output for one image and mark it done.

        Args:
            index: The image.
            label: (H, W) uint8 class ids (``ignore_index`` allowed).
            confidence: (H, W) uint8, max softmax x 255.
            centroids: (k, 4) rows (class, y, x, area) from core.centroids.find_centroids.
            run: The labeling run writing it (recorded with the label).
        """
        self._check_index(index)
        label, confidence, centroids = self._checked_outputs(index, label, confidence, centroids)
        counts = np.bincount(label.ravel(), minlength=256)
        num_classes = self.label_space.num_classes
        if counts[num_classes : self.label_space.ignore_index].any():
            raise ValueError(f"image {index}: label holds ids >= {num_classes}")
        key = str(index)
        attributes = {"run": run, "labeled_at": time.time()}
        self._labels.create_array(
            key,
            data=label,
            chunks=label.shape,
            fill_value=self.label_space.ignore_index,
            attributes=attributes,
            overwrite=True,
        )
        self._confidence.create_array(
            key, data=confidence, chunks=confidence.shape, fill_value=0, overwrite=True
        )
        self._centroids.create_array(
            key, data=centroids, chunks=(max(1, len(centroids)), 4), overwrite=True
        )
        self._class_pixels[index] = counts[:num_classes]
        self._size[index] = label.shape
        self._reason[index] = ""
        # Written last: an image is done only once everything above is on disk.
        self._status[index] = ImageStatus.DONE

    def mark_failed(self, index: int, reason: str, size: tuple[int, int] | None = None) -> None:
        """Record that an image could not be labeled, and why."""
        self._check_index(index)
        self._reason[index] = reason[:_MAX_REASON] or "unknown error"
        if size is not None:
            self._size[index] = size
        self._status[index] = ImageStatus.FAILED

    def _checked_outputs(
        self, index: int, label: np.ndarray, confidence: np.ndarray, centroids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        label = np.asarray(label)
        confidence = np.asarray(confidence)
        centroids = np.asarray(centroids, dtype=np.float64)
        if label.dtype != np.uint8 or label.ndim != 2:
            raise ValueError(
                f"image {index}: label must be (H, W) uint8, got {label.dtype} {label.shape}"
            )
        if confidence.dtype != np.uint8 or confidence.shape != label.shape:
            raise ValueError(
                f"image {index}: confidence must be uint8 {label.shape}, "
                f"got {confidence.dtype} {confidence.shape}"
            )
        if centroids.ndim != 2 or centroids.shape[1] != 4:
            raise ValueError(f"image {index}: centroids must be (k, 4), got {centroids.shape}")
        return label, confidence, centroids

    # ----------------------------------------------------------------------------------------------
    # Reading labels

    def label(self, index: int, confidence_threshold: float = 0.0) -> np.ndarray:
        """The hard label map of a done image.

        Args:
            index: The image.
            confidence_threshold: Pixels whose confidence is below this (0..1) become ignore.

        Returns:
            (H, W) uint8 class ids, ``ignore_index`` where ignored.
        """
        self._require_done(index)
        label = self._labels[str(index)][...]
        if confidence_threshold > 0:
            confident = self._confidence[str(index)][...] >= confidence_threshold * 255
            label = np.where(confident, label, np.uint8(self.label_space.ignore_index))
        return label

    def confidence(self, index: int) -> np.ndarray:
        """(H, W) uint8 teacher confidence (max softmax x 255) of a done image."""
        self._require_done(index)
        return self._confidence[str(index)][...]

    def image_centroids(self, index: int) -> np.ndarray:
        """(k, 4) float64 rows (class, y, x, area) of a done image."""
        self._require_done(index)
        return self._centroids[str(index)][...]

    def centroids(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """The centroids table over done images (all, or those among ``indices``).

        Returns:
            (N, 5) float64 rows (image index, class, y, x, area), by image index.
        """
        done = self.done_indices()
        if indices is not None:
            done = np.intersect1d(done, np.asarray(indices, dtype=np.int64))
        parts = [np.zeros((0, 5))]
        for index in done:
            rows = self._centroids[str(int(index))][...]
            parts.append(np.column_stack([np.full(len(rows), float(index)), rows]))
        return np.concatenate(parts)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.n_images:
            raise StoreError(self.path, f"image index {index} out of range 0..{self.n_images - 1}")

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

    def class_pixels(self, done: np.ndarray | None = None) -> np.ndarray:
        """(C,) int64 pixels of each class over the done images (``done``: their indices, when
        the caller has them)."""
        if done is None:
            done = self.done_indices()
        if not len(done):
            return np.zeros(self.label_space.num_classes, dtype=np.int64)
        return self._class_pixels.get_orthogonal_selection((done, slice(None))).sum(axis=0)

    def summary(self) -> dict:
        """JSON-able summary: counts of images by status, and pixels and centroids per class."""
        status = self.statuses()
        done = np.flatnonzero(status == ImageStatus.DONE)
        names = self.label_space.names
        pixels = self.class_pixels(done)
        classes = self.centroids()[:, 1].astype(np.int64)
        centroid_counts = np.bincount(classes, minlength=len(names))[: len(names)]
        return {
            "path": str(self.path),
            "n_images": self.n_images,
            "n_done": int(done.size),
            "n_failed": int((status == ImageStatus.FAILED).sum()),
            "n_pending": int((status == ImageStatus.PENDING).sum()),
            "pixels_per_class": {n: int(c) for n, c in zip(names, pixels, strict=True)},
            "centroids_per_class": {n: int(c) for n, c in zip(names, centroid_counts, strict=True)},
            "teacher": self.teacher,
            "settings": self.settings,
            "progress": self.progress,
        }


def _create_arrays(group: zarr.Group, num_classes: int) -> None:
    """The empty per-image arrays and the groups of per-image label arrays of a new store."""
    group.create_array("paths", shape=(0,), dtype=str, chunks=(_PATHS_CHUNK,))
    group.create_array("status", shape=(0,), dtype="uint8", chunks=(1,), fill_value=0)
    group.create_array("size", shape=(0, 2), dtype="int32", chunks=(1, 2), fill_value=0)
    group.create_array("reason", shape=(0,), dtype=str, chunks=(1,), fill_value="")
    group.create_array(
        "class_pixels",
        shape=(0, num_classes),
        dtype="int64",
        chunks=(1, num_classes),
        fill_value=0,
    )
    for name in ("labels", "confidence", "centroids"):
        group.create_group(name)


def store_info(path: str | Path) -> dict:
    """The summary of the store at ``path`` (what `selftrain store-info` prints)."""
    return LabelStore.open(path, read_only=True).summary()


def path_taken(path: Path) -> bool:
    """Whether ``path`` holds anything: a file, or a folder that is not empty."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def _delete_store(path: Path) -> None:
    # Only ever delete a label store: an overwrite pointed at the wrong folder must not wipe it.
    try:
        LabelStore.open(path, read_only=True)
    except StoreError as exc:
        raise StoreError(
            path, f"exists and is not a label store; not deleting it ({exc.problem})"
        ) from exc
    shutil.rmtree(path)
