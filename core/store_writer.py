"""Writing one shard of a label store: the images' label maps, confidences, centroids and rows.

A shard (``images_per_shard`` consecutive images, core.store_layout) has exactly one writer at a
time, a ``ShardWriter``: the label job gives each actor whole shards, so no two writers ever touch
the same file. (Zarr writes a file whole, but two writers that update different images of one
shard file would each write back the file without the other's images: one would be lost.)

The writer buffers finished images and writes them in one *flush*: at the end of the shard, or
earlier once ``flush_bytes`` of label and confidence pixels are waiting (so large images do not
pile up in memory). A flush writes, in this order:

1. the label maps and confidences (one write per size group and file),
2. the shard's centroid table (rows of done images first, in place, then the new rows),
3. the shard's rows of ``size``, ``class_pixels``, ``reason``, ``run`` and ``labeled_at``,
4. the shard's row of ``shard_totals`` (its done count and per-class sums),
5. the shard's ``status`` chunk, last.

An image is done only once step 5 says so; a writer killed before leaves the images of that flush
pending (readers ignore their rows, the next run labels them again), and one killed between steps
4 and 5 leaves totals whose done count differs from the status, which readers detect and recount.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.errors import StoreError
from core.store_layout import CENTROID_ROWS, CENTROIDS_PER_IMAGE_CAPACITY, DONE, ImageStatus

if TYPE_CHECKING:
    from core.store import LabelStore

# Label and confidence pixels (bytes) a writer holds before it flushes.
FLUSH_BYTES = 64 << 20
# Failure reasons longer than this are cut (a traceback does not belong in the store).
MAX_REASON = 500


@dataclass
class _Entry:
    """One buffered image: its outputs when labeled, its reason when it failed."""

    index: int
    label: np.ndarray | None = None
    confidence: np.ndarray | None = None
    centroids: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    counts: np.ndarray | None = None
    reason: str = ""
    size: tuple[int, int] | None = None


class ShardWriter:
    """The one writer of one shard (open it with `LabelStore.shard_writer`).

    As a context manager it flushes when the block ends normally; when it ends with an exception
    the buffered images are dropped and stay pending.

    Args:
        store: The store, opened for writing.
        shard: The shard's number.
        run: The labeling run recorded with each image.
        flush_bytes: Flush once this many bytes of label and confidence pixels are buffered.
    """

    def __init__(
        self, store: LabelStore, shard: int, run: int = 0, flush_bytes: int = FLUSH_BYTES
    ) -> None:
        if not 0 <= shard < store.n_shards:
            raise StoreError(store.path, f"shard {shard} out of range 0..{store.n_shards - 1}")
        self.store = store
        self.shard = shard
        self.run = run
        self.flush_bytes = flush_bytes
        self.first, self.stop = store.shard_range(shard)
        tables = store.tables
        region = slice(self.first, self.stop)
        self._status = tables["status"][region]
        self._size = tables["size"][region]
        self._reason = np.asarray(tables["reason"][region], dtype=object)
        self._run = tables["run"][region]
        self._labeled_at = tables["labeled_at"][region]
        self._class_pixels = tables["class_pixels"][region]
        self._rows_on_disk = int(tables["shard_totals"][shard, CENTROID_ROWS])
        table = tables["centroids"][shard, : self._rows_on_disk]
        # Rows of images that are not done were left by a writer killed mid-flush: drop them.
        self._table = table[self._is_done(table[:, 0])]
        self._buffer: dict[int, _Entry] = {}
        self._buffered_bytes = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.flush()

    def write(
        self,
        index: int,
        label: np.ndarray,
        confidence: np.ndarray,
        centroids: np.ndarray,
        probabilities: np.ndarray | None = None,
    ) -> None:
        """Add a labeled image (written at the next flush).

        Args:
            index: The image; it must belong to this shard.
            label: (H, W) uint8 class ids (``ignore_index`` allowed).
            confidence: (H, W) uint8, max softmax x 255.
            centroids: (k, 4) rows (class, y, x, area) from core.centroids.find_centroids.
            probabilities: (C, ceil(H / s), ceil(W / s)) class probabilities, in a store that
                keeps soft labels (``store.soft_stride`` = s); None in one that does not.

        Raises:
            ValueError: Wrong shapes or dtypes, class ids the store's label space lacks, or
                probabilities given to a store without soft labels or missing in one with them.
        """
        self._check_index(index)
        label, confidence, centroids = _checked_outputs(index, label, confidence, centroids)
        probabilities = self._checked_probabilities(index, label.shape, probabilities)
        space = self.store.label_space
        counts = np.bincount(label.ravel(), minlength=256)
        if counts[space.num_classes : space.ignore_index].any():
            raise ValueError(f"image {index}: label holds ids >= {space.num_classes}")
        self._buffer[index] = _Entry(
            index,
            label,
            confidence,
            centroids,
            probabilities,
            counts[: space.num_classes],
            size=label.shape,
        )
        self._buffered_bytes += 2 * label.size
        if self._buffered_bytes >= self.flush_bytes:
            self.flush()

    def _checked_probabilities(
        self, index: int, shape: tuple[int, int], probabilities: np.ndarray | None
    ) -> np.ndarray | None:
        stride = self.store.soft_stride
        if stride is None:
            if probabilities is not None:
                raise ValueError(f"image {index}: this store keeps no probabilities")
            return None
        expected = (
            self.store.label_space.num_classes,
            -(-shape[0] // stride),
            -(-shape[1] // stride),
        )
        if probabilities is None or np.shape(probabilities) != expected:
            got = None if probabilities is None else np.shape(probabilities)
            raise ValueError(f"image {index}: probabilities must be {expected}, got {got}")
        return np.asarray(probabilities, dtype=np.float16)

    def mark_failed(self, index: int, reason: str, size: tuple[int, int] | None = None) -> None:
        """Record that an image could not be labeled, and why (written at the next flush)."""
        self._check_index(index)
        reason = reason[:MAX_REASON] or "unknown error"
        self._buffer[index] = _Entry(index, reason=reason, size=size)

    def flush(self) -> None:
        """Write the buffered images, status last (see the module docstring)."""
        if not self._buffer:
            return
        entries = [self._buffer[i] for i in sorted(self._buffer)]
        labeled = [e for e in entries if e.label is not None]
        self._write_images(labeled)
        self._write_centroids(entries, labeled)
        status = self._status.copy()
        now = time.time()
        for entry in entries:
            local = entry.index - self.first
            status[local] = ImageStatus.DONE if entry.label is not None else ImageStatus.FAILED
            if entry.size is not None:
                self._size[local] = entry.size
            self._class_pixels[local] = 0 if entry.counts is None else entry.counts
            self._reason[local] = entry.reason
            self._run[local] = self.run if entry.label is not None else -1
            self._labeled_at[local] = now if entry.label is not None else 0.0
        tables = self.store.tables
        region = slice(self.first, self.stop)
        tables["size"][region] = self._size
        tables["class_pixels"][region] = self._class_pixels
        tables["reason"][region] = self._reason.astype(str)
        tables["run"][region] = self._run
        tables["labeled_at"][region] = self._labeled_at
        tables["shard_totals"][self.shard] = self._totals(status)
        # Last: until this chunk is written, the images of this flush are pending.
        tables["status"][region] = status
        self._status = status
        self._buffer.clear()
        self._buffered_bytes = 0

    def _write_images(self, labeled: list[_Entry]) -> None:
        """Label maps and confidences, one write per size group (files hold many images)."""
        by_size: dict[tuple[int, int], list[_Entry]] = {}
        for entry in labeled:
            by_size.setdefault(entry.label.shape, []).append(entry)
        for (height, width), group in by_size.items():
            arrays = list(self.store.image_arrays(height, width, create=True))
            indices = np.array([e.index for e in group], dtype=np.int64)
            kinds = [[e.label for e in group], [e.confidence for e in group]]
            if self.store.soft_stride is not None:
                arrays.append(self.store.probability_array(height, width, create=True))
                kinds.append([e.probabilities for e in group])
            for array, values in zip(arrays, kinds, strict=True):
                span = slice(int(indices[0]), int(indices[-1]) + 1)
                if span.stop - span.start == len(indices):
                    array[span] = np.stack(values)
                else:
                    # Zarr 3.1 fails to write an index list into a sharded array whose chunks
                    # hold several images; write the span, keeping what it holds already.
                    data = array[span]
                    data[indices - span.start] = np.stack(values)
                    array[span] = data

    def _write_centroids(self, entries: list[_Entry], labeled: list[_Entry]) -> None:
        # Rows of done images keep their places, so a reader still counting the old number of rows
        # finds them all; the images being written now lose their old rows (if any).
        rewritten = np.array([e.index for e in entries], dtype=np.float64)
        kept = self._table[~np.isin(self._table[:, 0], rewritten)]
        new = [np.column_stack([np.full(len(e.centroids), e.index), e.centroids]) for e in labeled]
        table = np.concatenate([kept, *new]) if new else kept
        capacity = self.store.images_per_shard * CENTROIDS_PER_IMAGE_CAPACITY
        if len(table) > capacity:
            raise StoreError(
                self.store.path, f"shard {self.shard}: {len(table)} centroids exceed {capacity}"
            )
        # Rows beyond the new table that an older, longer one left are blanked (NaN = no row).
        padded = np.full((max(len(table), self._rows_on_disk), 5), np.nan)
        padded[: len(table)] = table
        if len(padded):
            self.store.tables["centroids"][self.shard, : len(padded)] = padded
        self._table = table
        self._rows_on_disk = len(table)

    def _totals(self, status: np.ndarray) -> np.ndarray:
        num_classes = self.store.label_space.num_classes
        done = status == ImageStatus.DONE
        totals = np.zeros(2 + 2 * num_classes, dtype=np.int64)
        totals[DONE] = int(done.sum())
        totals[CENTROID_ROWS] = len(self._table)
        totals[2 : 2 + num_classes] = self._class_pixels[done].sum(axis=0)
        classes = self._table[:, 1].astype(np.int64)
        totals[2 + num_classes :] = np.bincount(classes, minlength=num_classes)[:num_classes]
        return totals

    def _is_done(self, images: np.ndarray) -> np.ndarray:
        """Which of these image indices (float, NaN allowed) are done in this shard."""
        local = np.nan_to_num(images, nan=-1).astype(np.int64) - self.first
        inside = (local >= 0) & (local < len(self._status))
        done = np.zeros(len(images), dtype=bool)
        done[inside] = self._status[local[inside]] == ImageStatus.DONE
        return done

    def _check_index(self, index: int) -> None:
        if not self.first <= index < self.stop:
            raise ValueError(
                f"image {index} is not in shard {self.shard} (images {self.first}..{self.stop - 1})"
            )


def _checked_outputs(
    index: int, label: np.ndarray, confidence: np.ndarray, centroids: np.ndarray
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
