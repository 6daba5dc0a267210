"""Labeling one shard of a label store in three steps: read, predict, write.

The label job (jobs/label.py) runs the steps either in one teacher actor (the *fused* layout, what
suits CPU-only machines, where the same cores do every step) or as a pipeline (the *staged*
layout: CPU tasks read and decode, teacher actors only run the model, CPU tasks find centroids and
write), so that an accelerator does not wait for the CPU work of every batch. Between the steps a
shard's work travels as a `ShardWork` (``to_bytes`` / ``from_bytes`` for Ray Data rows).

A shard is written by exactly one `write_shard` at a time (core.store_writer): the steps of one
shard move together, never split across writers.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from core.centroids import find_centroids
from core.errors import DataError
from core.io import read_image
from core.store import ImageStatus, LabelStore

# Outcomes of one image in a labeling run, as the label job reports them.
DONE, FAILED, SKIPPED = "done", "failed", "skipped"
Outcome = Literal["done", "failed", "skipped"]

# A teacher's forward pass: uint8 (H, W, 3) RGB images (sizes may differ) to, for each, its
# (H, W) uint8 label map and (H, W) uint8 confidence (winning probability x 255), and for a store
# that keeps soft labels a third array, its class probabilities (core.store.LabelStore.write).
Predict = Callable[[list[np.ndarray]], list[tuple[np.ndarray, ...]]]
ReadImages = Callable[[list[str]], list["np.ndarray | DataError"]]


@dataclass
class ShardWork:
    """One shard's images on their way through the three steps.

    Attributes:
        shard: The shard.
        indices: The images asked for, in order.
        skipped: Those done already when read (left as they are).
        failed: Image → why it could not be read.
        images: Image → its decoded pixels, until predicted.
        outputs: Image → its (label, confidence[, probabilities]), once predicted.
        seconds: Time spent in each step so far (``read``, ``predict``, ``model``, ``write``);
            ``model`` is the part of ``predict`` inside the model calls.
    """

    shard: int
    indices: list[int]
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    images: dict[int, np.ndarray] = field(default_factory=dict)
    outputs: dict[int, tuple[np.ndarray, ...]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """The work as one bytes value (a Ray Data cell)."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def from_bytes(data: bytes) -> ShardWork:
        work = pickle.loads(data)
        if not isinstance(work, ShardWork):
            raise TypeError(f"expected ShardWork, got {type(work).__name__}")
        return work


def read_image_or_error(path: str) -> np.ndarray | DataError:
    """The image at ``path``, or the error that says why it cannot be read."""
    try:
        return read_image(path)
    except DataError as exc:
        return exc


def _read_one_by_one(paths: list[str]) -> list[np.ndarray | DataError]:
    return [read_image_or_error(path) for path in paths]


def read_shard(
    store: LabelStore,
    shard: int,
    indices: Sequence[int] | np.ndarray,
    read_images: ReadImages | None = None,
) -> ShardWork:
    """Step 1: decode the images of ``indices`` (all in ``shard``) that are not done yet.

    Images done already are skipped (a shard retried after its writer died, or an image done since
    the driver listed it); an image that cannot be read is failed with its reason.

    Args:
        store: The store.
        shard: The shard.
        indices: Images of the shard.
        read_images: Reads a list of paths (each an image or its DataError); by default one by
            one with `read_image_or_error`.
    """
    start = time.perf_counter()
    work = ShardWork(shard, [int(i) for i in indices])
    done = store.statuses(work.indices) == ImageStatus.DONE
    work.skipped = [i for i, d in zip(work.indices, done, strict=True) if d]
    todo = [i for i, d in zip(work.indices, done, strict=True) if not d]
    decoded = (read_images or _read_one_by_one)(store.paths_of(todo)) if todo else []
    for index, result in zip(todo, decoded, strict=True):
        if isinstance(result, DataError):
            work.failed[index] = result.problem
        else:
            work.images[index] = result
    work.seconds["read"] = time.perf_counter() - start
    return work


def predict_shard(work: ShardWork, predict: Predict, batch_size: int) -> ShardWork:
    """Step 2: run the model on the decoded images, ``batch_size`` at a time.

    The images are dropped once predicted (only the outputs travel on).
    """
    start = time.perf_counter()
    model_s = 0.0
    todo = list(work.images)
    for first in range(0, len(todo), batch_size):
        batch = todo[first : first + batch_size]
        called = time.perf_counter()
        outputs = predict([work.images[i] for i in batch])
        model_s += time.perf_counter() - called
        if len(outputs) != len(batch):
            raise ValueError(f"the model returned {len(outputs)} outputs for {len(batch)} images")
        work.outputs.update(zip(batch, outputs, strict=True))
    work.images = {}
    work.seconds["predict"] = time.perf_counter() - start
    work.seconds["model"] = model_s
    return work


def write_shard(
    store: LabelStore, work: ShardWork, run: int, min_centroid_area: int
) -> list[tuple[int, Outcome, str]]:
    """Step 3: find each label map's centroids and write the shard as its one writer.

    Returns:
        ``(index, outcome, reason)`` for each image of ``work.indices``, in order.
    """
    start = time.perf_counter()
    outcomes: dict[int, tuple[Outcome, str]] = {i: (SKIPPED, "") for i in work.skipped}
    ignore_index = store.label_space.ignore_index
    with store.shard_writer(work.shard, run) as writer:
        for index in sorted(set(work.failed) | set(work.outputs)):
            if index in work.failed:
                writer.mark_failed(index, work.failed[index])
                outcomes[index] = (FAILED, work.failed[index])
                continue
            label, confidence, *soft = work.outputs[index]
            centroids = find_centroids(label, min_centroid_area, ignore_index)
            writer.write(index, label, confidence, centroids, *soft)
            outcomes[index] = (DONE, "")
    work.seconds["write"] = time.perf_counter() - start
    return [(i, *outcomes[i]) for i in work.indices]


def label_shard(
    store: LabelStore,
    shard: int,
    indices: Sequence[int] | np.ndarray,
    predict: Predict,
    run: int,
    batch_size: int,
    min_centroid_area: int,
    read_images: ReadImages | None = None,
) -> tuple[list[tuple[int, Outcome, str]], ShardWork]:
    """The three steps in one place (the fused layout): read, predict and write one shard.

    An exception leaves the shard's images pending (the writer writes nothing it did not finish).

    Returns:
        ``(index, outcome, reason)`` for each of ``indices``, in order, and the work (its
        ``seconds`` say where the time went).
    """
    work = read_shard(store, shard, indices, read_images)
    predict_shard(work, predict, batch_size)
    return write_shard(store, work, run, min_centroid_area), work
