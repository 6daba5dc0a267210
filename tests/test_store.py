import hashlib
import json
import multiprocessing
import os
import shutil

import numpy as np
import pytest
import zarr

from core.errors import StoreError, StoreVersionError
from core.labeling import describe_teacher, open_for_labeling
from core.labels import declare_label_space
from core.store import FORMAT, ImageStatus, LabelStore, store_info
from selftrain.cli import main as cli_main

SPACE = declare_label_space("toy", ["road", "car", "sky"])
TEACHER = {"sha256": "aaa", "model_name": "small", "checkpoint": "teacher.pt"}
SETTINGS = {"mode": "whole", "precision": "fp32", "min_centroid_area": 1}


def new_store(tmp_path, paths=("a.png", "b.png", "c.png"), sizes=None, per_shard=2) -> LabelStore:
    """A store whose images are in shards of ``per_shard`` (3 images: shards [0, 1] and [2])."""
    return LabelStore.create(
        tmp_path / "store.zarr", list(paths), sizes, SPACE, TEACHER, SETTINGS, False, per_shard
    )


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


class StatusDiskFull:
    """The store's status array, except that writing it fails (the disk filled up)."""

    def __init__(self, status):
        self.status = status

    def __getitem__(self, key):
        return self.status[key]

    def __setitem__(self, key, value):
        raise OSError("disk full")


def test_an_image_is_pending_until_its_status_is_written(tmp_path):
    store = new_store(tmp_path)
    # The write dies after everything else of the image (labels, centroids, rows, shard totals)
    # but before the status, the last thing written.
    store.tables["status"] = StatusDiskFull(store.tables["status"])
    with pytest.raises(OSError, match="disk full"):
        write_blocks(store, 0)
    reopened = LabelStore.open(tmp_path / "store.zarr")
    assert reopened.status(0) == ImageStatus.PENDING
    assert reopened.pending_indices().tolist() == [0, 1, 2]
    # Never half-counted: the shard's totals already count image 0, its status does not.
    info = reopened.summary()
    assert (info["n_done"], info["pixels_per_class"]["road"]) == (0, 0)
    assert sum(info["centroids_per_class"].values()) == 0
    assert reopened.centroids().shape == (0, 5)
    # The next run writes it again, and it counts once.
    write_blocks(reopened, 0)
    write_blocks(reopened, 1)
    info = reopened.summary()
    assert info["pixels_per_class"] == {"road": 24, "car": 12, "sky": 12}
    assert reopened.centroids()[:, 0].tolist() == [0, 0, 0, 1, 1, 1]


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
    store.write(2, np.ones((2, 3), np.uint8), np.full((2, 3), 255, np.uint8), [[1, 0.5, 1, 6]])
    g = zarr.open_group(str(tmp_path / "store.zarr"), mode="r")
    assert g.attrs["class_names"] == ["road", "car", "sky"]
    assert g["paths"][:].tolist() == ["a.png", "b.png", "c.png"]
    assert g["status"][:].tolist() == [0, 1, 1]
    i = 1
    height, width = g["size"][i]
    assert (height, width) == (4, 6)
    np.testing.assert_array_equal(g[f"labels/{height}x{width}"][i], blocks_label())
    confident = g[f"confidence/{height}x{width}"][i] >= 0.9 * 255
    assert not confident.any()  # 200 < 229.5
    s = g.attrs["images_per_shard"]
    k = i // s
    rows = g["shard_totals"][k, 1]
    table = g["centroids"][k, :rows]  # (image, class, y, x, area)
    table = table[np.isin(table[:, 0], np.flatnonzero(g["status"][:] == 1))]
    assert table[:, :2].tolist() == [[1, 0], [1, 1], [1, 2]]
    # Shard 1 holds image 2 alone: its 2x3 label is in an array of 2x3 images.
    np.testing.assert_array_equal(g["labels/2x3"][2], np.ones((2, 3)))
    # Dimension names, for xarray (a dimension per height and width, as sizes differ).
    assert g["status"].metadata.dimension_names == ("image",)
    assert g["labels/2x3"].metadata.dimension_names == ("image", "y2", "x3")
    assert g["centroids"].metadata.dimension_names == ("shard", "centroid_row", "centroid_field")
    assert g["centroids"][1, : g["shard_totals"][1, 1]].tolist() == [[2, 1, 0.5, 1, 6]]


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


def test_a_v1_store_is_refused_with_how_to_relabel(tmp_path):
    path = tmp_path / "old.zarr"
    zarr.open_group(str(path), mode="w").update_attributes({"format": FORMAT, "format_version": 1})
    with pytest.raises(StoreVersionError, match="format version 1.*overwrite: true"):
        LabelStore.open(path)
    with pytest.raises(StoreVersionError, match="new store path"):
        open_for_labeling(path, ["a.png"], SPACE, TEACHER, SETTINGS)
    # With overwrite the label job replaces it (it is a label store, if an old one).
    store = open_for_labeling(path, ["a.png"], SPACE, TEACHER, SETTINGS, overwrite=True)
    assert (store.attributes["format_version"], store.image_paths()) == (2, ["a.png"])


def test_shards_hold_consecutive_images(tmp_path):
    store = new_store(tmp_path, paths=[f"{i}.png" for i in range(7)], per_shard=4)
    assert (store.n_shards, store.shard_range(0), store.shard_range(1)) == (2, (0, 4), (4, 7))
    assert [(k, part.tolist()) for k, part in store.shards_of([6, 1, 4, 3])] == [
        (0, [1, 3]),
        (1, [4, 6]),
    ]
    with pytest.raises(ValueError, match="image 4 is not in shard 0"):
        store.shard_writer(0).write(4, blocks_label(), blocks_label(), np.zeros((0, 4)))
    with pytest.raises(StoreError, match="shard 2 out of range"):
        store.shard_writer(2)
    with pytest.raises(ValueError, match="power of two"):
        LabelStore.create(tmp_path / "x.zarr", ["a.png"], None, SPACE, {}, {}, False, 3)


def files_under(path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(folder, name), path)
        for folder, _, names in os.walk(path)
        for name in names
    )


def test_a_shard_of_64_images_is_a_few_files(tmp_path):
    n = 64
    store = new_store(tmp_path, paths=[f"{i}.png" for i in range(n)], per_shard=n)
    before = set(files_under(store.path))
    with store.shard_writer(0) as writer:
        for i in range(n):
            label = np.roll(blocks_label(), i, axis=1)
            writer.write(i, label, np.full((4, 6), 100 + i, np.uint8), [[0, 1.5, 1.0, 12]])
    # One file each for labels and confidences (64 images of one size), one chunk of each of the
    # six per-image arrays written (size, class_pixels, run, labeled_at, status; no failure, so
    # no reason), one of the centroid table and one of the shard totals, and the two arrays' own
    # zarr.json: 11 files for 64 images.
    new = sorted(set(files_under(store.path)) - before)
    assert new == [
        "centroids/c/0/0/0",
        "class_pixels/c/0/0",
        "confidence/4x6/c/0/0/0",
        "confidence/4x6/zarr.json",
        "labeled_at/c/0",
        "labels/4x6/c/0/0/0",
        "labels/4x6/zarr.json",
        "run/c/0",
        "shard_totals/c/0/0",
        "size/c/0/0",
        "status/c/0",
    ]
    assert store.done_indices().tolist() == list(range(n))
    np.testing.assert_array_equal(store.label(37), np.roll(blocks_label(), 37, axis=1))
    assert (store.confidence(63) == 163).all()
    assert store.summary()["centroids_per_class"] == {"road": 64, "car": 0, "sky": 0}


def test_a_writer_flushes_when_its_buffer_fills(tmp_path):
    store = new_store(tmp_path, paths=[f"{i}.png" for i in range(4)], per_shard=4)
    # 4x6 label + confidence = 48 bytes per image: a 100-byte buffer flushes every 3rd image.
    writer = store.shard_writer(0, flush_bytes=100)
    for i in range(4):
        writer.write(i, blocks_label(), np.zeros((4, 6), np.uint8), np.zeros((0, 4)))
    assert LabelStore.open(store.path).done_indices().tolist() == [0, 1, 2]
    writer.flush()
    assert LabelStore.open(store.path).done_indices().tolist() == [0, 1, 2, 3]


def test_a_writer_that_raises_leaves_its_unflushed_images_pending(tmp_path):
    store = new_store(tmp_path, paths=[f"{i}.png" for i in range(4)], per_shard=4)
    with pytest.raises(RuntimeError, match="teacher crashed"), store.shard_writer(0) as writer:
        writer.write(0, blocks_label(), np.zeros((4, 6), np.uint8), np.zeros((0, 4)))
        raise RuntimeError("teacher crashed")
    assert store.statuses().tolist() == [0, 0, 0, 0]


def test_a_shard_finished_by_a_second_writer_keeps_the_first_ones_images(tmp_path):
    # A rerun's writer fills the gaps that a killed one left between done images.
    store = new_store(tmp_path, paths=[f"{i}.png" for i in range(4)], per_shard=4)
    for run, images in ((0, (1, 3)), (1, (0, 2))):
        with store.shard_writer(0, run) as writer:
            for i in images:
                confidence = np.full((4, 6), 10 * i, np.uint8)
                writer.write(i, np.full((4, 6), i % 3, np.uint8), confidence, [[i % 3, i, i, 4]])
    assert [int(store.confidence(i)[0, 0]) for i in range(4)] == [0, 10, 20, 30]
    assert [int(store.label(i)[3, 5]) for i in range(4)] == [0, 1, 2, 0]
    assert [store.image_record(i)["run"] for i in range(4)] == [1, 0, 1, 0]
    assert store.centroids().tolist() == [
        [0, 0, 0, 0, 4],
        [1, 1, 1, 1, 4],
        [2, 2, 2, 2, 4],
        [3, 0, 3, 3, 4],
    ]


def _write_one_shard(path: str, shard: int, start) -> None:
    store = LabelStore.open(path)
    start.wait(60)  # both processes write at the same time
    first, stop = store.shard_range(shard)
    with store.shard_writer(shard, flush_bytes=200) as writer:  # a flush every few images
        for index in range(first, stop):
            # Two sizes, so both writers create and fill the same two size groups at once.
            label = np.full((3 + index % 2, 5), index % 3, np.uint8)
            writer.write(
                index, label, np.full(label.shape, index, np.uint8), [[index % 3, 1, 2, 15]]
            )


def test_two_writers_write_two_shards_at_once(tmp_path):
    n, per_shard = 32, 16
    store = new_store(tmp_path, paths=[f"{i}.png" for i in range(n)], per_shard=per_shard)
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [
        context.Process(target=_write_one_shard, args=(str(store.path), shard, start))
        for shard in (0, 1)
    ]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    store = LabelStore.open(store.path)
    assert store.done_indices().tolist() == list(range(n))
    for index in range(n):
        assert store.label(index).shape == (3 + index % 2, 5)
        assert (store.label(index) == index % 3).all()
        assert (store.confidence(index) == index).all()
    assert store.centroids()[:, :2].tolist() == [[i, i % 3] for i in range(n)]
    # Two size groups, each with one file per shard: each file came whole from one writer.
    assert store.summary()["centroids_per_class"] == {"road": 11, "car": 11, "sky": 10}
    for kind in ("labels", "confidence"):
        for key in ("3x5", "4x5"):
            assert sorted(os.listdir(store.path / kind / key / "c")) == ["0", "1"]


def test_a_soft_label_store_keeps_class_probabilities_per_cell(tmp_path):
    settings = {**SETTINGS, "soft_stride": 4}
    store = LabelStore.create(
        tmp_path / "soft.zarr", ["a.png", "b.png"], None, SPACE, TEACHER, settings
    )
    assert store.soft_stride == 4
    label = blocks_label()  # 4 x 6: cells of 4 x 4 give a 1 x 2 grid
    probabilities = np.array([[[0.5, 0.25]], [[0.25, 0.25]], [[0.25, 0.5]]], dtype=np.float32)
    store.write(0, label, np.zeros_like(label), np.zeros((0, 4)), probabilities=probabilities)
    np.testing.assert_array_equal(LabelStore.open(store.path).probabilities(0), probabilities)
    with pytest.raises(ValueError, match=r"probabilities must be \(3, 1, 2\), got None"):
        store.write(1, label, np.zeros_like(label), np.zeros((0, 4)))
    with pytest.raises(ValueError, match=r"probabilities must be \(3, 1, 2\), got \(3, 2, 2\)"):
        store.write(1, label, label, np.zeros((0, 4)), probabilities=np.zeros((3, 2, 2)))
    # A hard-label store refuses them, and has none to read.
    hard = new_store(tmp_path)
    assert hard.soft_stride is None
    with pytest.raises(ValueError, match="keeps no probabilities"):
        hard.write(0, label, label, np.zeros((0, 4)), probabilities=probabilities)
    write_blocks(hard, 0)
    with pytest.raises(StoreError, match="hard labels only; label with soft_labels: true"):
        hard.probabilities(0)


def _damaged_copies(tmp_path) -> dict[str, str]:
    """A store of 8 done images in 2 shards, and copies of it damaged in four ways."""
    base = LabelStore.create(
        tmp_path / "base.zarr",
        [f"/x/{i}.png" for i in range(8)],
        None,
        SPACE,
        TEACHER,
        SETTINGS,
        images_per_shard=4,
    )
    for index in range(8):
        write_blocks(base, index)
    stores = {}
    damage = {
        "status_chunk": lambda p: (p / "status" / "c" / "1").unlink(),
        "label_chunk": lambda p: _truncate(p / "labels" / "4x6" / "c" / "1" / "0" / "0", 40),
        "table_metadata": lambda p: _truncate(p / "status" / "zarr.json", 50),
    }
    for name, spoil in damage.items():
        copy = tmp_path / f"{name}.zarr"
        shutil.copytree(base.path, copy)
        spoil(copy)
        stores[name] = str(copy)
    stores["base"] = str(base.path)
    return stores


def _truncate(path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def test_store_info_verify_reports_each_damaged_image_in_one_line(tmp_path, capsys):
    stores = _damaged_copies(tmp_path)
    assert cli_main(["store-info", "--verify", stores["base"]]) == 0
    capsys.readouterr()
    # A lost status chunk: the plain summary cannot tell; --verify can.
    assert cli_main(["store-info", "--verify", stores["status_chunk"]]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "shard 1: its totals count 4 done images, its status 0" in lines[0]
    # A truncated label chunk: one line per image it held.
    assert cli_main(["store-info", "--verify", stores["label_chunk"]]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": image ")[1].split(" ")[0] for line in lines] == ["4", "5", "6", "7"]
    assert all("label unreadable" in line for line in lines)
    # Damaged metadata: one line and exit code 2, with or without --verify.
    for args in (["store-info"], ["store-info", "--verify"]):
        assert cli_main([*args, stores["table_metadata"]]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "damaged label store: 'status'" in lines[0]
