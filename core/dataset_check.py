"""``selftrain datasets check``: what users most often get wrong in a labeled dataset, all at once.

Training stops at the first bad file (core.io); this reads every label of a dataset (or the first
``max_images``) and reports each kind of problem with its count and a few examples:

- ``missing_label``: an image without its label file; ``orphan_label``: a label file in a label
  folder that no image pairs with;
- ``palette``: a palette PNG where the format expects ids (the palette's colors are not the ids);
  ``color``: a color picture where ids are expected;
- ``bit_depth``: a 16-bit (or 32-bit) label where the format stores 8-bit ids;
- ``ids_outside_space``: stored values that are no class of the label space after mapping (each
  value with its pixel count);
- ``size_mismatch``: a label whose size differs from its image's (read from the image header);
- ``unreadable``: a file that does not decode.

It also gives each class's share of the labeled pixels (ignore left out), where a class that
never occurs, or one that swallows the image, shows.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.configs import DataSource
from core.datasets import SegmentationDataset, collect_missing_labels, open_source
from core.errors import DataError
from core.io import decode_indexed_label, image_size

EXAMPLES = 5


@dataclass
class _Findings:
    """Problems by kind: a count and the first examples."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < EXAMPLES:
            shown.append(example)

    def as_dict(self) -> dict[str, dict]:
        return {
            k: {"count": n, "examples": self.examples[k]} for k, n in sorted(self.counts.items())
        }


def check_dataset(source: DataSource, max_images: int | None = None) -> dict:
    """Check ``source``'s label files; returns the report (JSON-able).

    Returns:
        ``ok`` (no problems), ``images``, ``labeled``, ``checked``, ``problems`` (kind ->
        ``count``, ``examples``), ``class_pixel_share`` (class name -> share of labeled pixels),
        ``ids_outside_space`` (stored value -> pixels).

    Raises:
        DataError: The dataset's folders are not there (nothing to check).
    """
    findings = _Findings()
    with collect_missing_labels() as missing:
        dataset = open_source(source)
    missing_paths = {label for _, label in missing}
    for image, label in missing:
        findings.add("missing_label", f"{image}: no {label}")
    _find_orphans(dataset, findings)
    names = dataset.label_space.names if dataset.label_space is not None else ()
    pixels = np.zeros(len(names), np.int64)
    if not any(label for _, label in dataset.items):
        return _report(dataset, findings, 0, pixels, Counter())
    outside: Counter = Counter()
    checked = 0
    for image, label in dataset.items[:max_images]:
        if label is None or label in missing_paths:
            continue
        checked += 1
        _check_pair(dataset, Path(image), Path(label), findings, pixels, outside)
    return _report(dataset, findings, checked, pixels, outside)


def _check_pair(
    dataset: SegmentationDataset,
    image: Path,
    label: Path,
    findings: _Findings,
    pixels: np.ndarray,
    outside: Counter,
) -> None:
    stored = _stored_ids(dataset, label, findings)
    if stored is None:
        return
    try:
        height, width = image_size(image.read_bytes(), str(image))
    except (OSError, DataError) as exc:
        findings.add("unreadable", f"{image}: {exc}")
        return
    if stored.shape != (height, width):
        shape = f"{stored.shape[0]}x{stored.shape[1]}"
        findings.add("size_mismatch", f"{label}: {shape}, its image {height}x{width} (HxW)")
        return
    space = dataset.label_space
    assert space is not None
    values, counts = np.unique(stored, return_counts=True)
    train = space.to_train_ids(values)
    allowed = dataset.stored_ids
    bad = [
        (int(v), int(n))
        for v, t, n in zip(values, train, counts, strict=True)
        if int(v) > 255  # train ids are one byte; such a value is no class of any space
        or _no_class(int(t), space.num_classes, space.ignore_index)
        or (allowed is not None and int(v) not in allowed)
    ]
    for value, n in bad:
        outside[value] += n
    if bad:
        shown = ", ".join(f"{v} ({n} px)" for v, n in bad[:EXAMPLES])
        findings.add("ids_outside_space", f"{label}: {shown}")
    for v, t, n in zip(values, train, counts, strict=True):
        if int(v) <= 255 and t < space.num_classes:
            pixels[int(t)] += n


def _stored_ids(
    dataset: SegmentationDataset, label: Path, findings: _Findings
) -> np.ndarray | None:
    """The label's stored values, or None after noting why they cannot be used."""
    data = label.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as decoded:
            mode = decoded.mode
            raw = np.asarray(decoded)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        findings.add("unreadable", f"{label}: {exc}")
        return None
    if dataset.label_colors is not None:
        try:
            return decode_indexed_label(data, str(label), dataset.label_colors)
        except DataError as exc:
            findings.add("ids_outside_space", str(exc))
            return None
    if mode == "P":
        findings.add("palette", f"{label}: palette PNG; the format expects class ids")
        return None
    if mode in ("RGB", "RGBA") and not _gray(raw):
        findings.add("color", f"{label}: color picture ({mode}); the format expects class ids")
        return None
    if mode.startswith("I"):
        findings.add("bit_depth", f"{label}: {mode} pixels (max {int(raw.max())}); expected 8-bit")
    return raw[..., 0] if raw.ndim == 3 else raw


def _no_class(train_id: int, num_classes: int, ignore_index: int) -> bool:
    return train_id != ignore_index and train_id >= num_classes


def _gray(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all())


def _find_orphans(dataset: SegmentationDataset, findings: _Findings) -> None:
    """Label files in the label folders that no image of the dataset pairs with."""
    expected = {Path(label) for _, label in dataset.items if label is not None}
    folders = {label.parent for label in expected}
    names = {label.name for label in expected}
    suffixes = {"".join(label.suffixes[-1:]) for label in expected}
    for folder in sorted(folders):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix in suffixes and path not in expected and _same_kind(path.name, names):
                findings.add("orphan_label", f"{path}: no image pairs with it")


def _same_kind(name: str, names: set[str]) -> bool:
    """Whether ``name`` ends like the dataset's label files (Cityscapes keeps ``_labelIds`` beside
    ``_color`` and ``_instanceIds``; only the kind the dataset reads counts)."""
    endings = {n.rsplit("_", 1)[-1] for n in names if "_" in n}
    if not endings or len(endings) > 1:
        return True
    return name.rsplit("_", 1)[-1] in endings


def _report(
    dataset: SegmentationDataset,
    findings: _Findings,
    checked: int,
    pixels: np.ndarray,
    outside: Counter,
) -> dict:
    total = int(pixels.sum())
    names = list(dataset.label_space.names) if dataset.label_space is not None else []
    return {
        "ok": not findings.counts,
        "label_space": dataset.label_space.name if dataset.label_space is not None else None,
        "images": len(dataset),
        "labeled": sum(label is not None for _, label in dataset.items),
        "checked": checked,
        "problems": findings.as_dict(),
        "class_pixel_share": {
            name: (int(pixels[i]) / total if total else 0.0) for i, name in enumerate(names)
        },
        "ids_outside_space": {str(v): n for v, n in sorted(outside.items())},
    }
