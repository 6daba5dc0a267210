from pathlib import Path

import cv2
import numpy as np
import pytest
from shared_datasets import CAMVID_ROOT, needs_camvid

from core.configs import DataSource
from core.datasets import (
    SegmentationDataset,
    camvid,
    cityscapes,
    cityscapes_coarse_images,
    image_folder,
    n_shot_split,
    open_source,
    paired_folder,
    subset_fraction,
    subset_from_list,
)
from core.errors import (
    ConfigError,
    CorruptImageError,
    DataError,
    EmptyDatasetError,
    InvalidLabelError,
    SizeMismatchError,
)
from core.io import write_image, write_label
from core.labels import CAMVID, declare_label_space


def _image(h: int = 4, w: int = 6, value: int = 0) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def _write_cityscapes(root: Path) -> None:
    """Three frames in two cities; frame labels hold road (7), car (26) and unlabeled (0)."""
    frames = {
        "aachen": ["aachen_000000_000019", "aachen_000001_000019"],
        "bremen": ["bremen_000000_000019"],
    }
    for city, names in frames.items():
        for name in names:
            write_image(root / "leftImg8bit" / "train" / city / f"{name}_leftImg8bit.png", _image())
            ids = np.zeros((4, 6), dtype=np.uint8)
            ids[:2] = 7
            ids[2:, :3] = 26
            train_ids = np.where(ids == 7, 0, np.where(ids == 26, 13, 255)).astype(np.uint8)
            gt = root / "gtFine" / "train" / city
            write_label(gt / f"{name}_gtFine_labelIds.png", ids)
            write_label(gt / f"{name}_gtFine_labelTrainIds.png", train_ids)
    for name in ["zurich_000000_000019", "zurich_000001_000019"]:
        write_image(
            root / "leftImg8bit" / "train_extra" / "zurich" / f"{name}_leftImg8bit.png", _image()
        )


def _write_camvid_like(root: Path, n: int = 3) -> None:
    for i in range(n):
        write_image(root / "train" / f"f{i}.png", _image())
        write_label(root / "trainannot" / f"f{i}.png", np.full((4, 6), i, dtype=np.uint8))


# --- CamVid (the real shared copy) --------------------------------------------------------------


@needs_camvid
def test_camvid_split_sizes():
    train = camvid(CAMVID_ROOT, "train")
    val = camvid(CAMVID_ROOT, "val")
    assert len(train) == 367
    assert len(val) == 101
    assert Path(train.items[0][0]).name == "0001TP_006690.jpg"
    assert Path(train.items[0][1]).name == "0001TP_006690.png"
    assert train.label_space is CAMVID
    assert train.image_paths() == sorted(train.image_paths())


@needs_camvid
def test_camvid_sample_has_train_ids():
    image, label, path = camvid(CAMVID_ROOT, "val")[0]
    assert Path(path).name == "0016E5_07959.jpg"
    assert image.shape == (360, 480, 3)
    assert image.dtype == np.uint8
    raw = cv2.imread(str(CAMVID_ROOT / "valannot" / "0016E5_07959.png"), cv2.IMREAD_UNCHANGED)
    assert label.shape == (360, 480)
    np.testing.assert_array_equal(label[raw < 11], raw[raw < 11])
    assert (label[raw == 11] == 255).all()
    assert set(np.unique(label).tolist()) <= set(range(11)) | {255}


@needs_camvid
def test_camvid_eighth_of_train_is_deterministic():
    train = camvid(CAMVID_ROOT, "train")
    first = subset_fraction(train, 1 / 8, seed=0)
    again = subset_fraction(camvid(CAMVID_ROOT, "train"), 1 / 8, seed=0)
    other = subset_fraction(train, 1 / 8, seed=1)
    assert len(first) == 46  # round(367 / 8) = round(45.875)
    assert first.image_paths() == again.image_paths()
    assert first.image_paths() != other.image_paths()
    assert set(first.image_paths()) <= set(train.image_paths())
    assert first.image_paths() == sorted(first.image_paths())  # original order kept
    assert first.label_space is CAMVID


@needs_camvid
def test_camvid_n_shot_split_covers_every_class():
    train = camvid(CAMVID_ROOT, "train")
    split = n_shot_split(train, 2, seed=0)
    assert 2 <= len(split) < 40
    assert split.image_paths() == n_shot_split(train, 2, seed=0).image_paths()
    images_with = np.zeros(11, dtype=int)
    for i in range(len(split)):
        present = np.unique(split.load_label(i))
        images_with[present[present < 11]] += 1
    assert (images_with >= 2).all(), images_with


@needs_camvid
def test_open_source_camvid_with_fraction():
    source = DataSource(
        format="camvid", root=str(CAMVID_ROOT), split="train", subset_fraction=0.125
    )
    ds = open_source(source)
    assert len(ds) == 46
    assert ds.image_paths() == subset_fraction(camvid(CAMVID_ROOT, "train"), 0.125, 0).image_paths()


@needs_camvid
def test_subset_from_list_accepts_segnet_style_lines(tmp_path):
    # SegNet's own lists give absolute PNG paths of another machine, image then label.
    listing = tmp_path / "list.txt"
    listing.write_text(
        "/SegNet/CamVid/train/0001TP_006720.png /SegNet/CamVid/trainannot/0001TP_006720.png\n"
        "train/0016E5_00390.png\n"
        "# a comment\n"
        "\n"
        "0006R0_f00930\n"
    )
    ds = subset_from_list(camvid(CAMVID_ROOT, "train"), listing)
    names = [Path(p).name for p in ds.image_paths()]
    assert names == ["0001TP_006720.jpg", "0006R0_f00930.jpg", "0016E5_00390.jpg"]


# --- Cityscapes (a small tree written here) -----------------------------------------------------


def test_cityscapes_label_ids_become_train_ids(tmp_path):
    _write_cityscapes(tmp_path)
    ds = cityscapes(tmp_path, "train")
    assert [Path(p).name for p in ds.image_paths()] == [
        "aachen_000000_000019_leftImg8bit.png",
        "aachen_000001_000019_leftImg8bit.png",
        "bremen_000000_000019_leftImg8bit.png",
    ]
    image, label, path = ds[2]
    assert image.shape == (4, 6, 3)
    assert path.endswith("bremen_000000_000019_leftImg8bit.png")
    expected = np.array(
        [[0] * 6, [0] * 6, [13, 13, 13, 255, 255, 255], [13, 13, 13, 255, 255, 255]],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(label, expected)
    # The train-id files give the same maps.
    train_kind = cityscapes(tmp_path, "train", label_kind="labelTrainIds")
    assert train_kind.items[2][1].endswith("bremen_000000_000019_gtFine_labelTrainIds.png")
    np.testing.assert_array_equal(train_kind[2][1], expected)


def test_cityscapes_missing_label_names_the_file(tmp_path):
    _write_cityscapes(tmp_path)
    (tmp_path / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match="aachen_000001_000019_gtFine_labelIds.png: missing label"):
        cityscapes(tmp_path, "train")


def test_cityscapes_label_ids_beyond_33_are_refused(tmp_path):
    _write_cityscapes(tmp_path)
    # A train-id file put where a regular-id file belongs holds 255.
    bad = tmp_path / "gtFine/train/bremen/bremen_000000_000019_gtFine_labelIds.png"
    write_label(bad, np.full((4, 6), 255, dtype=np.uint8))
    ds = cityscapes(tmp_path, "train")
    with pytest.raises(InvalidLabelError, match="bremen_000000_000019_gtFine_labelIds.png.*255"):
        ds[2]


def test_cityscapes_bad_label_kind_and_missing_split(tmp_path):
    _write_cityscapes(tmp_path)
    with pytest.raises(ConfigError, match="label_kind"):
        cityscapes(tmp_path, "train", label_kind="color")
    with pytest.raises(DataError, match="val: folder does not exist"):
        cityscapes(tmp_path, "val")


def test_cityscapes_coarse_images_are_unlabeled(tmp_path):
    _write_cityscapes(tmp_path)
    ds = cityscapes_coarse_images(tmp_path)
    assert len(ds) == 2
    assert all(label is None for _, label in ds.items)
    image, label, path = ds[1]
    assert image.shape == (4, 6, 3)
    assert label is None
    assert path.endswith("zurich_000001_000019_leftImg8bit.png")


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="nothing-here: folder does not exist"):
        cityscapes(tmp_path / "nothing-here", "train")
    with pytest.raises(DataError, match="nothing-here: folder does not exist"):
        camvid(tmp_path / "nothing-here", "train")
    with pytest.raises(DataError, match="nothing-here: folder does not exist"):
        image_folder(tmp_path / "nothing-here")


# --- CamVid-like trees with broken files --------------------------------------------------------


def test_camvid_layout_bad_files_raise_on_access(tmp_path):
    _write_camvid_like(tmp_path)
    (tmp_path / "train" / "f0.png").write_bytes(b"")
    (tmp_path / "train" / "f1.png").write_text("not an image")
    write_label(tmp_path / "trainannot" / "f2.png", np.zeros((5, 6), dtype=np.uint8))
    ds = camvid(tmp_path, "train")
    with pytest.raises(CorruptImageError, match=r"f0\.png: empty file"):
        ds[0]
    with pytest.raises(CorruptImageError, match=r"f1\.png: not a decodable image"):
        ds[1]
    with pytest.raises(SizeMismatchError, match=r"f2\.png: label is 5x6"):
        ds[2]


def test_camvid_layout_label_value_12_is_refused(tmp_path):
    _write_camvid_like(tmp_path, n=1)
    write_label(tmp_path / "trainannot" / "f0.png", np.full((4, 6), 12, dtype=np.uint8))
    with pytest.raises(InvalidLabelError, match=r"f0\.png: stored ids .* found: 12$"):
        camvid(tmp_path, "train")[0]


def test_camvid_layout_missing_label_and_empty_split(tmp_path):
    _write_camvid_like(tmp_path)
    (tmp_path / "trainannot" / "f1.png").unlink()
    with pytest.raises(DataError, match=r"f1\.png: missing label file for image .*f1\.png"):
        camvid(tmp_path, "train")
    (tmp_path / "val").mkdir()
    (tmp_path / "valannot").mkdir()
    with pytest.raises(EmptyDatasetError, match="val: no .* images found"):
        camvid(tmp_path, "val")


# --- image folders and paired folders -----------------------------------------------------------


def test_image_folder_is_recursive_and_sorted(tmp_path):
    write_image(tmp_path / "b" / "2.jpg", _image())
    write_image(tmp_path / "b" / "1.jpeg", _image())
    write_image(tmp_path / "a.png", _image())
    write_image(tmp_path / "c" / "d" / "3.PNG", _image())
    (tmp_path / "readme.txt").write_text("not an image")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05")  # macOS resource fork, skipped
    write_image(tmp_path / ".ipynb_checkpoints" / "a.png", _image())  # hidden folder, skipped
    ds = image_folder(tmp_path)
    relative = [Path(p).relative_to(tmp_path).as_posix() for p in ds.image_paths()]
    assert relative == ["a.png", "b/1.jpeg", "b/2.jpg", "c/d/3.PNG"]
    image, label, _ = ds[3]
    assert image.shape == (4, 6, 3)
    assert label is None


def test_empty_image_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("x")
    with pytest.raises(EmptyDatasetError, match="no .jpg/.jpeg/.png images found"):
        image_folder(tmp_path)


def test_paired_folder_maps_ids(tmp_path):
    space = declare_label_space("roads", ["road", "car"], id_to_train={7: 0, 26: 1})
    write_image(tmp_path / "images" / "seq1" / "x.jpg", _image(2, 3))
    write_label(
        tmp_path / "labels" / "seq1" / "x.png", np.array([[7, 26, 0], [7, 7, 99]], np.uint8)
    )
    ds = paired_folder(tmp_path, space)
    assert len(ds) == 1
    _, label, path = ds[0]
    assert path.endswith("x.jpg")
    np.testing.assert_array_equal(label, [[0, 1, 255], [0, 0, 255]])


def test_paired_folder_missing_label_and_bad_ids(tmp_path):
    space = declare_label_space("three", ["a", "b", "c"])
    write_image(tmp_path / "images" / "one.png", _image())
    write_label(tmp_path / "labels" / "one.png", np.full((4, 6), 3, dtype=np.uint8))
    with pytest.raises(InvalidLabelError, match=r"one\.png: ids >= 3 .* after mapping: 3"):
        paired_folder(tmp_path, space)[0]
    write_image(tmp_path / "images" / "two.png", _image())
    with pytest.raises(DataError, match=r"two\.png: missing label file"):
        paired_folder(tmp_path, space)


def test_open_source_paired_and_folder(tmp_path):
    write_image(tmp_path / "images" / "one.png", _image())
    write_label(tmp_path / "labels" / "one.png", np.full((4, 6), 26, dtype=np.uint8))
    source = DataSource(
        format="paired", root=str(tmp_path), classes=["road", "car"], id_map={7: 0, 26: 1}
    )
    ds = open_source(source)
    assert ds.label_space.names == ("road", "car")
    assert (ds[0][1] == 1).all()
    folder = open_source(DataSource(format="folder", root=str(tmp_path / "images")))
    assert len(folder) == 1
    assert folder[0][1] is None


def test_open_source_rejects_options_that_cannot_apply(tmp_path):
    write_image(tmp_path / "one.png", _image())
    with pytest.raises(ConfigError, match="N-shot split needs a label"):
        open_source(DataSource(format="folder", root=str(tmp_path), n_shot=1))
    with pytest.raises(ConfigError, match="id_map is only used by format 'paired'"):
        open_source(DataSource(format="camvid", root=str(tmp_path), id_map={1: 0}))


# --- subsets ------------------------------------------------------------------------------------


def _dataset_with_classes(
    tmp_path: Path, classes_per_image: list[list[int]]
) -> SegmentationDataset:
    """One 1-row label per image holding exactly the listed classes (pads with ignore)."""
    space = declare_label_space("four", ["a", "b", "c", "d"])
    for i, classes in enumerate(classes_per_image):
        write_image(tmp_path / "images" / f"{i}.png", _image(1, 4))
        row = np.full((1, 4), 255, dtype=np.uint8)
        row[0, : len(classes)] = classes
        write_label(tmp_path / "labels" / f"{i}.png", row)
    return paired_folder(tmp_path, space)


def test_n_shot_split_by_hand(tmp_path):
    # Class 3 is only in image 4; classes 0-2 are spread out.
    ds = _dataset_with_classes(tmp_path, [[0], [1], [0, 1, 2], [2], [0, 3], [1, 2]])
    one_shot = n_shot_split(ds, 1, seed=0)
    # Images 2 (0, 1, 2) and 4 (0, 3) cover all four classes; greedy finds them for any seed.
    for seed in range(5):
        assert [Path(p).name for p in n_shot_split(ds, 1, seed).image_paths()] == ["2.png", "4.png"]
    assert len(one_shot) == 2
    two_shot = n_shot_split(ds, 2, seed=0)
    counts = {c: 0 for c in range(4)}
    for i in range(len(two_shot)):
        for c in set(two_shot.load_label(i).ravel().tolist()) - {255}:
            counts[c] += 1
    # Class 3 exists in one image only, so it gets that one; the others get two.
    assert counts[0] >= 2 and counts[1] >= 2 and counts[2] >= 2 and counts[3] == 1


def test_subset_fraction_sizes(tmp_path):
    ds = _dataset_with_classes(tmp_path, [[0]] * 10)
    assert len(subset_fraction(ds, 0.01, seed=0)) == 1  # never empty
    assert len(subset_fraction(ds, 0.25, seed=0)) == 2  # round(2.5) -> 2 (round half to even)
    assert subset_fraction(ds, 1.0, seed=3).image_paths() == ds.image_paths()
    with pytest.raises(ConfigError, match="subset fraction"):
        subset_fraction(ds, 0.0, seed=0)


def test_subset_from_list_by_stem_and_path(tmp_path):
    ds = _dataset_with_classes(tmp_path, [[0]] * 4)
    listing = tmp_path / "few.txt"
    listing.write_text("3\nimages/1.jpg\n")
    assert [Path(p).name for p in subset_from_list(ds, listing).image_paths()] == ["1.png", "3.png"]
    listing.write_text("1\nmissing_frame\n")
    with pytest.raises(DataError, match=r"few\.txt: line 2: 'missing_frame' matches no image"):
        subset_from_list(ds, listing)
    listing.write_text("# nothing\n")
    with pytest.raises(EmptyDatasetError, match=r"few\.txt"):
        subset_from_list(ds, listing)


def test_open_source_list_file_relative_to_root(tmp_path):
    _dataset_with_classes(tmp_path, [[0], [1], [2]])
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "pick.txt").write_text("images/2.png\n0\n")
    source = DataSource(
        format="paired",
        root=str(tmp_path),
        classes=["a", "b", "c", "d"],
        subset_list="splits/pick.txt",
    )
    assert [Path(p).name for p in open_source(source).image_paths()] == ["0.png", "2.png"]
