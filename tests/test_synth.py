"""Tests of the synthetic street scenes (core/synth/)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from core.labels import CITYSCAPES
from core.synth import (
    EGO_VEHICLE,
    generate_scene,
    preview,
    write_synthetic_dataset,
)

# Cityscapes regular ids of the 19 training classes, in train-id order.
CLASS_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
ROAD, BUILDING, VEGETATION, SKY, MOTORCYCLE = 7, 11, 21, 23, 32
RARE = {"rider": 25, "truck": 27, "bus": 28, "train": 31, "motorcycle": 32, "bicycle": 33}
SIZE = (128, 256)


def _scenes(domain: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [generate_scene(np.random.default_rng(i), SIZE, domain) for i in range(n)]


@pytest.fixture(scope="module")
def source_scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    return _scenes("source", 40)


@pytest.fixture(scope="module")
def target_scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    return _scenes("target", 40)


def _shares(scenes: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    labels = np.stack([label for _, label in scenes])
    return np.bincount(labels.ravel(), minlength=256) / labels.size


def test_same_generator_state_gives_identical_scene() -> None:
    rgb_a, label_a = generate_scene(np.random.default_rng(3), SIZE, "target")
    rgb_b, label_b = generate_scene(np.random.default_rng(3), SIZE, "target")
    np.testing.assert_array_equal(rgb_a, rgb_b)
    np.testing.assert_array_equal(label_a, label_b)


def test_different_seeds_give_different_layouts() -> None:
    _, label_a = generate_scene(np.random.default_rng(3), SIZE)
    _, label_b = generate_scene(np.random.default_rng(4), SIZE)
    # Measured: 53% of the pixels change class between these two scenes.
    assert (label_a != label_b).mean() > 0.2


@pytest.mark.parametrize("size", [(256, 512), (64, 128), (100, 300), (32, 32)])
@pytest.mark.parametrize("domain", ["source", "target"])
def test_shapes_and_dtypes(size: tuple[int, int], domain: str) -> None:
    rgb, label = generate_scene(np.random.default_rng(0), size, domain)
    assert rgb.shape == (*size, 3) and rgb.dtype == np.uint8
    assert label.shape == size and label.dtype == np.uint8


def test_labels_are_cityscapes_regular_ids(source_scenes, target_scenes) -> None:
    values = set()
    for _, label in source_scenes + target_scenes:
        values |= {int(v) for v in np.unique(label)}
    # The 19 classes, and the hood of the camera's car ("ego vehicle", ignored in training).
    assert values == set(CLASS_IDS) | {EGO_VEHICLE}
    assert CITYSCAPES.to_train_ids(np.array([EGO_VEHICLE]))[0] == 255


@pytest.mark.parametrize("domain", ["source", "target"])
def test_every_class_appears_within_40_scenes(domain, source_scenes, target_scenes) -> None:
    scenes = source_scenes if domain == "source" else target_scenes
    shares = _shares(scenes)
    missing = [i for i in CLASS_IDS if shares[i] == 0]
    assert missing == []


def test_class_shares_are_imbalanced_like_real_streets(source_scenes) -> None:
    shares = _shares(source_scenes)
    # Measured over these 40 scenes: road 26.7%, building 21.7%, vegetation 14.6%, sky 4.3%,
    # car 13.0%, motorcycle 0.04%, bicycle 0.14%, rider 0.32%.
    assert shares[ROAD] > 0.2
    assert shares[BUILDING] > 0.15
    assert shares[VEGETATION] > 0.08
    assert shares[SKY] > 0.02
    assert shares[ROAD] > 100 * shares[MOTORCYCLE]
    for name, label_id in RARE.items():
        assert shares[label_id] < 0.04, name


def test_rare_classes_appear_in_a_minority_of_scenes(source_scenes) -> None:
    # Measured: bus in 8, train in 6, motorcycle in 8, truck in 11 of these 40 scenes.
    for name in ("truck", "bus", "train", "motorcycle"):
        present = sum(bool((label == RARE[name]).any()) for _, label in source_scenes)
        assert 0 < present < 20, name


def test_sky_is_above_the_road(source_scenes, target_scenes) -> None:
    for _, label in source_scenes + target_scenes:
        sky_rows, road_rows = np.nonzero(label == SKY)[0], np.nonzero(label == ROAD)[0]
        assert sky_rows.max() < road_rows.min()


def test_hood_is_at_the_bottom(source_scenes) -> None:
    hoods = [label == EGO_VEHICLE for _, label in source_scenes]
    with_hood = [h for h in hoods if h.any()]
    assert 5 < len(with_hood) < 35  # about half of the scenes
    for hood in with_hood:
        assert np.nonzero(hood)[0].min() > 0.85 * SIZE[0]


def test_target_domain_is_darker_and_bluer(source_scenes, target_scenes) -> None:
    source = np.mean([rgb.reshape(-1, 3).mean(axis=0) for rgb, _ in source_scenes[:10]], axis=0)
    target = np.mean([rgb.reshape(-1, 3).mean(axis=0) for rgb, _ in target_scenes[:10]], axis=0)
    # Measured mean RGB: source (114, 109, 102), target (81, 81, 88).
    assert source.mean() - target.mean() > 15
    assert target[2] - target[0] > source[2] - source[0] + 5


def test_write_synthetic_dataset_writes_the_cityscapes_layout(tmp_path) -> None:
    paths = write_synthetic_dataset(
        tmp_path, 3, domain="target", size=(64, 128), seed=5, split="val"
    )
    city = "synth_target"
    stems = [f"{city}_{i:06d}_000019" for i in range(3)]
    assert paths == [
        tmp_path / "leftImg8bit" / "val" / city / f"{s}_leftImg8bit.png" for s in stems
    ]
    label_dir = tmp_path / "gtFine" / "val" / city
    names = sorted(p.name for p in label_dir.iterdir())
    assert names == sorted(
        f"{s}_gtFine_{kind}.png" for s in stems for kind in ("labelIds", "labelTrainIds")
    )
    for path, stem in zip(paths, stems, strict=True):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        label_ids = cv2.imread(str(label_dir / f"{stem}_gtFine_labelIds.png"), cv2.IMREAD_UNCHANGED)
        train_ids = cv2.imread(
            str(label_dir / f"{stem}_gtFine_labelTrainIds.png"), cv2.IMREAD_UNCHANGED
        )
        assert image.shape == (64, 128, 3)
        assert label_ids.shape == train_ids.shape == (64, 128)
        np.testing.assert_array_equal(train_ids, CITYSCAPES.to_train_ids(label_ids))
        assert set(np.unique(train_ids)) <= set(range(19)) | {255}


def test_written_scenes_depend_on_seed_and_index_only(tmp_path) -> None:
    short = write_synthetic_dataset(tmp_path / "a", 2, size=(64, 128), seed=1)
    long = write_synthetic_dataset(tmp_path / "b", 4, size=(64, 128), seed=1)
    other = write_synthetic_dataset(tmp_path / "c", 2, size=(64, 128), seed=2)
    val = write_synthetic_dataset(tmp_path / "d", 2, size=(64, 128), seed=1, split="val")
    for i in range(2):
        assert short[i].read_bytes() == long[i].read_bytes()
        assert short[i].read_bytes() != other[i].read_bytes()
        assert short[i].read_bytes() != val[i].read_bytes()  # no scene is in train and val


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 0}, {"n": 1, "domain": "night"}, {"n": 1, "seed": -1}, {"n": 1, "size": (16, 64)}],
)
def test_write_synthetic_dataset_rejects_bad_arguments(tmp_path, kwargs) -> None:
    with pytest.raises(ValueError):
        write_synthetic_dataset(tmp_path, **kwargs)


def test_generate_scene_rejects_unknown_domain() -> None:
    with pytest.raises(ValueError, match="'dusk'"):
        generate_scene(np.random.default_rng(0), SIZE, "dusk")


def test_preview_puts_the_colored_label_right_of_the_picture() -> None:
    rgb = np.zeros((2, 3, 3), np.uint8)
    label = np.array([[7, 7, 23], [26, 0, 1]], np.uint8)
    picture = preview(rgb, label)
    assert picture.shape == (2, 6, 3)
    np.testing.assert_array_equal(picture[:, :3], rgb)
    assert tuple(picture[0, 3]) == (128, 64, 128)  # road
    assert tuple(picture[0, 5]) == (70, 130, 180)  # sky
    assert tuple(picture[1, 3]) == (0, 0, 142)  # car
    assert tuple(picture[1, 4]) == (0, 0, 0)  # unlabeled: ignored, black
