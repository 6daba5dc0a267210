import json

import numpy as np
import pytest

from core.labels import (
    CAMVID,
    CITYSCAPES,
    CITYSCAPES_TRAIN_IDS,
    IGNORE_INDEX,
    LabelSpace,
    declare_label_space,
    get_label_space,
)


def _official_cityscapes_labels():
    labels = pytest.importorskip(
        "cityscapesscripts.helpers.labels", reason="cityscapesscripts (a dev dependency) is absent"
    )
    return [label for label in labels.labels if 0 <= label.trainId <= 18 and label.id >= 0]


def test_cityscapes_id_to_train_matches_official_table():
    official = _official_cityscapes_labels()
    expected = {label.id: label.trainId for label in official}
    assert dict(CITYSCAPES.id_to_train) == expected
    # Every other stored value, 0..255, is ignored.
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in expected.items():
        lut[label_id] = train_id
    np.testing.assert_array_equal(CITYSCAPES.to_train_ids(np.arange(256)), lut)


def test_cityscapes_names_and_colors_match_official_table():
    official = sorted(_official_cityscapes_labels(), key=lambda label: label.trainId)
    assert CITYSCAPES.num_classes == 19
    assert list(CITYSCAPES.names) == [label.name for label in official]
    assert list(CITYSCAPES.colors) == [tuple(label.color) for label in official]


def test_cityscapes_known_ids():
    # road, car and bicycle by hand; 0 (unlabeled) and 1 (ego vehicle) are ignored.
    ids = np.array([[7, 26, 33], [0, 1, 255]], dtype=np.uint8)
    expected = np.array([[0, 13, 18], [255, 255, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(CITYSCAPES.to_train_ids(ids), expected)


def test_cityscapes_train_ids_is_identity_and_flags_ids_above_18():
    ids = np.array([[0, 18], [19, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(CITYSCAPES_TRAIN_IDS.to_train_ids(ids), ids)
    assert CITYSCAPES_TRAIN_IDS.invalid_values(ids) == [19]


def test_camvid_has_11_classes_and_void_is_ignored():
    assert CAMVID.num_classes == 11
    assert CAMVID.names[0] == "sky"
    assert CAMVID.names[3] == "road"
    assert CAMVID.names[10] == "bicyclist"
    mapped = CAMVID.to_train_ids(np.arange(12, dtype=np.uint8))
    assert mapped.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255]


def test_declare_label_space_with_id_map():
    space = declare_label_space(
        "mine", ["road", "car", "person"], id_to_train={10: 0, 20: 1, 30: 2}
    )
    assert space.num_classes == 3
    stored = np.array([[10, 20], [30, 40]], dtype=np.uint8)
    np.testing.assert_array_equal(space.to_train_ids(stored), [[0, 1], [2, 255]])
    # Default colors: one per class, all different.
    assert len(space.colors) == 3
    assert len(set(space.colors)) == 3


def test_declare_label_space_without_map_keeps_values():
    space = declare_label_space("plain", ["a", "b"])
    stored = np.array([0, 1, 2, 255], dtype=np.uint8)
    np.testing.assert_array_equal(space.to_train_ids(stored), stored)
    assert space.invalid_values(stored) == [2]


def test_id_map_to_a_missing_class_is_refused():
    with pytest.raises(ValueError, match="invalid id mapping"):
        declare_label_space("bad", ["a", "b"], id_to_train={5: 2})


def test_label_space_dict_round_trip_through_json():
    space = declare_label_space("mine", ["road", "car"], [(1, 2, 3), (4, 5, 6)], {7: 0, 26: 1})
    data = json.loads(json.dumps(space.to_dict()))
    assert data["id_to_train"] == {"7": 0, "26": 1}
    restored = LabelSpace.from_dict(data)
    assert restored == space
    assert restored.to_train_ids(np.array([7, 26, 8])).tolist() == [0, 1, 255]
    assert LabelSpace.from_dict(CITYSCAPES.to_dict()) == CITYSCAPES
    assert LabelSpace.from_dict(CITYSCAPES_TRAIN_IDS.to_dict()) == CITYSCAPES_TRAIN_IDS


def test_colorize_gives_class_colors_and_black_for_ignore():
    picture = CITYSCAPES.colorize(np.array([[0, 13], [255, 18]], dtype=np.uint8))
    assert picture.shape == (2, 2, 3)
    assert picture.dtype == np.uint8
    assert picture[0, 0].tolist() == [128, 64, 128]  # road
    assert picture[0, 1].tolist() == [0, 0, 142]  # car
    assert picture[1, 0].tolist() == [0, 0, 0]  # ignore
    assert picture[1, 1].tolist() == [119, 11, 32]  # bicycle


def test_get_label_space():
    assert get_label_space("camvid") is CAMVID
    assert get_label_space("cityscapes") is CITYSCAPES
    with pytest.raises(ValueError, match="unknown label space 'kitti'"):
        get_label_space("kitti")
