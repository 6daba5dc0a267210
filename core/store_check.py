"""Checking a label store against itself: the per-shard totals against the status column, and
every chunk a reader needs (``selftrain store-info --verify``).

A writer writes a shard's totals just before its status (core.store_writer), so a writer killed
between the two, or a status chunk lost since, leaves totals that count other done images than
the status does. Readers of aggregates (`class_totals`) recount such shards from their rows;
`verify_store` reports them, and reads every done image's arrays to find damaged chunks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from core.store_layout import DONE, ImageStatus

if TYPE_CHECKING:
    from core.store import LabelStore


def class_totals(store: LabelStore, status: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pixels per class, centroids per class) over the done images, summed from the shard
    totals. A shard whose totals count another number of done images than its status is summed
    from its own rows instead."""
    num_classes = store.label_space.num_classes
    pixels = np.zeros(num_classes, dtype=np.int64)
    centroids = np.zeros(num_classes, dtype=np.int64)
    if not store.n_images:
        return pixels, centroids
    done = status == ImageStatus.DONE
    totals = store.tables["shard_totals"][:]
    agree = totals[:, DONE] == _done_per_shard(store, done)
    pixels += totals[agree, 2 : 2 + num_classes].sum(axis=0)
    centroids += totals[agree, 2 + num_classes :].sum(axis=0)
    for shard in np.flatnonzero(~agree):
        first, stop = store.shard_range(int(shard))
        shard_done = np.flatnonzero(done[first:stop]) + first
        if shard_done.size:
            rows = store.tables["class_pixels"].get_orthogonal_selection((shard_done, slice(None)))
            pixels += rows.sum(axis=0)
            classes = store.centroids(done=shard_done)[:, 1].astype(np.int64)
            centroids += np.bincount(classes, minlength=num_classes)[:num_classes]
    return pixels, centroids


def _done_per_shard(store: LabelStore, done: np.ndarray) -> np.ndarray:
    return np.bincount(np.flatnonzero(done) // store.images_per_shard, minlength=store.n_shards)


def verify_store(store: LabelStore) -> list[str]:
    """Every problem found, one line each: shards whose totals and status disagree (their images
    will be labeled again), and done images whose label map, confidence, probabilities or
    centroid rows cannot be read (a truncated or lost chunk). Reads every shard's files once,
    and image by image only in a shard that fails."""
    try:
        status = store.statuses()
        totals = store.tables["shard_totals"][:]
    except Exception as exc:  # zarr raises many types for damaged chunks
        return [f"status or shard totals unreadable: {type(exc).__name__}: {exc}"]
    problems = []
    counted = _done_per_shard(store, status == ImageStatus.DONE)
    for shard in np.flatnonzero(totals[:, DONE] != counted):
        problems.append(
            f"shard {shard}: its totals count {totals[shard, DONE]} done images, its status "
            f"{counted[shard]} (a status chunk lost, or a writer killed between the two): the "
            "images its status does not hold as done will be labeled again"
        )
    for shard in range(store.n_shards):
        problems += _verify_shard(store, shard, status)
    return problems


def _verify_shard(store: LabelStore, shard: int, status: np.ndarray) -> list[str]:
    first, stop = store.shard_range(shard)
    done = np.flatnonzero(status[first:stop] == ImageStatus.DONE) + first
    if not done.size:
        return []
    try:
        store.centroids(done=done)
    except Exception as exc:  # any failure to read is the finding
        return [f"shard {shard}: centroid table unreadable: {type(exc).__name__}: {exc}"]
    if _shard_reads_whole(store, first, stop, done):
        return []
    # Some file of the shard is damaged: read image by image to name the images it held.
    problems = []
    for index in done:
        for kind, read in _readers(store):
            try:
                read(int(index))
            except Exception as exc:  # any failure to read is the finding
                path = store.image_path(int(index))
                problems.append(f"image {index} ({path}): {kind} unreadable: {exc}")
    return problems


def _shard_reads_whole(store: LabelStore, first: int, stop: int, done: np.ndarray) -> bool:
    """Whether every array of the shard reads back in one read per size group and kind (a
    shard's few files, not one read per image)."""
    sizes = {(int(h), int(w)) for h, w in store.tables["size"][first:stop][done - first]}
    try:
        for height, width in sizes:
            arrays = list(store.image_arrays(height, width))
            if store.soft_stride is not None:
                arrays.append(store.probability_array(height, width))
            for array in arrays:
                array[first:stop]
    except Exception:  # any failure to read sends the shard to the image-by-image check
        return False
    return True


def _readers(store: LabelStore) -> list[tuple[str, object]]:
    readers = [("label", store.label), ("confidence", store.confidence)]
    if store.soft_stride is not None:
        readers.append(("probabilities", store.probabilities))
    return readers
