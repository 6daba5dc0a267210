"""The review loop: send the pseudo labels the teacher is least sure of to annotators, and read
their corrections back as labeled data for the next teacher or student.

``export_review`` picks ``n`` done images of a label store (``lowest-confidence``: the lowest mean
confidence; ``class-rarity``: the images holding the classes with the fewest pseudo-labeled
pixels first) and writes them with their pseudo labels as pre-annotations:

- ``cvat``: CVAT's *Segmentation mask 1.1* layout (``labelmap.txt``, ``SegmentationClass/`` class
  color masks, ``ImageSets/Segmentation/default.txt``), zipped as ``annotations.zip`` for CVAT's
  "Upload annotations" on a task made of ``images/``;
- ``label-studio``: ``tasks.json`` (one task per image, the pseudo labels as a prediction of brush
  labels, RLE-encoded by label-studio-sdk's own converter) and ``labeling_config.xml``.

``import_review`` reads what the tool exports after the correction (CVAT's Segmentation mask 1.1
zip or folder, Label Studio's JSON export) into ``images/`` + ``labels/`` (train ids), a ``paired``
source with the store's classes (``source.json``).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np

from core.errors import ConfigError, DataError
from core.io import read_image, write_image, write_label
from core.label_export import relative_names
from core.label_studio import IMAGE_TAG, brush_regions, labeling_config
from core.labels import IGNORE_INDEX, LabelSpace
from core.store import LabelStore

ReviewOrder = Literal["lowest-confidence", "class-rarity", "disagreement"]
ReviewFormat = Literal["cvat", "label-studio"]
BACKGROUND = (0, 0, 0)  # CVAT's background: pixels without a class
# Images a student checkpoint predicts to rank by disagreement, unless told otherwise.
STUDENT_SCAN = 1024


def select_for_review(
    store: LabelStore,
    n: int,
    order: ReviewOrder,
    against: str | None = None,
    student: str | None = None,
    scan: int | None = None,
) -> list[int]:
    """The ``n`` done images to review first, most urgent first.

    Args:
        store: The label store.
        n: How many.
        order: ``lowest-confidence``, ``class-rarity``, or ``disagreement`` with another model:
            the label store ``against`` (e.g. the next loop's, labeled by the student) or the
            checkpoint ``student`` (run on ``scan`` images, default `STUDENT_SCAN`).
        against: See ``order``.
        student: See ``order``.
        scan: Rank only this many done images, spread evenly over the store.
    """
    done = store.done_indices()
    if order == "disagreement" and student is not None:
        scan = scan or STUDENT_SCAN
    if scan is not None:
        done = done[:: max(1, -(-len(done) // scan))]
    if order == "lowest-confidence":
        ranked = done[np.argsort(mean_confidences(store, done), kind="stable")]
    elif order == "class-rarity":
        ranked = done[np.argsort(-rarity_scores(store, done), kind="stable")]
    elif order == "disagreement":
        ranked = done[np.argsort(-_disagreements(store, done, against, student), kind="stable")]
    else:
        raise ConfigError(
            f"unknown review order {order!r}; use lowest-confidence, class-rarity or disagreement"
        )
    return [int(i) for i in ranked[:n]]


def _disagreements(
    store: LabelStore, done: np.ndarray, against: str | None, student: str | None
) -> np.ndarray:
    """Each image's disagreement with the other model (images it did not label rank last)."""
    from core.disagreement import model_disagreement, store_disagreement

    if (against is None) == (student is None):
        raise ConfigError("disagreement: give the other model as a store (against) or a student")
    if against is not None:
        scores = store_disagreement(store, LabelStore.open(against, read_only=True), done)
    else:
        scores = model_disagreement(store, done, str(student))
    return np.nan_to_num(scores, nan=-1.0)


def rarity_scores(store: LabelStore, indices: np.ndarray) -> np.ndarray:
    """Each image's rarest class, as 1 / that class's pseudo-labeled pixels in the store; the
    per-image class counts are read a shard at a time (memory stays one shard's rows)."""
    totals = store.class_pixels().astype(np.float64)
    rarity = np.where(totals > 0, 1.0 / np.maximum(totals, 1), 0.0)
    scores = np.zeros(len(indices))
    position = {int(index): k for k, index in enumerate(indices)}
    for shard, members in store.shards_of(indices):
        start, end = store.shard_range(shard)
        rows = store.tables["class_pixels"][start:end][members - start]
        for index, row in zip(members, rows, strict=True):
            scores[position[int(index)]] = ((row > 0) * rarity).max()
    return scores


def mean_confidences(store: LabelStore, indices: np.ndarray) -> np.ndarray:
    """Each image's mean confidence (0..1); one read per shard and image size."""
    sizes = store.tables["size"][:]
    means = np.zeros(len(indices))
    position = {int(index): k for k, index in enumerate(indices)}
    for _, members in store.shards_of(indices):
        for height, width in {tuple(sizes[i]) for i in members}:
            group = [int(i) for i in members if tuple(sizes[i]) == (height, width)]
            confidence = store.image_arrays(int(height), int(width))[1].get_orthogonal_selection(
                (group, slice(None), slice(None))
            )
            for index, plane in zip(group, confidence, strict=True):
                means[position[index]] = plane.mean() / 255
    return means


def confidence_histograms(
    store: LabelStore, indices: list[int], bins: int = 10
) -> dict[str, list[int]]:
    """For each class, how many of its pseudo-labeled pixels in ``indices`` fall in each of
    ``bins`` equal confidence bins from 0 to 1 (classes with no pixels left out)."""
    space = store.label_space
    counts = np.zeros((space.num_classes, bins), np.int64)
    for index in indices:
        label, confidence = store.label(index), store.confidence(index)
        keep = label != space.ignore_index
        binned = np.minimum(confidence[keep].astype(np.int64) * bins // 256, bins - 1)
        np.add.at(counts, (label[keep].astype(np.int64), binned), 1)
    return {
        name: [int(v) for v in counts[c]] for c, name in enumerate(space.names) if counts[c].any()
    }


def export_review(
    store_path: str | Path,
    out: str | Path,
    n: int,
    order: ReviewOrder,
    fmt: ReviewFormat,
    **other: str | int | None,
) -> dict:
    """Write the ``n`` images to review first, with their pseudo labels, for ``fmt``'s tool.

    Args:
        other: ``against``, ``student``, ``scan`` of `select_for_review`.

    Returns:
        ``images`` (their store indices, in review order), ``out``, ``format``, ``files``.
    """
    store = LabelStore.open(store_path, read_only=True)
    indices = select_for_review(store, n, order, **other)  # type: ignore[arg-type]
    out = Path(out)
    names = relative_names([store.image_path(i) for i in indices])
    stems = []
    for name, index in zip(names, indices, strict=True):
        source = Path(store.image_path(index))
        target = out / "images" / name.with_suffix(source.suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        stems.append(str(name.with_suffix("")))
    labels = [store.label(i) for i in indices]
    if fmt == "cvat":
        files = _write_cvat(out, stems, labels, store.label_space)
    elif fmt == "label-studio":
        files = _write_label_studio(out, stems, names, indices, labels, store, order)
    else:
        raise ConfigError(f"unknown review format {fmt!r}; use cvat or label-studio")
    return {"images": indices, "out": str(out), "format": fmt, "files": files}


def _write_cvat(out: Path, stems: list[str], labels: list[np.ndarray], space: LabelSpace) -> list:
    folder = out / "cvat"
    lines = ["# label:color_rgb:parts:actions", "background:0,0,0::"]
    lines += [
        f"{name}:{r},{g},{b}::" for name, (r, g, b) in zip(space.names, space.colors, strict=True)
    ]
    (folder / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (folder / "labelmap.txt").write_text("\n".join(lines) + "\n")
    (folder / "ImageSets" / "Segmentation" / "default.txt").write_text("\n".join(stems) + "\n")
    palette = np.zeros((256, 3), np.uint8)
    palette[: space.num_classes] = space.colors
    palette[IGNORE_INDEX] = BACKGROUND
    for stem, label in zip(stems, labels, strict=True):
        write_image(folder / "SegmentationClass" / f"{stem}.png", palette[label])
    archive = out / "annotations.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zipped.write(path, path.relative_to(folder))
    return [str(archive), str(folder)]


def _write_label_studio(
    out: Path,
    stems: list[str],
    names: list[Path],
    indices: list[int],
    labels: list[np.ndarray],
    store: LabelStore,
    order: ReviewOrder,
) -> list:
    space = store.label_space
    tasks = []
    for stem, name, index, label in zip(stems, names, indices, labels, strict=True):
        image = f"images/{name.with_suffix(Path(store.image_path(index)).suffix)}"
        result = brush_regions(label, space.names, region_prefix=f"{index}-")
        tasks.append(
            {
                "data": {IMAGE_TAG: f"/data/local-files/?d={image}", "selftrain_name": stem},
                "predictions": [{"model_version": f"teacher ({order})", "result": result}],
            }
        )
    (out / "tasks.json").write_text(json.dumps(tasks))
    (out / "labeling_config.xml").write_text(labeling_config(space) + "\n")
    return [str(out / "tasks.json"), str(out / "labeling_config.xml")]


def import_review(
    export: str | Path, images: str | Path, out: str | Path, space: LabelSpace
) -> dict:
    """Corrected masks from CVAT (Segmentation mask 1.1, zip or folder) or Label Studio (its JSON
    export) as a paired dataset under ``out`` with ``space``'s classes.

    Args:
        export: What the tool exported.
        images: The ``images/`` folder ``export_review`` wrote (the images the masks belong to).
        out: Where ``images/``, ``labels/`` and ``source.json`` go.
        space: The classes (the store's).

    Returns:
        ``images`` imported, ``skipped`` (tasks without a correction), ``source`` (a DataSource).
    """
    export, images, out = Path(export), Path(images), Path(out)
    if export.suffix == ".json":
        masks, skipped = _label_studio_masks(export, space)
    else:
        masks, skipped = _cvat_masks(export, space), 0
    by_stem = {
        str(p.relative_to(images).with_suffix("")): p for p in images.rglob("*") if p.is_file()
    }
    for stem, label in masks.items():
        if stem not in by_stem:
            raise DataError(export, f"a mask for {stem!r}, which is not among {images}'s images")
        image = by_stem[stem]
        if read_image(image).shape[:2] != label.shape:
            raise DataError(export, f"{stem}: mask {label.shape} but image of another size")
        target = out / "images" / image.relative_to(images)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, target)
        write_label(out / "labels" / f"{stem}.png", label)
    source = {"format": "paired", "root": str(out), "classes": list(space.names)}
    (out / "source.json").write_text(json.dumps(source, indent=2) + "\n")
    return {"images": len(masks), "skipped": skipped, "source": source}


def _cvat_masks(export: Path, space: LabelSpace) -> dict[str, np.ndarray]:
    if export.suffix == ".zip":
        folder = export.with_suffix("")
        with zipfile.ZipFile(export) as zipped:
            zipped.extractall(folder)
        export = folder
    colors = {}
    for line in (export / "labelmap.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, rgb = line.split(":")[:2]
            colors[tuple(int(v) for v in rgb.split(","))] = name
    masks = {}
    for path in sorted((export / "SegmentationClass").rglob("*.png")):
        rgb = read_image(path)
        label = np.full(rgb.shape[:2], IGNORE_INDEX, np.uint8)
        for color in np.unique(rgb.reshape(-1, 3), axis=0):
            name = colors.get(tuple(int(v) for v in color))
            if name is None:
                raise DataError(path, f"color {tuple(color)} is not in labelmap.txt")
            if name != "background":
                label[(rgb == color).all(axis=-1)] = space.names.index(name)
        stem = path.relative_to(export / "SegmentationClass").with_suffix("")
        masks[str(stem)] = label
    return masks


def _label_studio_masks(export: Path, space: LabelSpace) -> tuple[dict[str, np.ndarray], int]:
    from label_studio_sdk.converter.brush import decode_rle

    masks, skipped = {}, 0
    for task in json.loads(export.read_text()):
        annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if not annotations:
            skipped += 1
            continue
        label = None
        for region in annotations[-1]["result"]:  # the latest correction
            if region.get("type") != "brushlabels":
                continue
            height, width = region["original_height"], region["original_width"]
            if label is None:
                label = np.full((height, width), IGNORE_INDEX, np.uint8)
            alpha = decode_rle(region["value"]["rle"]).reshape(height, width, 4)[..., 3]
            name = region["value"]["brushlabels"][0]
            label[alpha > 127] = space.names.index(name)
        if label is not None:
            masks[task["data"]["selftrain_name"]] = label
    return masks, skipped
