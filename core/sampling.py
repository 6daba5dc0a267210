"""The sample list of a training epoch: real images and pseudo-labeled images at a fixed share.

Centroid sampling (paper Sec. 3.2): a pseudo sample is drawn by picking a class, then one of the
region centroids recorded for that class (by core.centroids, in the label store), then a crop
that contains that centroid. Classes are drawn uniformly, so a rare class is trained on as often as
a common one and every class is seen every epoch however large the pseudo set is, while each crop
still shows its natural mix of pixels. Without centroid sampling a pseudo sample is a whole image,
drawn uniformly.

The list is a pure function of ``(seed, epoch)``: every rank of a distributed run builds the same
list and takes its own part (``rank_part``), and a resumed run draws the same lists it would have
drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from core.errors import ConfigError

# ``Sample.store`` of a real (human-labeled) image.
REAL = -1


class Sample(NamedTuple):
    """One entry of an epoch's sample list.

    Attributes:
        store: ``REAL`` for an image of the labeled dataset, else the number of the pseudo-label
            store (in config order) the image belongs to.
        index: The image's index in the labeled dataset or in that store.
        point: ``(y, x)`` of the centroid the crop must contain, in the image's pixels; ``None``
            for a crop anywhere in the image.
    """

    store: int
    index: int
    point: tuple[int, int] | None = None

    @property
    def is_real(self) -> bool:
        return self.store == REAL


def split_counts(total: int, pseudo_per_real: float) -> tuple[int, int]:
    """``(n_real, n_pseudo)`` for an epoch of ``total`` samples with ``pseudo_per_real`` pseudo
    samples per real sample (the paper's "pseudo:real" ratio).

    E.g. 80 samples at 3 (three pseudo samples per real sample, "3:1") -> (20, 60); at 0 every
    sample is real.
    """
    if total < 0:
        raise ConfigError(f"samples per epoch must be >= 0, got {total}")
    if pseudo_per_real < 0:
        raise ConfigError(f"pseudo_per_real must be >= 0, got {pseudo_per_real}")
    n_real = round(total / (pseudo_per_real + 1))
    return n_real, total - n_real


class CentroidTable:
    """Centroids pooled over label stores, grouped by class for fast drawing.

    Args:
        centroids: Per store, its ``(N, 5)`` array ``(image_index, class, y, x, area)`` (as
            ``LabelStore.centroids`` returns it).
    """

    def __init__(self, centroids: Sequence[np.ndarray]) -> None:
        parts = [np.asarray(c, dtype=np.float64).reshape(-1, 5) for c in centroids]
        stacked = np.concatenate([np.zeros((0, 5)), *parts])
        self.store = np.repeat(np.arange(len(parts), dtype=np.int64), [len(p) for p in parts])
        self.image = stacked[:, 0].astype(np.int64)
        self.cls = stacked[:, 1].astype(np.int64)
        # A centroid is a mean of pixel coordinates, so rounding it stays inside the image.
        self.yx = np.rint(stacked[:, 2:4]).astype(np.int64)
        # Rows sorted by class; class k's rows are by_class[starts[k] : starts[k] + counts[k]].
        # (Class ids fit in 16 bits, so the stable sort is a radix sort: linear in the rows.)
        self.by_class = np.argsort(self.cls.astype(np.uint16), kind="stable")
        per_class = np.bincount(self.cls, minlength=1)
        self.classes = np.flatnonzero(per_class)
        self.starts = (np.cumsum(per_class) - per_class)[self.classes]
        self.counts = per_class[self.classes]

    def __len__(self) -> int:
        return len(self.cls)

    def draw(self, rng: np.random.Generator, class_numbers: np.ndarray) -> np.ndarray:
        """One random row of each class ``self.classes[k]`` for k in ``class_numbers``."""
        offsets = rng.integers(0, self.counts[class_numbers])
        return self.by_class[self.starts[class_numbers] + offsets]


class EpochSampler:
    """Draws each epoch's sample list.

    Args:
        n_real_images: Images in the labeled dataset.
        pseudo_images: Per store, the indices of its labeled (done) images.
        centroids: Per store, its ``(N, 5)`` centroid array; ``None`` turns centroid sampling off
            (pseudo samples are then whole images, drawn uniformly).
        seed: With the epoch, fixes every list.
        real_centroids: The labeled set's ``(N, 5)`` centroid array: real samples are then drawn
            class first too (a class uniformly, then a region of it); ``None``: real images are
            drawn evenly, each once before any repeats.
    """

    def __init__(
        self,
        n_real_images: int,
        pseudo_images: Sequence[Sequence[int]] = (),
        centroids: Sequence[np.ndarray] | None = None,
        seed: int = 0,
        real_centroids: np.ndarray | None = None,
    ) -> None:
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        self.n_real_images = n_real_images
        # (store, index) of every pseudo-labeled image, the population of whole-image sampling.
        self.pseudo_images = np.concatenate(
            [np.zeros((0, 2), dtype=np.int64)]
            + [
                np.column_stack([np.full(len(indices), k), np.asarray(indices)]).astype(np.int64)
                for k, indices in enumerate(pseudo_images)
            ]
        )
        self.centroids = None if centroids is None else CentroidTable(centroids)
        self.real_centroids = None if real_centroids is None else CentroidTable([real_centroids])
        self.seed = seed

    @property
    def centroid_sampling(self) -> bool:
        return self.centroids is not None

    def samples(self, epoch: int, n_real: int, n_pseudo: int) -> list[Sample]:
        """The shuffled sample list of ``epoch``: ``n_real`` real and ``n_pseudo`` pseudo samples.

        Real images are drawn without replacement (every image once before any repeats); so are the
        pseudo classes under centroid sampling (every class once before any repeats) and the pseudo
        images without it.

        Raises:
            ConfigError: Samples are asked of a kind that has no images (or no centroids).
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        rng = np.random.default_rng([self.seed, epoch])
        if self.real_centroids is not None:
            samples = _centroid_samples(rng, self.real_centroids, n_real, REAL)
        else:
            samples = [Sample(REAL, int(i)) for i in self._real_indices(rng, n_real)]
        if self.centroids is not None:
            samples += _centroid_samples(rng, self.centroids, n_pseudo)
        else:
            samples += self._whole_image_samples(rng, n_pseudo)
        order = rng.permutation(len(samples))
        return [samples[i] for i in order]

    def _real_indices(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if n > 0 and self.n_real_images == 0:
            raise ConfigError(f"{n} real samples asked for, but the labeled dataset is empty")
        return _balanced_draw(rng, self.n_real_images, n)

    def _whole_image_samples(self, rng: np.random.Generator, n: int) -> list[Sample]:
        if n > 0 and len(self.pseudo_images) == 0:
            raise ConfigError(f"{n} pseudo samples asked for, but no label store has labels")
        rows = self.pseudo_images[_balanced_draw(rng, len(self.pseudo_images), n)]
        return [Sample(int(store), int(index)) for store, index in rows]

    def state_dict(self) -> dict:
        """What a checkpoint keeps so that a resumed run draws the same lists."""
        return {
            "seed": self.seed,
            "n_real_images": self.n_real_images,
            "n_pseudo_images": len(self.pseudo_images),
            "n_centroids": None if self.centroids is None else len(self.centroids),
        }

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])


def _centroid_samples(
    rng: np.random.Generator, table: CentroidTable, n: int, store: int | None = None
) -> list[Sample]:
    """``n`` samples drawn class first: classes evenly, then a random centroid of each; the
    sample's store is the table's (pseudo) or ``store`` (``REAL`` for the labeled set)."""
    if n > 0 and len(table) == 0:
        kind = "real" if store == REAL else "pseudo"
        raise ConfigError(f"{n} {kind} samples asked for, but there are no centroids to draw from")
    rows = table.draw(rng, _balanced_draw(rng, len(table.classes), n))
    return [
        Sample(
            int(table.store[r]) if store is None else store,
            int(table.image[r]),
            (int(table.yx[r, 0]), int(table.yx[r, 1])),
        )
        for r in rows
    ]


def _balanced_draw(rng: np.random.Generator, population: int, n: int) -> np.ndarray:
    """``n`` draws from ``range(population)``: whole random permutations, then part of one more.

    Each value occurs ``n // population`` or one more times, so nothing is left out by chance.
    """
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    full, rest = divmod(n, population)
    parts = [rng.permutation(population) for _ in range(full)]
    parts.append(rng.permutation(population)[:rest])
    return np.concatenate(parts).astype(np.int64)


def rank_part(samples: Sequence[Sample], rank: int, world_size: int) -> list[tuple[int, Sample]]:
    """Rank ``rank``'s part of an epoch list, as ``(position in the list, sample)`` pairs.

    Rank r takes positions r, r + world_size, ...; the list is first extended by wrapping around to
    a multiple of ``world_size``, so every rank gets the same number of samples (DDP ranks must run
    the same number of steps).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    if not samples:
        return []
    padded = -(-len(samples) // world_size) * world_size
    return [(p, samples[p % len(samples)]) for p in range(rank, padded, world_size)]


def sample_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator for the augmentation of one sample: the same on whichever rank or loader
    worker processes it."""
    return np.random.default_rng([seed, epoch, position])
