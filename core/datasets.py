"""Segmentation datasets on disk: Cityscapes, CamVid, Mapillary Vistas, BDD100K, KITTI, plain image
folders and paired folders.

Every loader returns a ``SegmentationDataset``: a sorted list of (image path, label path or None)
and the label space that turns stored label values into train ids. Listing checks the layout (the
folder exists, holds images, every image has its label file); reading a sample checks the files
themselves (see core.io). Subsets (a fraction, a list file, an N-shot split) are new datasets over
some of the items.

List files (``subset_from_list``, ``DataSource.subset_list``) are UTF-8 text, one image per line:
either its path relative to the dataset root (``train/0001TP_006690.png``; the suffix may differ
from the file's, so a list written for PNG images also selects their JPEG copies) or its stem
(``0001TP_006690``; for Cityscapes the stem without ``_leftImg8bit``, ``aachen_000000_000019``,
works too). An absolute path counts by its file name only. Only the first whitespace-separated
field of a line is read, so split files that list "image label" pairs work as they are. Blank lines
and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

import numpy as np
import torch.utils.data

from core.cityscapes_metrics import kitti_instances
from core.configs import DataSource
from core.errors import ConfigError, DataError, EmptyDatasetError
from core.io import existing_path, read_image, read_instance_file, read_label
from core.labels import (
    CAMVID,
    CITYSCAPES,
    CITYSCAPES_TRAIN_IDS,
    Color,
    LabelSpace,
    declare_label_space,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Values the label files of each dataset may hold; anything else means a wrong or damaged file.
CAMVID_STORED_IDS = frozenset(range(12)) | {255}  # 0..10 classes, 11 void (-> 255)
CITYSCAPES_STORED_IDS = frozenset(range(34))  # regular ids; license plate (-1) is never drawn

_CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit"

Sample = tuple[np.ndarray, np.ndarray | None, str]


class SegmentationDataset(torch.utils.data.Dataset):
    """Images with optional label maps, read and checked on access.

    Attributes:
        items: (image path, label path or None) per sample, in a fixed (sorted) order.
        label_space: Turns stored label values into train ids; None is allowed without labels.
        root: The dataset folder, against which list files are resolved.
        stored_ids: The values label files may hold (see core.io.read_label); None = no check.
        label_colors: The color of each stored id, for labels that are palette PNGs or color
            pictures (Mapillary Vistas); None: labels hold ids.
    """

    def __init__(
        self,
        items: Sequence[tuple[str, str | None]],
        label_space: LabelSpace | None,
        root: str | Path | None = None,
        stored_ids: Collection[int] | None = None,
        label_colors: Sequence[Color] | None = None,
    ) -> None:
        self.items = [(str(image), None if label is None else str(label)) for image, label in items]
        if label_space is None and any(label is not None for _, label in self.items):
            raise ValueError("a dataset with label files needs a label space")
        self.label_space = label_space
        self.root = None if root is None else str(root)
        self.stored_ids = None if stored_ids is None else frozenset(stored_ids)
        self.label_colors = None if label_colors is None else list(label_colors)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        """(image (H, W, 3) uint8 RGB, label (H, W) uint8 train ids or None, image path)."""
        image_path, _ = self.items[index]
        image = read_image(image_path)
        return image, self.load_label(index, expect_shape=image.shape[:2]), image_path

    def load_label(
        self, index: int, expect_shape: tuple[int, int] | None = None
    ) -> np.ndarray | None:
        """The train-id label of sample ``index`` without reading its image (None if unlabeled)."""
        _, label_path = self.items[index]
        if label_path is None:
            return None
        assert self.label_space is not None  # checked in __init__
        return read_label(
            label_path,
            self.label_space,
            expect_shape,
            stored_ids=self.stored_ids,
            colors=self.label_colors,
        )

    def image_paths(self) -> list[str]:
        return [image for image, _ in self.items]

    def is_labeled(self) -> bool:
        """Whether every sample has a label file."""
        return all(label is not None for _, label in self.items)

    def subset(self, indices: Sequence[int]) -> SegmentationDataset:
        """A dataset of the samples at ``indices`` (in that order), sharing label space and root."""
        return SegmentationDataset(
            [self.items[i] for i in indices],
            self.label_space,
            self.root,
            self.stored_ids,
            self.label_colors,
        )


def cityscapes(
    root: str | Path, split: str, label_kind: Literal["labelIds", "labelTrainIds"] = "labelIds"
) -> SegmentationDataset:
    """Cityscapes fine annotations: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/*_gtFine_<label_kind>.png``.

    Args:
        root: The Cityscapes folder (holding ``leftImg8bit`` and ``gtFine``).
        split: ``train``, ``val``, ...
        label_kind: ``labelIds`` (regular ids, mapped to train ids) or ``labelTrainIds`` (files made
            by cityscapesscripts' createTrainIdLabelImgs, used as they are).
    """
    if label_kind == "labelIds":
        label_space, stored_ids = CITYSCAPES, CITYSCAPES_STORED_IDS
    elif label_kind == "labelTrainIds":
        label_space, stored_ids = CITYSCAPES_TRAIN_IDS, None
    else:
        raise ConfigError(f"label_kind must be 'labelIds' or 'labelTrainIds', not {label_kind!r}")
    root = _existing_folder(root)
    images = _cityscapes_images(root, split)
    label_folder = _existing_folder(root / "gtFine" / split)
    items = []
    for image in images:
        frame = image.name[: -len(f"{_CITYSCAPES_IMAGE_SUFFIX}.png")]
        label = label_folder / image.parent.name / f"{frame}_gtFine_{label_kind}.png"
        items.append((str(image), str(_existing_label(label, image))))
    return SegmentationDataset(items, label_space, root, stored_ids)


def cityscapes_coarse_images(root: str | Path, split: str = "train_extra") -> SegmentationDataset:
    """The images of a Cityscapes split without labels, e.g. the 19,998 ``train_extra`` images that
    only have coarse annotations, used as unlabeled data."""
    root = _existing_folder(root)
    items = [(str(image), None) for image in _cityscapes_images(root, split)]
    return SegmentationDataset(items, CITYSCAPES, root)


def camvid(root: str | Path, split: str) -> SegmentationDataset:
    """CamVid in the SegNet layout: images in ``<split>/`` (.png or .jpg), labels in
    ``<split>annot/`` as .png files with the same stem; stored value 11 (void) becomes ignore."""
    root = _existing_folder(root)
    images = _list_images(_existing_folder(root / split), recursive=False)
    label_folder = _existing_folder(root / f"{split}annot")
    items = [
        (str(image), str(_existing_label(label_folder / f"{image.stem}.png", image)))
        for image in images
    ]
    return SegmentationDataset(items, CAMVID, root, CAMVID_STORED_IDS)


def image_folder(root: str | Path, label_space: LabelSpace | None = None) -> SegmentationDataset:
    """Every .jpg, .jpeg and .png file under ``root`` (recursively, sorted), without labels.

    Args:
        root: The folder to search.
        label_space: Recorded on the dataset for whoever labels the images; optional.
    """
    root = _existing_folder(root)
    items = [(str(image), None) for image in _list_images(root, recursive=True)]
    return SegmentationDataset(items, label_space, root)


def paired_folder(root: str | Path, label_space: LabelSpace) -> SegmentationDataset:
    """Images under ``root/images`` with labels under ``root/labels`` (recursively).

    The label of ``images/a/b.jpg`` is ``labels/a/b.png``. Stored values are mapped by the label
    space (see core.labels.declare_label_space); this covers exports of KITTI, BDD100K, Mapillary.
    """
    root = _existing_folder(root)
    image_root = _existing_folder(root / "images")
    label_root = _existing_folder(root / "labels")
    items = []
    for image in _list_images(image_root, recursive=True):
        label = (label_root / image.relative_to(image_root)).with_suffix(".png")
        items.append((str(image), str(_existing_label(label, image))))
    return SegmentationDataset(items, label_space, root)


def mapillary(root: str | Path, split: str, version: str = "v1.2") -> SegmentationDataset:
    """Mapillary Vistas: ``<split>/images/*.jpg`` with ``<split>/labels/*.png`` (v1.2, 66 classes,
    ``config.json``) or ``<split>/v2.0/labels/*.png`` (v2.0, 124 classes, ``config_v2.0.json``).

    The classes come from the dataset's config file: each label with ``evaluate`` true is a class
    (named by ``readable``), the others (``Unlabeled``) are ignored. Label PNGs are palette images
    whose index is the label's position in the config (RGB copies are mapped by its colors).
    ``testing`` has no labels: its images come unlabeled.
    """
    root = _existing_folder(root)
    config_name = {"v1.2": "config.json", "v2.0": "config_v2.0.json"}.get(version)
    if config_name is None:
        raise ConfigError(f"Mapillary Vistas version must be v1.2 or v2.0, not {version!r}")
    labels = _mapillary_labels(existing_path(root / config_name, "file"))
    classes = [i for i, label in enumerate(labels) if label.get("evaluate", True)]
    names = [str(labels[i]["readable"]) for i in classes]
    if len(set(names)) != len(names):  # readable names are not unique in every release
        names = [str(labels[i]["name"]) for i in classes]
    colors: list[Color] = [(int(r), int(g), int(b)) for r, g, b in (x["color"] for x in labels)]
    space = declare_label_space(
        f"mapillary_{version}",
        names,
        [colors[i] for i in classes],
        {stored: train for train, stored in enumerate(classes)},
    )
    images = _list_images(_existing_folder(root / split / "images"), recursive=False)
    label_folder = root / split / ("labels" if version == "v1.2" else "v2.0/labels")
    if not label_folder.is_dir():
        return SegmentationDataset([(str(i), None) for i in images], space, root)
    items = [(str(i), str(_existing_label(label_folder / f"{i.stem}.png", i))) for i in images]
    return SegmentationDataset(items, space, root, range(len(labels)), colors)


def bdd100k(root: str | Path, split: str) -> SegmentationDataset:
    """BDD100K semantic segmentation: ``images/10k/<split>/*.jpg`` with
    ``labels/sem_seg/masks/<split>/*.png`` (the 19 Cityscapes train ids, 255 unknown). ``test``
    has no masks: its images come unlabeled."""
    root = _existing_folder(root)
    images = _list_images(_existing_folder(root / "images" / "10k" / split), recursive=False)
    masks = root / "labels" / "sem_seg" / "masks" / split
    if not masks.is_dir():
        return SegmentationDataset([(str(i), None) for i in images], CITYSCAPES_TRAIN_IDS, root)
    items = [(str(i), str(_existing_label(masks / f"{i.stem}.png", i))) for i in images]
    return SegmentationDataset(items, CITYSCAPES_TRAIN_IDS, root)


def kitti(root: str | Path, split: str) -> SegmentationDataset:
    """KITTI semantics: ``<split>/image_2/*.png`` with ``<split>/semantic/*.png`` (Cityscapes
    label ids, mapped to its 19 classes; images of varying sizes). ``testing`` has no labels."""
    root = _existing_folder(root)
    images = _list_images(_existing_folder(root / split / "image_2"), recursive=False)
    labels = root / split / "semantic"
    if not labels.is_dir():
        return SegmentationDataset([(str(i), None) for i in images], CITYSCAPES, root)
    items = [(str(i), str(_existing_label(labels / i.name, i))) for i in images]
    return SegmentationDataset(items, CITYSCAPES, root, CITYSCAPES_STORED_IDS)


def instance_map_path(source_format: str, label_path: str | None) -> Path | None:
    """The instance map beside a label file, when it is there: Cityscapes'
    ``*_gtFine_instanceIds.png``, KITTI's ``instance/<name>``; None for other formats."""
    path = None
    if label_path is not None and source_format == "cityscapes":
        for kind in ("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"):
            if label_path.endswith(kind):
                path = Path(label_path[: -len(kind)] + "_gtFine_instanceIds.png")
    elif label_path is not None and source_format == "kitti":
        path = Path(label_path).parent.parent / "instance" / Path(label_path).name
    return path if path is not None and path.is_file() else None


def read_instance_map(source_format: str, path: Path) -> np.ndarray:
    """An instance map (``instance_map_path``) in Cityscapes' encoding (core.cityscapes_metrics)."""
    raw = read_instance_file(path)
    return kitti_instances(raw) if source_format == "kitti" else raw.astype(np.int64)


def subset_fraction(ds: SegmentationDataset, fraction: float, seed: int) -> SegmentationDataset:
    """A random ``fraction`` of the samples, the same for the same seed.

    Keeps ``max(1, round(fraction * len(ds)))`` samples in their original order; e.g. 1/8 of the
    367 CamVid train images is 46.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"subset fraction must be in (0, 1], not {fraction}")
    _require_samples(ds)
    size = max(1, round(fraction * len(ds)))
    chosen = np.random.default_rng(seed).choice(len(ds), size=size, replace=False)
    return ds.subset(sorted(int(i) for i in chosen))


def subset_from_list(ds: SegmentationDataset, list_file: str | Path) -> SegmentationDataset:
    """The samples named in a list file (format in the module docstring), in dataset order.

    Raises:
        DataError: The list file is missing, or a line names no sample or several.
        EmptyDatasetError: The list names no image.
    """
    list_file = Path(list_file)
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(list_file, f"cannot read list file ({exc.strerror})") from exc
    by_path, by_stem = _sample_keys(ds)
    chosen: set[int] = set()
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        entry = fields[0].replace("\\", "/")
        matches = _matching_samples(entry, by_path, by_stem)
        if len(matches) != 1:
            found = "no image" if not matches else f"{len(matches)} images"
            raise DataError(list_file, f"line {number}: {entry!r} matches {found} of the dataset")
        chosen.add(matches[0])
    if not chosen:
        raise EmptyDatasetError(list_file, "the list file names no image")
    return ds.subset(sorted(chosen))


def n_shot_split(ds: SegmentationDataset, n: int, seed: int) -> SegmentationDataset:
    """A small labeled subset in which each class of the dataset appears in at least ``n`` images.

    Greedy: repeatedly take the image that contains the most classes still short of ``n`` images,
    ties broken by a seeded shuffle. A class found in fewer than ``n`` images gets all of them.
    Reads every label once to find its classes.
    """
    if n < 1:
        raise ConfigError(f"n_shot must be at least 1, not {n}")
    _require_samples(ds)
    if not ds.is_labeled():
        raise ConfigError(f"an N-shot split needs a label for every image of {ds.root}")
    classes_of = [_classes_in(ds, i) for i in range(len(ds))]
    images_per_class = Counter(c for image_classes in classes_of for c in image_classes)
    wanted = {c: min(n, count) for c, count in images_per_class.items()}

    order = np.random.default_rng(seed).permutation(len(ds)).tolist()
    chosen: list[int] = []
    while any(wanted.values()):
        # max() keeps the first of equal candidates, so the shuffle decides ties.
        best = max(order, key=lambda i: sum(1 for c in classes_of[i] if wanted[c] > 0))
        order.remove(best)
        chosen.append(best)
        for c in classes_of[best]:
            wanted[c] = max(0, wanted[c] - 1)
    return ds.subset(sorted(chosen))


def open_source(source: DataSource) -> SegmentationDataset:
    """The dataset a config describes, with its subset (fraction or list, then N-shot) applied.

    A relative ``subset_list`` path is looked up under the dataset root first, then in the working
    directory, so a list kept next to the data works wherever the job runs.
    """
    if source.id_map is not None and source.format != "paired":
        raise ConfigError(f"id_map is only used by format 'paired', not {source.format!r}")
    ds = _open_format(source)
    names = None if ds.label_space is None else list(ds.label_space.names)
    if source.classes is not None and names is not None and list(source.classes) != names:
        raise ConfigError(f"classes {source.classes} differ from the dataset's classes {names}")
    if source.subset_fraction is not None:
        ds = subset_fraction(ds, source.subset_fraction, source.subset_seed)
    if source.subset_list is not None:
        ds = subset_from_list(ds, _list_file_path(source.subset_list, source.root))
    if source.n_shot is not None:
        ds = n_shot_split(ds, source.n_shot, source.subset_seed)
    return ds


def _open_format(source: DataSource) -> SegmentationDataset:
    if source.format == "cityscapes":
        return cityscapes(source.root, source.split, source.label_kind)
    if source.format == "cityscapes_coarse":
        return cityscapes_coarse_images(source.root, source.split)
    if source.format == "camvid":
        return camvid(source.root, source.split)
    if source.format == "mapillary":
        return mapillary(source.root, source.split, source.version)
    if source.format == "bdd100k":
        return bdd100k(source.root, source.split)
    if source.format == "kitti":
        return kitti(source.root, source.split)
    declared = None
    if source.classes is not None:
        name = Path(source.root).name or "custom"
        declared = declare_label_space(name, source.classes, id_to_train=source.id_map)
    if source.format == "folder":
        return image_folder(source.root, declared)
    if source.format == "paired":
        assert declared is not None  # DataSource requires classes for 'paired'
        return paired_folder(source.root, declared)
    raise ConfigError(f"unknown dataset format {source.format!r}")


def _mapillary_labels(config: Path) -> list[dict]:
    try:
        labels = json.loads(config.read_text())["labels"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(config, f"not a Mapillary Vistas config (a 'labels' list): {exc}") from exc
    if not isinstance(labels, list) or not all(
        isinstance(x, dict) and {"name", "readable", "color"} <= x.keys() for x in labels
    ):
        raise DataError(config, "each of 'labels' needs name, readable and color")
    return labels


def _list_file_path(list_file: str, root: str) -> Path:
    path = Path(list_file)
    if not path.is_absolute() and (Path(root) / path).is_file():
        return Path(root) / path
    return path


def _existing_folder(path: str | Path) -> Path:
    return existing_path(path, "folder")


# While `collect_missing_labels` runs, the loaders list an image whose label file is missing with
# that (missing) path and note it here, instead of raising: `selftrain datasets check` reports them
# all at once.
_missing_labels: ContextVar[list[tuple[str, str]] | None] = ContextVar("missing", default=None)


@contextmanager
def collect_missing_labels() -> Iterator[list[tuple[str, str]]]:
    """Within the block, loaders keep images whose label file is missing and add (image, label)
    to the list this yields; outside, a missing label raises DataError."""
    missing: list[tuple[str, str]] = []
    token = _missing_labels.set(missing)
    try:
        yield missing
    finally:
        _missing_labels.reset(token)


def _existing_label(label: Path, image: Path) -> Path:
    if not label.is_file():
        missing = _missing_labels.get()
        if missing is None:
            raise DataError(label, f"missing label file for image {image}")
        missing.append((str(image), str(label)))
    return label


def _list_images(folder: Path, recursive: bool) -> list[Path]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    # Hidden files and folders are skipped: macOS leaves "._name.jpg" resource forks that are not
    # images, and tools keep copies in folders like ".ipynb_checkpoints".
    images = sorted(
        path
        for path in candidates
        if path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.is_file()
    )
    if not images:
        raise EmptyDatasetError(folder, f"no {'/'.join(IMAGE_SUFFIXES)} images found")
    return images


def _cityscapes_images(root: Path, split: str) -> list[Path]:
    folder = _existing_folder(root / "leftImg8bit" / split)
    images = sorted(folder.glob(f"*/*{_CITYSCAPES_IMAGE_SUFFIX}.png"))
    if not images:
        raise EmptyDatasetError(folder, f"no <city>/*{_CITYSCAPES_IMAGE_SUFFIX}.png images found")
    return images


def _require_samples(ds: SegmentationDataset) -> None:
    if len(ds) == 0:
        raise EmptyDatasetError(ds.root or "<dataset>", "the dataset holds no samples")


def _without_suffix(name: str) -> str:
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix.lower() in IMAGE_SUFFIXES else name


def _sample_keys(ds: SegmentationDataset) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Index -> keys a list file may use: relative path without suffix, and stem."""
    by_path: dict[str, list[int]] = {}
    by_stem: dict[str, list[int]] = {}
    for index, image in enumerate(ds.image_paths()):
        path = Path(image)
        if ds.root is not None and path.is_relative_to(ds.root):
            relative = path.relative_to(ds.root).with_suffix("").as_posix()
            by_path.setdefault(relative, []).append(index)
        stems = {path.stem, path.stem.removesuffix(_CITYSCAPES_IMAGE_SUFFIX)}
        for stem in stems:
            by_stem.setdefault(stem, []).append(index)
    return by_path, by_stem


def _matching_samples(
    entry: str, by_path: dict[str, list[int]], by_stem: dict[str, list[int]]
) -> list[int]:
    if entry.startswith("/"):
        # An absolute path from the machine that wrote the list (SegNet's CamVid lists are such):
        # only its file name can mean anything here.
        entry = entry.rsplit("/", 1)[1]
    if "/" in entry:
        return by_path.get(_without_suffix(entry.removeprefix("./")), [])
    return by_stem.get(_without_suffix(entry), []) or by_stem.get(entry, [])


def _classes_in(ds: SegmentationDataset, index: int) -> set[int]:
    label = ds.load_label(index)
    assert label is not None and ds.label_space is not None
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    return {int(c) for c in present if c != ds.label_space.ignore_index}
