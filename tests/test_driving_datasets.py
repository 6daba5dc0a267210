"""Mapillary Vistas, BDD100K and KITTI semantics read from tiny files written in each dataset's own
layout, with the right class ids (core/datasets.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.configs import DataSource
from core.datasets import open_source
from core.errors import InvalidLabelError
from core.io import write_image, write_label

# A Mapillary config with four labels; "Unlabeled" is not evaluated, so it is ignored.
MAPILLARY_LABELS = [
    {"name": "construction--flat--road", "readable": "Road", "color": [128, 64, 128],
     "instances": False, "evaluate": True},
    {"name": "object--vehicle--car", "readable": "Car", "color": [0, 0, 142],
     "instances": True, "evaluate": True},
    {"name": "nature--sky", "readable": "Sky", "color": [70, 130, 180],
     "instances": False, "evaluate": True},
    {"name": "void--unlabeled", "readable": "Unlabeled", "color": [0, 0, 0],
     "instances": False, "evaluate": False},
]  # fmt: skip
# Stored ids of the label maps below: rows of road (0), car (1), sky (2) and unlabeled (3).
STORED = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [0, 1, 2, 3]], np.uint8)


def _rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _palette_png(path: Path, ids: np.ndarray, labels: list[dict]) -> None:
    image = Image.fromarray(ids, mode="P")
    image.putpalette([c for label in labels for c in label["color"]])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _mapillary(root: Path, version: str) -> None:
    config = "config.json" if version == "v1.2" else "config_v2.0.json"
    root.mkdir(parents=True)
    (root / config).write_text(json.dumps({"labels": MAPILLARY_LABELS, "version": version}))
    labels = root / "training" / ("labels" if version == "v1.2" else "v2.0/labels")
    write_image(root / "training/images/frame_a.jpg", _rgb(3, 4))
    _palette_png(labels / "frame_a.png", STORED, MAPILLARY_LABELS)
    # The same label as a color picture (as some tools save it), mapped by the config's colors.
    colors = np.array([label["color"] for label in MAPILLARY_LABELS], np.uint8)
    write_image(root / "training/images/frame_b.jpg", _rgb(3, 4, 1))
    Image.fromarray(colors[STORED]).save(labels / "frame_b.png")


@pytest.mark.parametrize("version", ["v1.2", "v2.0"])
def test_mapillary_reads_palette_and_color_labels_through_its_config(tmp_path, version):
    _mapillary(tmp_path / "vistas", version)
    source = DataSource(
        format="mapillary", root=str(tmp_path / "vistas"), split="training", version=version
    )
    ds = open_source(source)
    assert ds.label_space.names == ("Road", "Car", "Sky")
    assert ds.label_space.colors[1] == (0, 0, 142)
    expected = np.array([[0, 0, 1, 1], [2, 2, 255, 255], [0, 1, 2, 255]], np.uint8)
    assert [Path(p).name for p in ds.image_paths()] == ["frame_a.jpg", "frame_b.jpg"]
    for index in range(2):
        image, label, _ = ds[index]
        assert image.shape == (3, 4, 3)
        np.testing.assert_array_equal(label, expected)


def test_a_mapillary_label_with_a_color_of_no_class_is_refused_by_name(tmp_path):
    _mapillary(tmp_path / "vistas", "v1.2")
    bad = np.zeros((3, 4, 3), np.uint8)
    bad[0, 0] = (1, 2, 3)
    Image.fromarray(bad).save(tmp_path / "vistas/training/labels/frame_b.png")
    ds = open_source(
        DataSource(format="mapillary", root=str(tmp_path / "vistas"), split="training")
    )
    with pytest.raises(
        InvalidLabelError, match=r"colors that are no class of the dataset: \(1, 2, 3\)"
    ):
        ds.load_label(1)


def test_bdd100k_masks_hold_cityscapes_train_ids(tmp_path):
    root = tmp_path / "bdd100k"
    mask = np.array([[0, 13, 255], [10, 18, 0]], np.uint8)  # road, car, unknown; sky, bicycle
    write_image(root / "images/10k/train/0a0a0b1a-7c39d841.jpg", _rgb(2, 3))
    write_label(root / "labels/sem_seg/masks/train/0a0a0b1a-7c39d841.png", mask)
    write_image(root / "images/10k/test/cabc30fc-e7726578.jpg", _rgb(2, 3))
    train = open_source(DataSource(format="bdd100k", root=str(root), split="train"))
    assert train.label_space.names[13] == "car" and train.label_space.num_classes == 19
    np.testing.assert_array_equal(train.load_label(0), mask)
    test = open_source(DataSource(format="bdd100k", root=str(root), split="test"))
    assert len(test) == 1 and not test.is_labeled()


def test_kitti_maps_cityscapes_ids_on_images_of_varying_sizes(tmp_path):
    root = tmp_path / "kitti"
    # Cityscapes label ids: 7 road, 26 car, 23 sky, 0 unlabeled.
    small = np.array([[7, 26], [23, 0]], np.uint8)
    write_image(root / "training/image_2/000000_10.png", _rgb(2, 2))
    write_label(root / "training/semantic/000000_10.png", small)
    write_image(root / "training/image_2/000001_10.png", _rgb(3, 5))
    write_label(root / "training/semantic/000001_10.png", np.full((3, 5), 26, np.uint8))
    write_image(root / "testing/image_2/000000_10.png", _rgb(2, 2))
    ds = open_source(DataSource(format="kitti", root=str(root), split="training"))
    np.testing.assert_array_equal(ds.load_label(0), [[0, 13], [10, 255]])
    image, label, _ = ds[1]
    assert image.shape == (3, 5, 3) and (label == 13).all()
    testing = open_source(DataSource(format="kitti", root=str(root), split="testing"))
    assert len(testing) == 1 and not testing.is_labeled()
