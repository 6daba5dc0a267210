"""The unlabeled side of an online student: its pool of images and each step's views of them.

The pool is a list of parts, each a label store (its images, with their offline pseudo labels and
centroids) or an unlabeled source (any source a label job reads). A part keeps no per-image Python
objects: a store is read through its own index, a source's file list is packed into one byte
buffer and an offset array (``PathTable``) when the run opens, so a pool of 10^6 images costs its
paths' bytes and 8 bytes an image, shared by every loader worker, and no scan per epoch.

``UnlabeledViews`` turns one rank's part of an epoch's unlabeled samples into what a step needs:
the weak view the EMA teacher labels, one or two strong views of it (photometric only, so they
stay pixel-aligned with the weak view), their CutMix boxes, pasted rare-class segments, which
pixels are image (not padding), and the stores' offline labels of the same crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.configs import AugmentConfig, DataSource, OnlineSettings
from core.datasets import open_source
from core.io import read_image
from core.labels import IGNORE_INDEX
from core.mixing import SegmentBank, cutmix_box, override, paste
from core.pseudo import PseudoLabels
from core.sampling import Sample, sample_rng
from core.transforms import augment_around_point, build_strong_transform, build_train_transform

# The second channel of the label a weak view is cut with: 1 on the image, IGNORE_INDEX on the
# padding the crop adds (every geometric transform pads labels with IGNORE_INDEX).
_IN_IMAGE = 1


class PathTable:
    """Many file paths in one byte buffer and an offset array (no Python object per path).

    Args:
        paths: The paths, in order.
    """

    def __init__(self, paths: Sequence[str]) -> None:
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        self.data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, index: int) -> str:
        if not 0 <= index < len(self.ends):
            raise IndexError(f"path {index} of {len(self.ends)}")
        start = int(self.ends[index - 1]) if index else 0
        return self.data[start : int(self.ends[index])].tobytes().decode("utf-8", "surrogateescape")


class SourcePart:
    """An unlabeled source's images, read by index."""

    def __init__(self, source: DataSource) -> None:
        self.root = source.root
        self.paths = PathTable(open_source(source).image_paths())

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        return read_image(self.paths[index]), None


class StorePart:
    """A label store's labeled images, read by index, with their offline pseudo labels."""

    def __init__(self, reader: PseudoLabels) -> None:
        self.reader = reader
        self.root = reader.path

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self.reader.load(index)


@dataclass
class UnlabeledPool:
    """The unlabeled parts an online student reads: label stores first, then sources (the order
    in which ``Sample.store`` counts them).

    Attributes:
        parts: The parts.
        indices: Per part, the indices of its images that can be read (a store's done images).
    """

    parts: list[StorePart | SourcePart]
    indices: list[np.ndarray]

    @classmethod
    def open(cls, stores: Sequence[PseudoLabels], sources: Sequence[DataSource]) -> UnlabeledPool:
        parts: list[StorePart | SourcePart] = [StorePart(reader) for reader in stores]
        indices = [reader.store.done_indices() for reader in stores]
        for source in sources:
            part = SourcePart(source)
            parts.append(part)
            indices.append(np.arange(len(part), dtype=np.int64))
        return cls(parts, indices)

    def __len__(self) -> int:
        return sum(len(i) for i in self.indices)

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        return self.parts[sample.store].load(sample.index)


class UnlabeledViews(Dataset):
    """One rank's unlabeled samples of an epoch, each turned into the views of one step.

    Each item is a dict of arrays (crop ``H x W``): ``weak`` and ``strong`` (``(V, H, W, 3)``
    uint8, V = 1 or 2 strong views), ``boxes`` (``(V, H, W)`` bool CutMix boxes), ``valid``
    (``(H, W)`` bool, image not padding), ``pasted`` (``(H, W)`` uint8 true labels of pasted
    segments, ``IGNORE_INDEX`` elsewhere) and ``offline`` (``(H, W)`` uint8 the store's pseudo
    label of the crop, all ``IGNORE_INDEX`` for a source). Sample ``(position, s)`` draws
    everything from ``sample_rng(seed, epoch, position)``.

    Args:
        part: ``(position in the epoch list, sample)`` pairs.
        pool: The unlabeled images.
        aug: The weak view's augmentation (the labeled samples' own).
        online: The strong views, CutMix and their chances.
        crop_size: This epoch's crop size.
        seed: The run's seed.
        epoch: The epoch.
        bank: Rare-class segments to paste into the strong views, or None.
        paste_probability: Chance that a sample gets a pasted segment.
    """

    def __init__(
        self,
        part: Sequence[tuple[int, Sample]],
        pool: UnlabeledPool,
        aug: AugmentConfig,
        online: OnlineSettings,
        crop_size: int,
        seed: int,
        epoch: int,
        bank: SegmentBank | None = None,
        paste_probability: float = 0.0,
    ) -> None:
        self.part = list(part)
        self.pool = pool
        self.aug = aug
        self.online = online
        self.crop_size = crop_size
        self.seed = seed
        self.epoch = epoch
        self.bank = bank
        self.paste_probability = paste_probability if bank is not None and len(bank) else 0.0
        self.weak = build_train_transform(aug, crop_size)
        self.strong = build_strong_transform(online.strong)

    def __len__(self) -> int:
        return len(self.part)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        position, sample = self.part[i]
        rng = sample_rng(self.seed, self.epoch, position)
        image, offline = self.pool.load(sample)
        if offline is None:
            offline = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        # The offline label and an "in the image" plane travel through the geometric transforms
        # together as two label channels.
        planes = np.stack([offline, np.full_like(offline, _IN_IMAGE)], axis=-1)
        if sample.point is None:
            weak, planes = self.weak(image, planes, rng)
        else:
            weak, planes = augment_around_point(
                image, planes, sample.point, self.aug, self.crop_size, rng
            )
        size = weak.shape[:2]
        pasted = np.full(size, IGNORE_INDEX, dtype=np.uint8)
        source = weak
        if self.paste_probability and rng.random() < self.paste_probability:
            assert self.bank is not None
            segment_image, segment_label = self.bank.draw(rng, self.crop_size)
            source, pasted = paste(weak, segment_image, segment_label)
        n_views = 2 if self.online.second_view else 1
        strong = [self.strong(source, pasted, rng)[0] for _ in range(n_views)]
        boxes = [cutmix_box(rng, size, self.online.cutmix) for _ in range(n_views)]
        return {
            "weak": weak,
            "strong": np.stack(strong),
            "boxes": np.stack(boxes),
            "valid": planes[..., 1] == _IN_IMAGE,
            "pasted": pasted,
            "offline": override(planes[..., 0], pasted),
        }


def collate_views(items: Sequence[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack ``UnlabeledViews`` items into tensors (images stay uint8 ``(N, H, W, 3)``; strong
    views and boxes ``(V, N, ...)``, view first)."""
    batch = {key: torch.from_numpy(np.stack([item[key] for item in items])) for key in items[0]}
    batch["strong"] = batch["strong"].transpose(0, 1).contiguous()
    batch["boxes"] = batch["boxes"].transpose(0, 1).contiguous()
    return batch


def make_views_loader(dataset: UnlabeledViews, batch_size: int, workers: int = 0) -> DataLoader:
    """A loader over the views in list order (the list is already shuffled)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_views,
        pin_memory=torch.cuda.is_available(),
    )
