"""The label job end to end on a local Ray (2 CPUs), with a tiny model and small images."""

from functools import partial

import cv2
import numpy as np
import pytest
import ray
import torch

from core.centroids import find_centroids
from core.checkpoint import load_model, save_checkpoint
from core.configs import DataSource, LabelJobConfig
from core.errors import StoreError
from core.inference import predict, predict_soft_batch
from core.io import read_image, write_image
from core.label_shards import DONE, FAILED, SKIPPED
from core.labels import CITYSCAPES_TRAIN_IDS
from core.models import build_model
from core.store import ImageStatus, LabelStore
from jobs.label import ModelStep, TeacherLabeler, run, teacher_step

N_IMAGES = 10


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Random colors blurred up from a coarse grid: regions, not noise, so centroids are few."""
    coarse = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def write_images(folder, names, seed, sizes=((64, 128),)) -> list:
    rng = np.random.default_rng(seed)
    paths = []
    for k, name in enumerate(names):
        height, width = sizes[k % len(sizes)]
        paths.append(write_image(folder / name, smooth_image(rng, height, width)))
    return paths


def save_teacher(path, seed: int):
    torch.manual_seed(seed)
    model = build_model("small", CITYSCAPES_TRAIN_IDS.num_classes)
    return save_checkpoint(path, model, "small", {}, CITYSCAPES_TRAIN_IDS, epoch=1)


@pytest.fixture(scope="module")
def ray_local():
    # address="local": a fresh instance even when a cluster runs on this machine.
    ray.init(
        address="local", num_cpus=2, resources={"emulated_accelerator": 2}, include_dashboard=False
    )
    yield
    ray.shutdown()


@pytest.fixture
def one_thread():
    """Torch on one thread, as in an actor (the labeler sets it); restored afterwards. Two threads
    on a busy 2-core machine run these small models many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt", seed=0)


@pytest.fixture
def images(tmp_path):
    """Ten images, two sizes mixed (batches hold both), in a nested folder."""
    folder = tmp_path / "images"
    names = [f"city{k % 2}/img_{k:02d}.png" for k in range(N_IMAGES)]
    write_images(folder, names, seed=1, sizes=((64, 128), (48, 80)))
    return folder


def config_for(teacher, folder, store, **options) -> LabelJobConfig:
    return LabelJobConfig(
        teacher_checkpoint=str(teacher),
        source=DataSource(format="folder", root=str(folder)),
        store=str(store),
        batch_size=options.pop("batch_size", 4),
        num_actors=options.pop("num_actors", 2),
        cpus_per_actor=0.5,
        min_centroid_area=4,
        ray_address="local",
        # Shards of 4: the ten images are three shards, spread over the two actors.
        images_per_shard=options.pop("images_per_shard", 4),
        **options,
    )


@pytest.mark.parametrize("layout", ["fused", "staged"])
def test_every_image_is_labeled_as_core_predicts(
    ray_local, teacher, images, tmp_path, one_thread, layout
):
    config = config_for(teacher, images, tmp_path / "labels.zarr", layout=layout)
    result = run(config, progress_bar=False)
    assert (result["n_images"], result["n_done"], result["labeled"]) == (
        N_IMAGES,
        N_IMAGES,
        N_IMAGES,
    )
    store = LabelStore.open(tmp_path / "labels.zarr")
    assert (store.images_per_shard, store.n_shards) == (4, 3)
    model, _, _ = load_model(teacher)
    expected_paths = sorted(str(p) for p in images.rglob("*.png"))
    assert store.image_paths() == expected_paths
    table = store.centroids()
    for index, path in enumerate(expected_paths):
        label, confidence = predict(model, read_image(path), mode="whole")
        np.testing.assert_array_equal(store.label(index), label)
        stored = store.confidence(index).astype(int)
        assert np.abs(stored - np.rint(confidence * 255)).max() <= 1
        assert store.image_size(index) == label.shape
        np.testing.assert_array_equal(
            table[table[:, 0] == index, 1:], find_centroids(label, min_area=4)
        )
    info = store.summary()
    assert sum(info["pixels_per_class"].values()) == 5 * 64 * 128 + 5 * 48 * 80
    assert sum(info["centroids_per_class"].values()) == len(table) > 0
    assert store.progress["state"] == "finished"
    assert (store.progress["done"], store.progress["total"]) == (N_IMAGES, N_IMAGES)
    assert store.attributes["settings"] == config.inference().identity()


@pytest.mark.parametrize("layout", ["fused", "staged"])
def test_bad_files_fail_alone_with_their_reasons(ray_local, teacher, images, tmp_path, layout):
    whole = (images / "city0" / "img_00.png").read_bytes()
    (images / "corrupt.png").write_bytes(whole[: len(whole) // 2])
    (images / "empty.png").write_bytes(b"")
    (images / "notes.png").write_text("not an image at all\n")
    config = config_for(teacher, images, tmp_path / "labels.zarr", layout=layout)
    result = run(config, progress_bar=False)
    assert (result["n_done"], result["n_failed"]) == (N_IMAGES, 3)
    # The driver's counts (one row per shard) agree with the store.
    assert (result["labeled"], result["failed"], result["skipped"]) == (N_IMAGES, 3, 0)
    store = LabelStore.open(tmp_path / "labels.zarr")
    reasons = {path.rsplit("/", 1)[1]: reason for _, path, reason in store.failures()}
    assert reasons == {
        "corrupt.png": "not a decodable image (truncated, corrupt or not an image)",
        "empty.png": "empty file (0 bytes)",
        "notes.png": "not a decodable image (truncated, corrupt or not an image)",
    }
    assert store.summary()["n_done"] == N_IMAGES


def test_rerun_labels_only_images_added_since(ray_local, teacher, images, tmp_path):
    config = config_for(teacher, images, tmp_path / "labels.zarr")
    run(config, progress_bar=False)
    again = run(config, progress_bar=False)
    assert (again["labeled"], again["skipped"], again["n_done"]) == (0, 0, N_IMAGES)
    # New images sort before and after the old ones; they are appended with new indices.
    write_images(images, ["aaa_new.png", "zzz_new.png", "city1/new.png"], seed=2)
    third = run(config, progress_bar=False)
    # Only the new images reach the actors (none skipped there as done already).
    assert (third["run"], third["labeled"], third["skipped"]) == (2, 3, 0)
    assert third["n_done"] == N_IMAGES + 3
    store = LabelStore.open(tmp_path / "labels.zarr")
    runs = [store.image_record(i)["run"] for i in range(store.n_images)]
    assert runs == [0] * N_IMAGES + [2] * 3
    assert [p.rsplit("/", 1)[1] for p in store.image_paths()[N_IMAGES:]] == [
        "aaa_new.png",
        "new.png",
        "zzz_new.png",
    ]


def test_another_teacher_is_refused_unless_overwrite(ray_local, teacher, images, tmp_path):
    store_path = tmp_path / "labels.zarr"
    run(config_for(teacher, images, store_path), progress_bar=False)
    other = save_teacher(tmp_path / "other.pt", seed=1)
    with pytest.raises(StoreError, match="teacher sha256"):
        run(config_for(other, images, store_path), progress_bar=False)
    with pytest.raises(StoreError, match="mode 'whole' != 'slide'"):
        run(config_for(teacher, images, store_path, mode="slide"), progress_bar=False)
    result = run(config_for(other, images, store_path, overwrite=True), progress_bar=False)
    assert (result["run"], result["labeled"]) == (0, N_IMAGES)
    assert LabelStore.open(store_path).teacher["checkpoint"] == str(other.resolve())


def test_actor_skips_images_already_done(teacher, tmp_path, one_thread):
    # A retried batch holds images that the actor which died had finished: they stay as they are.
    paths = write_images(tmp_path / "images", ["a.png", "b.png"], seed=3)
    config = config_for(teacher, tmp_path / "images", tmp_path / "labels.zarr")
    store = LabelStore.create(
        config.store,
        [str(p) for p in paths],
        None,
        CITYSCAPES_TRAIN_IDS,
        {"sha256": "x", "model_name": "small"},
        config.inference().identity(),
    )
    sentinel = np.full((64, 128), 7, np.uint8)
    store.write(0, sentinel, np.zeros_like(sentinel), np.zeros((0, 4)), run=5)
    labeler = TeacherLabeler(config.store, teacher_step(config), 6, 4, config.min_centroid_area)
    out = labeler({"shard": np.array([0]), "indices": np.array([[0, 1]])})
    # One row for the shard: image 0 was done already, image 1 is labeled now.
    assert out["shard"].tolist() == [0]
    assert (out[SKIPPED].tolist(), out[DONE].tolist(), out[FAILED].tolist()) == ([1], [1], [0])
    assert out["failures"].tolist() == ["[]"]
    store = LabelStore.open(config.store)
    np.testing.assert_array_equal(store.label(0), sentinel)
    assert [store.image_record(i)["run"] for i in (0, 1)] == [5, 6]
    assert store.status(1) == ImageStatus.DONE


def test_multiscale_settings_reach_the_labeler(teacher, tmp_path, one_thread):
    paths = write_images(tmp_path / "images", ["a.png", "b.png", "c.png"], seed=4)
    config = config_for(
        teacher,
        tmp_path / "images",
        tmp_path / "labels.zarr",
        mode="multiscale",
        scales=[0.5, 1.0],
        slide_crop=48,
    )
    settings = config.inference().identity()
    assert settings == {
        "mode": "multiscale",
        "precision": "fp32",
        "min_centroid_area": 4,
        "crop": 48,
        "scales": [0.5, 1.0],
        "flip": True,
    }
    teacher_id = {"sha256": "x", "model_name": "small"}
    store = LabelStore.create(
        config.store, [str(p) for p in paths], None, CITYSCAPES_TRAIN_IDS, teacher_id, settings
    )
    labeler = TeacherLabeler(config.store, teacher_step(config), 0, 4, config.min_centroid_area)
    labeler({"shard": np.array([0]), "indices": np.array([np.arange(3)])})
    model, _, _ = load_model(teacher)
    for index, path in enumerate(store.image_paths()):
        label, _ = predict(model, read_image(path), "multiscale", scales=[0.5, 1.0], crop=48)
        np.testing.assert_array_equal(store.label(index), label)


def test_staged_layout_runs_the_given_model_step_on_a_growing_pool(ray_local, images, tmp_path):
    # The model step a benchmark puts in place of the teacher, holding a custom resource as a GPU
    # would; the pool starts at one actor and may grow to two.
    calls = tmp_path / "calls.txt"

    # Defined here, so that Ray pickles it by value (the actors cannot import this test module).
    class StripedModel:
        """Labels every image with horizontal stripes of classes 0..3 and counts its calls in a
        file (the actors are other processes)."""

        def __init__(self, calls_file: str) -> None:
            self.calls_file = calls_file

        def __call__(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
            with open(self.calls_file, "a") as f:
                f.write(f"{len(images)}\n")
            outputs = []
            for image in images:
                rows = np.arange(image.shape[0]) * 4 // image.shape[0]
                label = np.repeat(rows[:, None], image.shape[1], axis=1).astype(np.uint8)
                outputs.append((label, np.full_like(label, 200)))
            return outputs

    config = config_for(
        save_teacher(tmp_path / "t.pt", seed=0),
        images,
        tmp_path / "labels.zarr",
        layout="staged",
        min_actors=1,
        num_actors=2,
        batch_size=3,
    )
    step = ModelStep(partial(StripedModel, str(calls)), resources={"emulated_accelerator": 1})
    result = run(config, progress_bar=False, step=step)
    assert (result["n_done"], result["labeled"]) == (N_IMAGES, N_IMAGES)
    assert result["model_s"] > 0
    # Shards of 4, 4 and 2 images in calls of at most 3: 3 + 1, 3 + 1, 2.
    assert sorted(int(n) for n in calls.read_text().split()) == [1, 1, 2, 3, 3]
    store = LabelStore.open(config.store)
    for index in range(N_IMAGES):
        height, width = store.image_size(index)
        label = store.label(index)
        assert label[0].tolist() == [0] * width and label[-1].tolist() == [3] * width
        assert (store.confidence(index) == 200).all()
    # Four stripes of one class each, one centroid per stripe.
    per_class = store.summary()["centroids_per_class"]
    assert {name: n for name, n in per_class.items() if n} == {
        "road": N_IMAGES,
        "sidewalk": N_IMAGES,
        "building": N_IMAGES,
        "wall": N_IMAGES,
    }


def test_min_actors_above_num_actors_is_refused(teacher, tmp_path):
    with pytest.raises(ValueError, match=r"min_actors \(3\) must not exceed num_actors \(2\)"):
        config_for(teacher, tmp_path, tmp_path / "labels.zarr", min_actors=3, num_actors=2)


def test_soft_labels_keep_the_teachers_probabilities_per_cell(
    ray_local, teacher, images, tmp_path, one_thread
):
    config = config_for(
        teacher, images, tmp_path / "soft.zarr", layout="staged", soft_labels=True, soft_stride=4
    )
    assert config.inference().identity()["soft_stride"] == 4
    assert run(config, progress_bar=False)["n_done"] == N_IMAGES
    store = LabelStore.open(config.store)
    assert store.soft_stride == 4
    model, _, _ = load_model(teacher)
    for index, path in enumerate(store.image_paths()):
        labels, _, probabilities = predict_soft_batch(model, read_image(path)[None], 4)
        np.testing.assert_array_equal(store.label(index), labels[0].numpy())
        expected = probabilities[0].numpy().astype(np.float32)
        height, width = store.image_size(index)
        assert expected.shape == (CITYSCAPES_TRAIN_IDS.num_classes, height // 4, width // 4)
        np.testing.assert_array_equal(store.probabilities(index), expected)
        # Each cell's probabilities sum to 1 (float16 rounding aside).
        np.testing.assert_allclose(expected.sum(axis=0), 1.0, atol=0.01)


def test_a_compiled_teacher_gives_the_labels_of_the_plain_one(teacher, one_thread):
    """``compile: true`` (inductor on CPU, dynamic shapes): two image sizes through one compiled
    model give the eager labels (at least 99.9 % of the pixels: a near tie may flip when inductor
    reorders float sums) and confidences within one step of 1/255."""
    from core.labeling import TeacherPredictor

    settings = LabelJobConfig(
        teacher_checkpoint=str(teacher), source=DataSource(format="folder", root="."), store="s"
    ).inference()
    rng = np.random.default_rng(5)
    images = [smooth_image(rng, 64, 128), smooth_image(rng, 48, 80), smooth_image(rng, 64, 128)]
    eager = TeacherPredictor(teacher, settings)(images)
    compiled_predictor = TeacherPredictor(teacher, settings, compile=True)
    compiled = compiled_predictor(images)
    assert type(compiled_predictor.model).__name__ == "OptimizedModule"
    for (label, confidence), (label_c, confidence_c) in zip(eager, compiled, strict=True):
        assert (label == label_c).mean() >= 0.999
        assert np.abs(confidence.astype(int) - confidence_c).max() <= 1
