"""Label maps written as PNG files: a model's predictions for a folder (``selftrain predict``) or a
label store's pseudo labels (``selftrain store-export``).

Two formats:

- ``png``: one 8-bit PNG of train ids per image (255: no class), the format every tool here reads
  back (``format: paired`` with the model's classes);
- ``cityscapes``: Cityscapes label ids (road 7, car 26, ...; no class: 0), what the Cityscapes
  benchmark server and cityscapesscripts' evaluator expect. Only for models with the 19 Cityscapes
  classes.

Each file keeps its image's path relative to the images' root with the suffix ``.png`` (a
Cityscapes image keeps its ``<city>_<seq>_<frame>`` name, which the evaluator matches on).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from core.checkpoint import load_model
from core.configs import DataSource, InferenceMode
from core.datasets import open_source
from core.errors import ConfigError
from core.inference import predict
from core.io import read_image, write_label
from core.labels import CITYSCAPES, IGNORE_INDEX, LabelSpace
from core.store import LabelStore

LabelFormat = Literal["png", "cityscapes"]
# The Cityscapes label id of "unlabeled": what a pixel without a class becomes.
CITYSCAPES_UNLABELED = 0


def value_table(space: LabelSpace, fmt: LabelFormat) -> np.ndarray:
    """A (256,) uint8 table from train ids to the values the format writes.

    Raises:
        ConfigError: ``cityscapes`` for a label space that is not Cityscapes' 19 classes.
    """
    if fmt == "png":
        return np.arange(256, dtype=np.uint8)
    if fmt != "cityscapes":
        raise ConfigError(f"unknown label format {fmt!r}; use png or cityscapes")
    if tuple(space.names) != tuple(CITYSCAPES.names):
        raise ConfigError(
            f"format cityscapes needs the 19 Cityscapes classes; these labels have "
            f"{space.num_classes} ({space.name}): use format png"
        )
    assert CITYSCAPES.id_to_train is not None
    table = np.full(256, CITYSCAPES_UNLABELED, dtype=np.uint8)
    for label_id, train_id in sorted(CITYSCAPES.id_to_train.items(), reverse=True):
        if train_id != IGNORE_INDEX:
            table[train_id] = label_id  # the lowest id of a class wins (each has one)
    return table


def relative_names(paths: list[str]) -> list[Path]:
    """Each image's path relative to the folder all of them share, suffix ``.png``."""
    if not paths:
        return []
    root = Path(os.path.commonpath(paths)) if len(paths) > 1 else Path(paths[0]).parent
    return [Path(p).relative_to(root).with_suffix(".png") for p in paths]


def write_labels(labels: Iterable[tuple[Path, np.ndarray]], out: Path, table: np.ndarray) -> int:
    """Write each (name, train-id map) under ``out`` through ``table``; returns the count."""
    written = 0
    for name, label in labels:
        write_label(out / name, table[label])
        written += 1
    return written


def predict_folder(
    checkpoint: str | Path,
    source: DataSource,
    out: str | Path,
    fmt: LabelFormat = "png",
    mode: InferenceMode = "whole",
    device: str = "cpu",
) -> dict:
    """The model's labels of every image of ``source``, written under ``out`` in ``fmt``.

    Returns:
        ``images`` written, ``out``, ``format``.
    """
    model, space, _ = load_model(checkpoint, device)
    table = value_table(space, fmt)
    paths = open_source(source).image_paths()
    names = relative_names(paths)

    def labels() -> Iterator[tuple[Path, np.ndarray]]:
        with torch.inference_mode():
            for name, path in zip(names, paths, strict=True):
                label, _ = predict(model.eval(), read_image(path), mode, device=device)
                yield name, label

    written = write_labels(labels(), Path(out), table)
    return {"images": written, "out": str(out), "format": fmt}


def export_store(store_path: str | Path, out: str | Path, fmt: LabelFormat = "png") -> dict:
    """A label store's pseudo labels (its done images), written under ``out`` in ``fmt``.

    Returns:
        ``images`` written, ``out``, ``format``.
    """
    store = LabelStore.open(store_path, read_only=True)
    table = value_table(store.label_space, fmt)
    done = [int(i) for i in store.done_indices()]
    names = relative_names([store.image_path(i) for i in done])
    labels = ((name, store.label(i)) for name, i in zip(names, done, strict=True))
    written = write_labels(labels, Path(out), table)
    return {"images": written, "out": str(out), "format": fmt}
