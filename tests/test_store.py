import hashlib
import json
import multiprocessing

import numpy as np
import pytest
import zarr

from core.errors import StoreError
from core.labeling import describe_teacher, open_for_labeling
from core.labels import declare_label_space
from core.store import ImageStatus, LabelStore, store_info

SPACE = declare_label_space("toy", ["road", "car", "sky"])
TEACHER = {"sha256": "aaa", "model_name": "small", "checkpoint": "teacher.pt"}
SETTINGS = {"mode": "whole", "precision": "fp32", "min_centroid_area": 1}


def new_store(tmp_path, paths=("a.png", "b.png", "c.png"), sizes=None) -> LabelStore:
    return LabelStore.create(tmp_path / "store.zarr", list(paths), sizes, SPACE, TEACHER, SETTINGS)


def blocks_label() -> np.ndarray:
    """A 4x6 label: road on the left half, car in the top right 2x3 block, sky below it."""
    label = np.zeros((4, 6), dtype=np.uint8)
    label[:2, 3:] = 1
    label[2:, 3:] = 2
    return label


def write_blocks(store: LabelStore, index: int, run: int = 0) -> None:
    centroids = np.array([[0, 1.5, 1.0, 12], [1, 0.5, 4.0, 6], [2, 2.5, 4.0, 6]], dtype=float)
    store.write(index, blocks_label(), np.full((4, 6), 200, np.uint8), centroids, run=run)


def test_new_store_lists_images_in_order_all_pending(tmp_path):
    store = new_store(tmp_path)
    assert store.n_images == 3
    assert store.image_paths() == ["a.png", "b.png", "c.png"]
    assert store.image_path(2) == "c.png"
    assert [store.status(i) for i in range(3)] == [ImageStatus.PENDING] * 3
    assert store.pending_indices().tolist() == [0, 1, 2]
    assert store.done_indices().tolist() == []
    with pytest.raises(StoreError, match="size of image 0 is not known"):
        store.image_size(0)


def test_sizes_given_at_creation_are_kept(tmp_path):
    store = new_store(tmp_path, sizes=[(10, 20), None, (5, 7)])
    assert store.image_size(0) == (10, 20)
    assert store.image_size(2) == (5, 7)
    with pytest.raises(StoreError):
        store.image_size(1)


def test_write_then_read_back(tmp_path):
    store = new_store(tmp_path)
    write_blocks(store, 1, run=3)
    reopened = LabelStore.open(tmp_path / "store.zarr", read_only=True)
    assert reopened.status(1) == ImageStatus.DONE
    np.testing.assert_array_equal(reopened.label(1), blocks_label())
    np.testing.assert_array_equal(reopened.confidence(1), np.full((4, 6), 200, np.uint8))
    assert reopened.image_size(1) == (4, 6)
    assert reopened.image_centroids(1)[:, 0].tolist() == [0, 1, 2]
    record = reopened.image_record(1)
    assert (record["status"], record["size"], record["run"]) == ("done", [4, 6], 3)
    assert reopened.label_space == SPACE
    assert reopened.teacher == TEACHER


def test_images_of_different_sizes_keep_their_own_size(tmp_path):
    store = new_store(tmp_path)
    small = np.ones((2, 3), dtype=np.uint8)
    tall = np.full((9, 4), 2, dtype=np.uint8)
    store.write(0, small, np.zeros((2, 3), np.uint8), np.zeros((0, 4)))
    store.write(2, tall, np.zeros((9, 4), np.uint8), np.zeros((0, 4)))
    assert store.label(0).shape == (2, 3)
    assert store.label(2).shape == (9, 4)
    assert (store.image_size(0), store.image_size(2)) == ((2, 3), (9, 4))


def test_confidence_threshold_ignores_unsure_pixels_when_reading(tmp_path):
    store = new_store(tmp_path)
    label = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    confidence = np.array([[255, 100], [128, 127]], dtype=np.uint8)
    store.write(0, label, confidence, np.zeros((0, 4)))
    # 0.5 * 255 = 127.5: 128 and 255 stay, 100 and 127 become ignore.
    np.testing.assert_array_equal(store.label(0, confidence_threshold=0.5), [[0, 255], [2, 255]])
    np.testing.assert_array_equal(store.label(0), label)


def test_reading_an_image_that_is_not_done_raises(tmp_path):
    store = new_store(tmp_path)
    with pytest.raises(StoreError, match="image 0 is pending"):
        store.label(0)
    with pytest.raises(StoreError, match="out of range"):
        store.status(3)


def test_failed_images_keep_their_reason_and_are_retried_by_default(tmp_path):
    store = new_store(tmp_path)
    write_blocks(store, 0)
    store.mark_failed(1, "empty file (0 bytes)")
    assert store.status(1) == ImageStatus.FAILED
    assert store.failures() == [(1, "b.png", "empty file (0 bytes)")]
    assert store.pending_indices().tolist() == [1, 2]
    assert store.pending_indices(include_failed=False).tolist() == [2]
    assert store.image_record(1)["reason"] == "empty file (0 bytes)"


def test_a_failed_image_labeled_later_loses_its_reason(tmp_path):
    store = new_store(tmp_path)
    store.mark_failed(0, "not a decodable image")
    write_blocks(store, 0)
    assert store.failures() == []
    assert store.image_record(0)["reason"] is None


class DiskFull:
    def __setitem__(self, key, value):
        raise OSError("disk full")


def test_an_image_is_pending_until_its_status_is_written(tmp_path):
    store = new_store(tmp_path)
    # The write dies after the label arrays but before the status (the last thing written).
    store._reason = DiskFull()
    with pytest.raises(OSError, match="disk full"):
        write_blocks(store, 0)
    reopened = LabelStore.open(tmp_path / "store.zarr")
    assert reopened.status(0) == ImageStatus.PENDING
    assert reopened.pending_indices().tolist() == [0, 1, 2]


def test_write_checks_shapes_and_ids(tmp_path):
    store = new_store(tmp_path)
    label = np.zeros((4, 6), np.uint8)
    with pytest.raises(ValueError, match="confidence must be uint8"):
        store.write(0, label, np.zeros((4, 5), np.uint8), np.zeros((0, 4)))
    label[0, 0] = 3  # the toy space has classes 0..2 (and 255)
    with pytest.raises(ValueError, match="ids >= 3"):
        store.write(0, label, np.zeros((4, 6), np.uint8), np.zeros((0, 4)))
    assert store.status(0) == ImageStatus.PENDING


def test_centroids_table_has_image_index_first_and_only_done_images(tmp_path):
    store = new_store(tmp_path)
    write_blocks(store, 2)
    store.write(0, np.ones((2, 2), np.uint8), np.zeros((2, 2), np.uint8), [[1, 0.5, 0.5, 4]])
    store.mark_failed(1, "bad")
    table = store.centroids()
    assert table.tolist() == [
        [0, 1, 0.5, 0.5, 4],
        [2, 0, 1.5, 1.0, 12],
        [2, 1, 0.5, 4.0, 6],
        [2, 2, 2.5, 4.0, 6],
    ]
    assert store.centroids(indices=[0, 1]).tolist() == [[0, 1, 0.5, 0.5, 4]]


def test_add_images_appends_only_new_paths(tmp_path):
    store = new_store(tmp_path)
    write_blocks(store, 0)
    new = store.add_images(["a.png", "d.png", "c.png", "big.png"])
    assert new == [3, 4]
    assert store.image_paths() == ["a.png", "b.png", "c.png", "d.png", "big.png"]
    assert store.pending_indices().tolist() == [1, 2, 3, 4]
    # An image larger than any before fits: every image has arrays of its own size.
    big = np.full((40, 60), 2, np.uint8)
    store.write(4, big, np.zeros((40, 60), np.uint8), np.zeros((0, 4)))
    reopened = LabelStore.open(tmp_path / "store.zarr")
    np.testing.assert_array_equal(reopened.label(0), blocks_label())
    assert reopened.label(4).shape == (40, 60)
    assert reopened.add_images(["d.png"]) == []


def test_summary_counts_pixels_and_centroids_per_class(tmp_path):
    store = new_store(tmp_path)
    write_blocks(store, 0)
    write_blocks(store, 1)
    store.mark_failed(2, "bad")
    info = store_info(tmp_path / "store.zarr")
    json.dumps(info)  # the CLI prints it
    assert (info["n_images"], info["n_done"], info["n_failed"], info["n_pending"]) == (3, 2, 1, 0)
    # Per image: 12 road, 6 car, 6 sky pixels; one region of each.
    assert info["pixels_per_class"] == {"road": 24, "car": 12, "sky": 12}
    assert info["centroids_per_class"] == {"road": 2, "car": 2, "sky": 2}


def test_runs_and_progress_are_recorded_in_attributes(tmp_path):
    store = new_store(tmp_path)
    assert store.progress is None
    run = store.start_run({"batch_size": 4})
    assert run == 0
    store.set_progress(run, "running", done=1, failed=0, total=3, images_per_s=2.0)
    assert LabelStore.open(tmp_path / "store.zarr").progress["done"] == 1
    store.set_progress(run, "finished", done=3, failed=0, total=3, images_per_s=2.5)
    assert store.start_run({"batch_size": 4}) == 1
    attrs = LabelStore.open(tmp_path / "store.zarr").attributes
    assert [r["state"] for r in attrs["runs"]] == ["finished", "running"]
    assert attrs["runs"][0]["done"] == 3
    assert attrs["progress"]["state"] == "finished"


def test_plain_zarr_reads_the_store(tmp_path):
    # The lines shown in docs/store.md.
    store = new_store(tmp_path)
    write_blocks(store, 1)
    g = zarr.open_group(str(tmp_path / "store.zarr"), mode="r")
    assert g.attrs["class_names"] == ["road", "car", "sky"]
    assert g["paths"][:].tolist() == ["a.png", "b.png", "c.png"]
    assert g["status"][:].tolist() == [0, 1, 0]
    assert g["size"][1].tolist() == [4, 6]
    np.testing.assert_array_equal(g["labels/1"][:], blocks_label())
    assert g["centroids/1"].shape == (3, 4)


def test_create_refuses_an_existing_store_unless_overwrite(tmp_path):
    new_store(tmp_path)
    with pytest.raises(StoreError, match="already exists"):
        new_store(tmp_path)
    store = LabelStore.create(
        tmp_path / "store.zarr", ["x.png"], None, SPACE, TEACHER, SETTINGS, overwrite=True
    )
    assert store.image_paths() == ["x.png"]


def test_overwrite_never_deletes_a_folder_that_is_not_a_store(tmp_path):
    folder = tmp_path / "store.zarr"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    with pytest.raises(StoreError, match="not a label store; not deleting it"):
        LabelStore.create(folder, ["a.png"], None, SPACE, TEACHER, SETTINGS, overwrite=True)
    assert (folder / "thesis.tex").read_text() == "precious"


def test_open_refuses_what_is_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="no label store here"):
        LabelStore.open(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a label store"):
        LabelStore.open(tmp_path / "other.zarr")


def test_open_for_labeling_resumes_and_appends_with_the_same_teacher(tmp_path):
    path = tmp_path / "store.zarr"
    store = open_for_labeling(path, ["a.png", "b.png"], SPACE, TEACHER, SETTINGS)
    write_blocks(store, 0)
    store = open_for_labeling(path, ["a.png", "b.png", "c.png"], SPACE, TEACHER, SETTINGS)
    assert store.image_paths() == ["a.png", "b.png", "c.png"]
    assert store.pending_indices().tolist() == [1, 2]
    # overwrite does not wipe a store of the same teacher: a rerun resumes.
    store = open_for_labeling(path, ["a.png"], SPACE, TEACHER, SETTINGS, overwrite=True)
    assert store.done_indices().tolist() == [0]


def test_open_for_labeling_refuses_another_teacher_or_settings(tmp_path):
    path = tmp_path / "store.zarr"
    write_blocks(open_for_labeling(path, ["a.png"], SPACE, TEACHER, SETTINGS), 0)
    other_teacher = {**TEACHER, "sha256": "bbb"}
    with pytest.raises(StoreError, match="teacher sha256 'aaa' != 'bbb'"):
        open_for_labeling(path, ["a.png"], SPACE, other_teacher, SETTINGS)
    with pytest.raises(StoreError, match="mode 'whole' != 'slide'"):
        open_for_labeling(path, ["a.png"], SPACE, TEACHER, {**SETTINGS, "mode": "slide"})
    assert LabelStore.open(path).done_indices().tolist() == [0]
    store = open_for_labeling(path, ["a.png"], SPACE, other_teacher, SETTINGS, overwrite=True)
    assert store.teacher["sha256"] == "bbb"
    assert store.pending_indices().tolist() == [0]


def test_describe_teacher_hashes_the_checkpoint_file(tmp_path):
    checkpoint = tmp_path / "teacher.pt"
    checkpoint.write_bytes(b"abc")
    teacher = describe_teacher(
        checkpoint, {"model_name": "small", "model_options": {}, "epoch": 7, "config": None}
    )
    assert teacher["sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert teacher["sha256"].startswith("ba7816bf")  # the well-known sha256 of "abc"
    assert (teacher["model_name"], teacher["epoch"]) == ("small", 7)


def _write_every_other(path: str, first: int, n: int) -> None:
    store = LabelStore.open(path)
    for index in range(first, n, 2):
        label = np.full((3 + index, 5), index % 3, np.uint8)
        store.write(index, label, np.full(label.shape, index, np.uint8), np.zeros((0, 4)))


def test_two_processes_writing_different_images_at_once(tmp_path):
    n = 16
    store = new_store(tmp_path, paths=[f"{i}.png" for i in range(n)])
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_write_every_other, args=(str(store.path), first, n))
        for first in (0, 1)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    store = LabelStore.open(store.path)
    assert store.done_indices().tolist() == list(range(n))
    for index in range(n):
        assert store.label(index).shape == (3 + index, 5)
        assert (store.label(index) == index % 3).all()
        assert (store.confidence(index) == index).all()
