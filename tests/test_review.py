"""The review loop (core/review.py): the least certain pseudo labels out to CVAT and Label Studio
in files their own tools read, and corrected masks back in as a labeled source whose labels equal
the corrections."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.centroids import find_centroids
from core.configs import DataSource
from core.datasets import open_source
from core.io import read_image, write_image
from core.labels import CAMVID
from core.review import export_review, import_review, select_for_review
from core.store import LabelStore

brush = pytest.importorskip("label_studio_sdk.converter.brush")

SIZE = (12, 16)
N = 8


@pytest.fixture
def store(tmp_path) -> Path:
    """Eight images; image k has confidence 10 * (k + 1) on every pixel; images 5 and 6 hold
    class 9 (pedestrian), the rarest; the rest is sky (0) and building (1)."""
    rng = np.random.default_rng(0)
    paths = []
    for k in range(N):
        paths.append(
            write_image(
                tmp_path / "frames" / f"f{k}.png", rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
            )
        )
    store = LabelStore.create(
        tmp_path / "s.zarr", [str(p) for p in paths], [SIZE] * N, CAMVID, {}, {}
    )
    for k in range(N):
        label = np.zeros(SIZE, np.uint8)
        label[:, 8:] = 1
        if k in (5, 6):
            label[2:4, 2 : 4 + k - 5] = 9
        store.write(k, label, np.full(SIZE, 10 * (k + 1), np.uint8), find_centroids(label, 1))
    return tmp_path / "s.zarr"


def test_the_order_puts_the_least_certain_and_the_rarest_first(store):
    opened = LabelStore.open(store, read_only=True)
    assert select_for_review(opened, 5, "lowest-confidence") == [0, 1, 2, 3, 4]
    assert select_for_review(opened, 2, "class-rarity") == [5, 6]


def _corrected(label: np.ndarray) -> np.ndarray:
    """An annotator's fix: the bottom rows are road (3)."""
    fixed = label.copy()
    fixed[-3:] = 3
    return fixed


def test_cvat_round_trip(store, tmp_path):
    out = tmp_path / "review"
    result = export_review(store, out, 5, "lowest-confidence", "cvat")
    assert result["images"] == [0, 1, 2, 3, 4]
    with zipfile.ZipFile(out / "annotations.zip") as zipped:
        names = set(zipped.namelist())
        labelmap = zipped.read("labelmap.txt").decode().splitlines()
        items = zipped.read("ImageSets/Segmentation/default.txt").decode().split()
    # CVAT's Segmentation mask 1.1: the label map, the item list and one class mask per item.
    assert labelmap[1] == "background:0,0,0::" and labelmap[2] == "sky:128,128,128::"
    assert items == ["f0", "f1", "f2", "f3", "f4"]
    assert {f"SegmentationClass/{i}.png" for i in items} <= names
    mask = read_image(out / "cvat" / "SegmentationClass" / "f0.png")
    assert tuple(mask[0, 0]) == (128, 128, 128) and tuple(mask[0, 15]) == (128, 0, 0)

    # The annotator paints road into the class masks and exports the task again.
    opened = LabelStore.open(store, read_only=True)
    corrections = {}
    road = np.array(CAMVID.colors[3], np.uint8)
    for k in range(5):
        fixed = _corrected(opened.label(k))
        corrections[f"f{k}"] = fixed
        painted = read_image(out / "cvat" / "SegmentationClass" / f"f{k}.png")
        painted[fixed == 3] = road
        write_image(out / "cvat" / "SegmentationClass" / f"f{k}.png", painted)
    exported = tmp_path / "from_cvat.zip"
    with zipfile.ZipFile(exported, "w") as zipped:
        for path in (out / "cvat").rglob("*"):
            if path.is_file():
                zipped.write(path, path.relative_to(out / "cvat"))
    _check_import(exported, out, tmp_path / "imported", corrections)


def test_label_studio_round_trip(store, tmp_path):
    out = tmp_path / "review"
    export_review(store, out, 5, "lowest-confidence", "label-studio")
    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["data"]["selftrain_name"] for t in tasks] == ["f0", "f1", "f2", "f3", "f4"]
    opened = LabelStore.open(store, read_only=True)
    # Label Studio's own decoder reads each pre-annotated class region back exactly.
    for task, index in zip(tasks, range(5), strict=True):
        label = opened.label(index)
        for region in task["predictions"][0]["result"]:
            name = region["value"]["brushlabels"][0]
            alpha = brush.decode_rle(region["value"]["rle"]).reshape(*SIZE, 4)[..., 3]
            np.testing.assert_array_equal(alpha > 127, label == CAMVID.names.index(name))
    assert (
        '<BrushLabels name="label" toName="image"><Label value="sky"'
        in (out / "labeling_config.xml").read_text()
    )

    # The annotator's corrections come back as annotations in Label Studio's JSON export; the
    # tasks nobody corrected are skipped.
    corrections = {}
    for task, index in zip(tasks[:2], (0, 1), strict=True):
        fixed = _corrected(opened.label(index))
        corrections[task["data"]["selftrain_name"]] = fixed
        task["annotations"] = [{"result": [
            {"type": "brushlabels", "original_height": SIZE[0], "original_width": SIZE[1],
             "value": {"rle": brush.mask2rle(((fixed == c) * 255).astype(np.uint8)),
                       "brushlabels": [CAMVID.names[c]], "format": "rle"},
             "from_name": "label", "to_name": "image"}
            for c in np.unique(fixed)
        ]}]  # fmt: skip
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(tasks))
    result = _check_import(exported, out, tmp_path / "imported", corrections)
    assert result["skipped"] == 3


def _check_import(exported: Path, out: Path, target: Path, corrections: dict) -> dict:
    result = import_review(exported, out / "images", target, CAMVID)
    source = DataSource.model_validate(json.loads((target / "source.json").read_text()))
    assert source.format == "paired" and result["images"] == len(corrections)
    data = open_source(source)
    assert [Path(p).stem for p in data.image_paths()] == sorted(corrections)
    for index, stem in enumerate(sorted(corrections)):
        np.testing.assert_array_equal(data.load_label(index), corrections[stem])
    return result
