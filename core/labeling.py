"""What a teacher makes of unlabeled images (hard labels, their confidence and region centroids),
and the label store a labeling run writes them into.

The label job (jobs/label.py) opens its store with ``open_for_labeling`` on the driver
(``LabelingRun``) and sends whole shards of the store through the steps of core.label_shards, whose
model step is a ``TeacherPredictor`` (``predict_images``); anything else that labels images (a
test, a notebook) gets the same results with ``label_batch``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from core.centroids import find_centroids
from core.checkpoint import load_checkpoint, load_model
from core.configs import IMAGES_PER_SHARD, InferenceSettings, LabelJobConfig
from core.datasets import open_source
from core.errors import StoreError, StoreVersionError
from core.inference import predict_batch, predict_soft_batch
from core.label_shards import DONE, FAILED, SKIPPED, Outcome
from core.labels import IGNORE_INDEX, LabelSpace
from core.store import ImageStatus, LabelStore, path_taken


@dataclass(frozen=True)
class LabeledImage:
    """A teacher's output for one image.

    Attributes:
        label: (H, W) uint8 train ids.
        confidence: (H, W) uint8, the winning class's probability times 255, rounded.
        centroids: (N, 4) float64 rows ``(class, y, x, area)`` (core.centroids).
    """

    label: np.ndarray
    confidence: np.ndarray
    centroids: np.ndarray


def predict_images(
    model: nn.Module,
    images: list[np.ndarray],
    settings: InferenceSettings,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
) -> list[tuple[np.ndarray, ...]]:
    """The teacher's hard labels and confidence for ``images`` (uint8 (H, W, 3) RGB, sizes may
    differ): for each, its (H, W) uint8 label map and (H, W) uint8 confidence (the winning
    class's probability times 255, rounded), and with ``settings.soft_stride`` a third array, the
    (C, ceil(H / s), ceil(W / s)) float16 class probabilities (core.inference.predict_soft_batch).

    Images of one size go through the model as one batch; the results come back in input order.

    Args:
        model: The teacher, in eval mode, on ``device``.
        images: The images.
        settings: Inference mode and its options, precision.
        device: Where the model runs; on CUDA the uint8 batch is pinned and normalized there.
        channels_last: Run the model in channels-last memory format.
    """
    results: dict[int, tuple[np.ndarray, ...]] = {}
    # Only the options the mode uses are set; predict_batch ignores the others.
    options = settings.model_dump(include={"scales", "flip", "crop"}, exclude_none=True)
    options.update(mode=settings.mode, device=device, bf16=settings.precision == "bf16")
    for group in same_size_groups(images):
        batch = torch.from_numpy(np.stack([images[i] for i in group]))
        if torch.device(device).type == "cuda":
            batch = batch.pin_memory()  # uint8 goes to the GPU asynchronously
        if settings.soft_stride is None:
            outputs = predict_batch(model, batch, channels_last=channels_last, **options)
        else:
            outputs = predict_soft_batch(
                model, batch, settings.soft_stride, channels_last=channels_last, **options
            )
        labels, confidence, *soft = outputs
        confidence_u8 = confidence.mul(255).round_().to(torch.uint8).numpy()
        for k, index in enumerate(group):
            results[index] = (labels[k].numpy(), confidence_u8[k], *(p[k].numpy() for p in soft))
    return [results[i] for i in range(len(images))]


def label_batch(
    model: nn.Module,
    images: list[np.ndarray],
    settings: InferenceSettings,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> list[LabeledImage]:
    """`predict_images` plus each label map's centroids (regions of at least
    ``settings.min_centroid_area`` pixels; ``ignore_index`` forms none)."""
    return [
        LabeledImage(
            label, confidence, find_centroids(label, settings.min_centroid_area, ignore_index)
        )
        for label, confidence in predict_images(model, images, settings, device, channels_last)
    ]


class TeacherPredictor:
    """A teacher checkpoint loaded once, as a `core.label_shards.Predict`.

    Args:
        checkpoint: The teacher's checkpoint file.
        settings: Inference mode and its options, precision.
        device: ``cpu`` or ``cuda``.
        channels_last: Run the model in channels-last memory format.
        compile: Run the model ``torch.compile``d (dynamic shapes: images of any size).
    """

    def __init__(
        self,
        checkpoint: str | Path,
        settings: InferenceSettings,
        device: str = "cpu",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        self.model, _, _ = load_model(checkpoint, device)
        if compile:
            self.model = torch.compile(self.model, dynamic=True)
        self.settings = settings
        self.device = device
        self.channels_last = channels_last

    def __call__(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, ...]]:
        return predict_images(self.model, images, self.settings, self.device, self.channels_last)


def same_size_groups(images: list[np.ndarray]) -> list[list[int]]:
    """Positions of ``images`` grouped by shape, in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(image.shape, []).append(index)
    return list(groups.values())


def describe_teacher(checkpoint_path: str | Path, checkpoint: dict) -> dict:
    """The teacher identity a store records: checkpoint file, its sha256, model and training config.

    Args:
        checkpoint_path: The checkpoint file.
        checkpoint: Its contents, as core.checkpoint.load_checkpoint returns them.
    """
    path = Path(checkpoint_path).resolve()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {
        "checkpoint": str(path),
        "sha256": digest.hexdigest(),
        "model_name": checkpoint["model_name"],
        "model_options": checkpoint["model_options"],
        "epoch": checkpoint["epoch"],
        "config": checkpoint["config"],
    }


# What makes two teachers the same: the weights (file hash) and the architecture that reads them.
TEACHER_IDENTITY = ("sha256", "model_name")


def open_for_labeling(
    path: str | Path,
    image_paths: Sequence[str],
    label_space: LabelSpace,
    teacher: dict,
    settings: dict,
    *,
    overwrite: bool = False,
    images_per_shard: int = IMAGES_PER_SHARD,
) -> LabelStore:
    """The store a labeling run writes into, with every image of ``image_paths`` in its list.

    A missing store is created. An existing one is reused when it was made by the same teacher
    (`TEACHER_IDENTITY`) with the same settings, and the images it does not hold yet are appended.
    Its own ``images_per_shard`` stays (a layout choice, not a label-shaping setting).

    Args:
        path: The store.
        image_paths: The images to label (the source's list, sorted).
        label_space: The teacher's classes.
        teacher: From `describe_teacher`.
        settings: The inference settings that shape the labels.
        overwrite: Delete and recreate a store made by another teacher, with other settings or
            in an older format version. A store of the same teacher is kept either way, so a
            rerun resumes.
        images_per_shard: Images per shard of a store created here.

    Raises:
        StoreVersionError: The store is of another format version and ``overwrite`` is false.
        StoreError: The store was made by another teacher or with other settings and
            ``overwrite`` is false, or ``path`` holds something else.
    """
    path = Path(path)

    def create(replace: bool) -> LabelStore:
        return LabelStore.create(
            path, image_paths, None, label_space, teacher, settings, replace, images_per_shard
        )

    if not path_taken(path):
        return create(replace=False)
    try:
        store = LabelStore.open(path)
    except StoreVersionError:
        if not overwrite:
            raise
        return create(replace=True)
    differences = _differences(store, label_space, teacher, settings)
    if differences:
        if not overwrite:
            raise StoreError(
                path,
                f"labeled by another teacher or with other settings ({'; '.join(differences)}); "
                "set overwrite to delete it and label again",
            )
        return create(replace=True)
    store.add_images(image_paths)
    return store


def _differences(
    store: LabelStore, label_space: LabelSpace, teacher: dict, settings: dict
) -> list[str]:
    differences = [
        f"teacher {key} {store.teacher.get(key)!r} != {teacher.get(key)!r}"
        for key in TEACHER_IDENTITY
        if store.teacher.get(key) != teacher.get(key)
    ]
    if store.label_space.to_dict() != label_space.to_dict():
        differences.append(f"classes {list(store.label_space.names)} != {list(label_space.names)}")
    for key in sorted(set(store.settings) | set(settings)):
        if store.settings.get(key) != settings.get(key):
            differences.append(f"{key} {store.settings.get(key)!r} != {settings.get(key)!r}")
    return differences


@dataclass
class LabelingRun:
    """The driver's side of one labeling run: the store, what is left to label, and the counts.

    ``start`` opens (or creates) the store for the teacher and records the run; ``count`` takes
    each image's outcome as it arrives and publishes progress now and then; ``finish`` records how
    the run ended and returns its summary.

    Attributes:
        store: The label store.
        number: The run's number in the store (0, 1, ...).
        todo: Indices of the images this run labels.
        before: Done images, and failures that are not retried, when the run started.
        counts: Outcomes counted so far.
    """

    store: LabelStore
    number: int
    todo: np.ndarray
    before: dict[str, int]
    counts: dict[str, int] = field(default_factory=lambda: {DONE: 0, FAILED: 0, SKIPPED: 0})
    started: float = field(default_factory=time.perf_counter)
    first_result_s: float | None = None
    model_s: float = 0.0
    published: float = 0.0

    @classmethod
    def start(cls, config: LabelJobConfig) -> LabelingRun:
        """Open the store for ``config``'s teacher, source and settings, and record a new run."""
        checkpoint = load_checkpoint(config.teacher_checkpoint)
        label_space = LabelSpace.from_dict(checkpoint["label_space"])
        teacher = describe_teacher(config.teacher_checkpoint, checkpoint)
        paths = sorted(os.path.abspath(p) for p in open_source(config.source).image_paths())
        store = open_for_labeling(
            config.store,
            paths,
            label_space,
            teacher,
            config.inference().identity(),
            overwrite=config.overwrite,
            images_per_shard=config.images_per_shard,
        )
        return cls.resume(store, config.model_dump(mode="json"), config.retry_failed)

    @classmethod
    def resume(cls, store: LabelStore, job_config: dict, retry_failed: bool) -> LabelingRun:
        """Record a new run on ``store`` and find what it labels: one read of the status column.

        Args:
            store: The store, with the run's images in its list.
            job_config: The job's config, recorded with the run.
            retry_failed: Label failed images again.
        """
        status = store.statuses()
        # Progress counts from what this run starts with: images done, and failures not retried.
        before = {
            DONE: int((status == ImageStatus.DONE).sum()),
            FAILED: 0 if retry_failed else int((status == ImageStatus.FAILED).sum()),
        }
        todo = status == ImageStatus.PENDING
        if retry_failed:
            todo |= status == ImageStatus.FAILED
        number = store.start_run(job_config)
        return cls(store, number, np.flatnonzero(todo), before)

    def shards(self) -> list[tuple[int, np.ndarray]]:
        """The images to label grouped by shard: ``(shard, its indices)``; one writer each."""
        return self.store.shards_of(self.todo)

    def count(
        self, outcomes: Mapping[Outcome, int], publish_every_s: float = 1.0, model_s: float = 0.0
    ) -> None:
        """Count the outcomes of a shard's images (and the teacher's time in the model for them);
        publish progress when ``publish_every_s`` has passed."""
        now = time.perf_counter()
        self.model_s += model_s
        if self.first_result_s is None:
            self.first_result_s = now - self.started
        for outcome, n in outcomes.items():
            self.counts[outcome] += n
        if now - self.published >= publish_every_s:
            self.published = now
            done = self.before[DONE] + self.counts[DONE] + self.counts[SKIPPED]
            failed = self.before[FAILED] + self.counts[FAILED]
            rate = self.counts[DONE] / (now - self.started)
            self.store.set_progress(self.number, "running", done, failed, self.store.n_images, rate)

    def finish(self, state: Literal["finished", "failed"]) -> dict:
        """Record how the run ended; returns its summary: store path, run number, images in the
        store, done and failed overall, labeled, failed and skipped in this run, seconds, seconds
        until the first result, seconds the teacher actors spent in the model (all actors
        together) and images per second."""
        seconds = time.perf_counter() - self.started
        status = self.store.statuses()
        n_done = int((status == ImageStatus.DONE).sum())
        n_failed = int((status == ImageStatus.FAILED).sum())
        rate = self.counts[DONE] / seconds if seconds > 0 else 0.0
        self.store.set_progress(self.number, state, n_done, n_failed, self.store.n_images, rate)
        return {
            "store": str(self.store.path),
            "run": self.number,
            "n_images": self.store.n_images,
            "n_done": n_done,
            "n_failed": n_failed,
            "labeled": self.counts[DONE],
            "failed": self.counts[FAILED],
            "skipped": self.counts[SKIPPED],
            "seconds": round(seconds, 3),
            "first_result_s": round(self.first_result_s or 0.0, 3),
            "model_s": round(self.model_s, 3),
            "images_per_s": round(rate, 3),
        }
