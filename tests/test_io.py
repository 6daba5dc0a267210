import cv2
import numpy as np
import pytest
from shared_datasets import CAMVID_ROOT, needs_camvid

from core.datasets import CAMVID_STORED_IDS
from core.errors import (
    CorruptImageError,
    DataError,
    InvalidLabelError,
    SizeMismatchError,
)
from core.io import decode_image, image_size, read_image, read_label, write_image, write_label
from core.labels import CAMVID, CITYSCAPES, CITYSCAPES_TRAIN_IDS, declare_label_space


def _rgb(h: int = 4, w: int = 6) -> np.ndarray:
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 0)  # red
    image[0, 1] = (0, 255, 0)  # green
    image[0, 2] = (0, 0, 255)  # blue
    return image


def test_write_then_read_image_is_rgb(tmp_path):
    path = write_image(tmp_path / "deep" / "er" / "a.png", _rgb())
    assert path.is_file()
    image = read_image(path)
    np.testing.assert_array_equal(image, _rgb())
    # On disk OpenCV's order is BGR: the red pixel reads (0, 0, 255) raw.
    assert cv2.imread(str(path))[0, 0].tolist() == [0, 0, 255]


def test_read_image_of_grayscale_file_gives_three_channels(tmp_path):
    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), np.full((3, 5), 77, dtype=np.uint8))
    image = read_image(path)
    assert image.shape == (3, 5, 3)
    assert (image == 77).all()


def test_decode_image_equals_read_image(tmp_path):
    path = write_image(tmp_path / "a.jpg", _rgb(16, 16))
    np.testing.assert_array_equal(decode_image(path.read_bytes(), "a.jpg"), read_image(path))


@needs_camvid
def test_read_camvid_jpeg():
    image = read_image(CAMVID_ROOT / "train" / "0001TP_006690.jpg")
    assert image.shape == (360, 480, 3)
    assert image.dtype == np.uint8
    raw = cv2.imread(str(CAMVID_ROOT / "train" / "0001TP_006690.jpg"))
    np.testing.assert_array_equal(image, raw[:, :, ::-1])


def test_zero_byte_image(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(CorruptImageError, match=r"empty\.png: empty file"):
        read_image(path)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(CorruptImageError, match=r"notes\.png: not a decodable image"):
        read_image(path)


def test_decode_garbage_names_the_upload():
    with pytest.raises(CorruptImageError, match="upload.jpg"):
        decode_image(b"\x00\x01\x02", name="upload.jpg")
    with pytest.raises(CorruptImageError, match="empty file"):
        decode_image(b"", name="upload.jpg")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image(tmp_path, suffix):
    rng = np.random.default_rng(0)
    whole = write_image(tmp_path / f"whole{suffix}", rng.integers(0, 256, (64, 64, 3), np.uint8))
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(CorruptImageError, match=f"cut\\{suffix}"):
        read_image(cut)


def test_jpeg_without_end_marker_is_truncated():
    # Cut just before the end-of-image marker: some OpenCV builds still decode this.
    ok, encoded = cv2.imencode(".jpg", np.full((32, 32, 3), 100, np.uint8))
    assert ok
    with pytest.raises(CorruptImageError, match="cut.jpg"):
        decode_image(encoded.tobytes()[:-2], name="cut.jpg")


def test_missing_image_file(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.png: file does not exist"):
        read_image(tmp_path / "nowhere.png")


@needs_camvid
def test_camvid_label_values_are_train_ids():
    path = CAMVID_ROOT / "trainannot" / "0001TP_006690.png"
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    label = read_label(path, CAMVID, stored_ids=CAMVID_STORED_IDS)
    assert label.shape == raw.shape == (360, 480)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label[raw < 11], raw[raw < 11])
    assert (label[raw == 11] == 255).all()
    assert (raw == 11).any()  # this frame has void pixels, so the mapping is exercised
    assert set(np.unique(label).tolist()) <= set(range(11)) | {255}


def test_label_ids_mapped_by_label_space(tmp_path):
    path = write_label(tmp_path / "ids.png", np.array([[7, 26], [0, 33]], dtype=np.uint8))
    np.testing.assert_array_equal(read_label(path, CITYSCAPES), [[0, 13], [255, 18]])


def test_rgb_label_is_refused(tmp_path):
    path = tmp_path / "color.png"
    color = np.zeros((4, 4, 3), dtype=np.uint8)
    color[0, 0] = (128, 64, 128)
    cv2.imwrite(str(path), color)
    with pytest.raises(InvalidLabelError, match=r"color\.png: color \(RGB\) label"):
        read_label(path, CAMVID)


def test_label_with_three_identical_channels_is_read_as_grayscale(tmp_path):
    ids = np.array([[0, 3], [10, 11]], dtype=np.uint8)
    path = tmp_path / "gray3.png"
    cv2.imwrite(str(path), np.dstack([ids, ids, ids]))
    np.testing.assert_array_equal(read_label(path, CAMVID), [[0, 3], [10, 255]])


def test_four_channel_label_is_refused(tmp_path):
    path = tmp_path / "rgba.png"
    cv2.imwrite(str(path), np.zeros((4, 4, 4), dtype=np.uint8))
    with pytest.raises(InvalidLabelError, match=r"rgba\.png: label has 4 channels"):
        read_label(path, CAMVID)


def test_label_size_must_match_image(tmp_path):
    path = write_label(tmp_path / "small.png", np.zeros((3, 5), dtype=np.uint8))
    assert read_label(path, CAMVID, expect_shape=(3, 5)).shape == (3, 5)
    with pytest.raises(SizeMismatchError, match=r"small\.png: label is 3x5 .* image is 4x5"):
        read_label(path, CAMVID, expect_shape=(4, 5))


def test_camvid_values_above_void_are_refused(tmp_path):
    path = write_label(tmp_path / "bad.png", np.array([[3, 11], [12, 40]], dtype=np.uint8))
    with pytest.raises(InvalidLabelError, match=r"bad\.png: stored ids .* found: 12, 40$"):
        read_label(path, CAMVID, stored_ids=CAMVID_STORED_IDS)


def test_camvid_allows_ignore_value(tmp_path):
    path = write_label(tmp_path / "ok.png", np.array([[3, 255]], dtype=np.uint8))
    label = read_label(path, CAMVID, stored_ids=CAMVID_STORED_IDS)
    assert label.tolist() == [[3, 255]]


def test_train_ids_at_or_above_class_count_are_refused(tmp_path):
    path = write_label(tmp_path / "train.png", np.array([[0, 18], [19, 255]], dtype=np.uint8))
    with pytest.raises(InvalidLabelError, match=r"train\.png: ids >= 19 .* after mapping: 19$"):
        read_label(path, CITYSCAPES_TRAIN_IDS)


def test_declared_space_without_map_refuses_extra_ids(tmp_path):
    space = declare_label_space("three", ["a", "b", "c"])
    path = write_label(tmp_path / "lbl.png", np.array([[0, 2, 3, 7]], dtype=np.uint8))
    with pytest.raises(InvalidLabelError, match="found after mapping: 3, 7"):
        read_label(path, space)


def test_16_bit_labels(tmp_path):
    small = tmp_path / "small16.png"
    cv2.imwrite(str(small), np.array([[1, 2]], dtype=np.uint16))
    label = read_label(small, CAMVID)
    assert label.dtype == np.uint8
    assert label.tolist() == [[1, 2]]
    big = tmp_path / "big16.png"
    cv2.imwrite(str(big), np.array([[1, 300]], dtype=np.uint16))
    with pytest.raises(InvalidLabelError, match=r"big16\.png: stored ids above 255 found: 300"):
        read_label(big, CAMVID)


def test_corrupt_and_missing_label_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(CorruptImageError, match=r"empty\.png"):
        read_label(empty, CAMVID)
    with pytest.raises(DataError, match=r"gone\.png: file does not exist"):
        read_label(tmp_path / "gone.png", CAMVID)


def test_write_label_round_trip_and_checks(tmp_path):
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = write_label(tmp_path / "sub" / "l.png", ids)
    np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), ids)
    with pytest.raises(ValueError, match="must be PNG"):
        write_label(tmp_path / "l.jpg", ids)
    with pytest.raises(ValueError, match=r"expected an \(H, W\) uint8 label"):
        write_label(tmp_path / "l2.png", ids.astype(np.int64))
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 image"):
        write_image(tmp_path / "i.png", ids)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_image_size_reads_the_header_only(tmp_path, suffix):
    path = write_image(tmp_path / f"a{suffix}", np.zeros((37, 53, 3), dtype=np.uint8))
    data = path.read_bytes()
    assert image_size(data, "a") == (37, 53)
    # The header is enough: a file cut short after it still tells its size.
    assert image_size(data[: len(data) - 20], "a") == (37, 53)
    with pytest.raises(CorruptImageError, match="b: not a readable image header"):
        image_size(b"hello", "b")
