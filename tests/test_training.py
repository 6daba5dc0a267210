from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from core.centroids import find_centroids
from core.checkpoint import save_checkpoint
from core.configs import (
    AugmentConfig,
    DataSource,
    ScheduleConfig,
    StrongAugmentConfig,
    TrainJobConfig,
)
from core.datasets import paired_folder
from core.errors import CheckpointError, ConfigError
from core.io import write_image, write_label
from core.labels import declare_label_space
from core.losses import build_loss
from core.models import build_model
from core.optim import build_optimizer, poly_lr
from core.pseudo import PseudoLabels, class_thresholds, underpredicted_classes
from core.sampling import REAL, Sample, rank_part
from core.store import LabelStore
from core.training import (
    EpochSamples,
    load_initial_weights,
    make_loader,
    open_training_data,
    plan_epochs,
    train_one_epoch,
    validate,
)
from core.training_run import TrainingRun

SPACE = declare_label_space("blocks", ["ground", "wall", "dot"])
# No scaling, flipping, blurring or color change: crops are plain windows of the image.
PLAIN = AugmentConfig(scale_min=1.0, scale_max=1.0, flip=False, blur=False, color_jitter=0.0)


def _scene(dot_yx: tuple[int, int] = (40, 100)) -> tuple[np.ndarray, np.ndarray]:
    """A 64x128 scene: ground (0) below row 32, wall (1) above, a 4x4 dot (2) at ``dot_yx``."""
    label = np.zeros((64, 128), np.uint8)
    label[:32] = 1
    y, x = dot_yx
    label[y : y + 4, x : x + 4] = 2
    colors = np.array([[90, 160, 60], [200, 200, 210], [230, 30, 30]], np.uint8)
    return colors[label], label


def _paired(root: Path, n: int) -> Path:
    for i in range(n):
        image, label = _scene((36 + i % 20, 10 + 5 * i % 110))
        write_image(root / "images" / f"{i:03d}.png", image)
        write_label(root / "labels" / f"{i:03d}.png", label)
    return root


def _source(root: Path) -> DataSource:
    return DataSource(format="paired", root=str(root), classes=list(SPACE.names))


def _store(path: Path, image_root: Path, n: int) -> LabelStore:
    """A label store holding each scene's true label as its pseudo label, confidence 200/255
    except in the dot (100/255)."""
    images = sorted(str(p) for p in (image_root / "images").glob("*.png"))[:n]
    store = LabelStore.create(path, images, [(64, 128)] * n, SPACE, {"name": "test"}, {})
    for i in range(n):
        label = paired_folder(image_root, SPACE).load_label(i)
        confidence = np.where(label == 2, 100, 200).astype(np.uint8)
        store.write(i, label, confidence, find_centroids(label))
    return store


def _config(tmp_path: Path, **fields) -> TrainJobConfig:
    values = {
        "run_name": "t",
        "storage_path": str(tmp_path / "runs"),
        "labeled": _source(tmp_path / "real"),
        "schedule": ScheduleConfig(
            kind="coarse2fine+", crop_sizes=[32, 48, 64], warmup_epochs=1, base_batch_size=2
        ),
    }
    return TrainJobConfig(**{**values, **fields})


def test_plan_follows_the_crop_schedule_and_the_ratio(tmp_path):
    config = _config(tmp_path, epochs=5, pseudo=["s"], pseudo_per_real=1.0)
    plans = plan_epochs(config, n_labeled=12, n_pseudo_images=40)
    # Warm-up at the largest crop, then small -> large every epoch.
    assert [p.crop_size for p in plans] == [64, 32, 48, 64, 32]
    # Batch grows with the crop area: 2 * (64/32)^2 = 8, 2 * (64/48)^2 = 3.6 -> 4.
    assert [p.batch_size for p in plans] == [2, 8, 4, 2, 8]
    # 1:1: each real image once an epoch, and as many pseudo samples.
    assert {(p.n_real, p.n_pseudo) for p in plans} == {(12, 12)}
    assert plans[1].steps(world_size=2) == 2  # 12 samples per rank, batch 8


@pytest.mark.parametrize(
    ("pseudo_per_real", "counts"), [(1.0, (12, 12)), (7.0, (12, 84)), (0.0, (12, 0))]
)
def test_an_epoch_is_its_real_samples_plus_pseudo_per_real_times_as_many(
    tmp_path, pseudo_per_real, counts
):
    config = _config(tmp_path, epochs=2, pseudo=["s"], pseudo_per_real=pseudo_per_real)
    plans = plan_epochs(config, n_labeled=12, n_pseudo_images=40)
    assert [(p.n_real, p.n_pseudo) for p in plans] == [counts, counts]


@pytest.mark.parametrize(("pseudo_per_real", "counts"), [(1.0, (48, 48)), (7.0, (12, 84))])
def test_samples_per_epoch_holds_the_total_and_splits_it_at_the_ratio(
    tmp_path, pseudo_per_real, counts
):
    config = _config(
        tmp_path, epochs=1, pseudo=["s"], pseudo_per_real=pseudo_per_real, samples_per_epoch=96
    )
    plans = plan_epochs(config, n_labeled=12, n_pseudo_images=40)
    assert [(p.n_real, p.n_pseudo) for p in plans] == [counts]


def test_the_old_inverted_ratio_is_refused_naming_its_replacement(tmp_path):
    with pytest.raises(ValidationError) as caught:
        TrainJobConfig.model_validate(
            {
                "run_name": "t",
                "storage_path": "runs",
                "labeled": {"format": "folder", "root": "x"},
                "real_pseudo_ratio": 4.0,
            }
        )
    message = str(caught.value)
    assert "pseudo_per_real = 1 / real_pseudo_ratio, here 0.25" in message
    assert "the paper's 7:1 is pseudo_per_real: 7" in message


def test_plan_of_pretrain_then_finetune(tmp_path):
    config = _config(
        tmp_path,
        epochs=4,
        mode="pretrain_finetune",
        pretrain_epochs=1,
        samples_per_epoch=10,
        pseudo=["s"],
    )
    plans = plan_epochs(config, n_labeled=12, n_pseudo_images=40)
    assert [(p.phase, p.n_real, p.n_pseudo) for p in plans] == [
        ("pretrain", 0, 10),
        ("finetune", 10, 0),
        ("finetune", 10, 0),
        ("finetune", 10, 0),
    ]
    with pytest.raises(ConfigError, match="pretrain_epochs"):
        plan_epochs(config.model_copy(update={"pretrain_epochs": 4}), 12, 40)


def test_a_teacher_plan_has_real_samples_only(tmp_path):
    plans = plan_epochs(_config(tmp_path, epochs=2, samples_per_epoch=7), 12, 0)
    assert [(p.n_real, p.n_pseudo) for p in plans] == [(7, 0), (7, 0)]


def test_centroid_crops_contain_their_centroid(tmp_path):
    root = _paired(tmp_path / "real", 4)
    store = _store(tmp_path / "store", root, 4)
    centroids = store.centroids()
    dots = centroids[centroids[:, 1] == 2]
    labeled = paired_folder(root, SPACE)
    part = [
        (position, Sample(0, int(row[0]), (round(row[2]), round(row[3]))))
        for position, row in enumerate(np.repeat(dots, 10, axis=0))
    ]
    dataset = EpochSamples(part, labeled, [PseudoLabels(store.path)], PLAIN, 16, seed=0, epoch=0)
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert image.shape == (16, 16, 3) and label.shape == (16, 16)
        assert (label == 2).any(), f"crop {i} misses the 4x4 dot it was centered on"
    # Random crops of the same size mostly miss it.
    random_part = [(p, Sample(0, s.index)) for p, s in part]
    dataset = EpochSamples(random_part, labeled, [PseudoLabels(store.path)], PLAIN, 16, 0, 0)
    assert sum((dataset[i][1] == 2).any() for i in range(len(dataset))) < len(dataset) / 2


def test_crops_are_the_same_for_the_same_position_on_any_rank(tmp_path):
    labeled = paired_folder(_paired(tmp_path / "real", 3), SPACE)
    samples = [Sample(REAL, i % 3) for i in range(6)]
    aug = AugmentConfig()
    whole = EpochSamples(rank_part(samples, 0, 1), labeled, [], aug, 32, seed=4, epoch=2)
    odd = EpochSamples(rank_part(samples, 1, 2), labeled, [], aug, 32, seed=4, epoch=2)
    for i in range(3):
        np.testing.assert_array_equal(odd[i][0], whole[2 * i + 1][0])
        np.testing.assert_array_equal(odd[i][1], whole[2 * i + 1][1])
    other_epoch = EpochSamples(rank_part(samples, 0, 1), labeled, [], aug, 32, seed=4, epoch=3)
    assert any(not np.array_equal(other_epoch[i][0], whole[i][0]) for i in range(6))


def test_confidence_threshold_turns_unsure_pixels_into_ignore(tmp_path):
    root = _paired(tmp_path / "real", 1)
    _store(tmp_path / "store", root, 1)
    _, label = PseudoLabels(tmp_path / "store", confidence_threshold=0.5).load(0)
    # The dot has confidence 100/255 < 0.5: ignored; everything else (200/255) kept.
    assert set(np.unique(label).tolist()) == {0, 1, 255}
    assert (label == 255).sum() == 16
    _, label = PseudoLabels(tmp_path / "store").load(0)
    assert (label == 2).sum() == 16


def test_open_training_data_rejects_a_store_with_other_classes(tmp_path):
    root = _paired(tmp_path / "real", 2)
    other = declare_label_space("other", ["a", "b", "c"])
    image = str(root / "images" / "000.png")
    LabelStore.create(tmp_path / "store", [image], [(64, 128)], other, {}, {})
    config = _config(tmp_path, epochs=1, pseudo=[str(tmp_path / "store")])
    with pytest.raises(ConfigError, match="classes"):
        open_training_data(config)


def test_training_epochs_lower_the_loss_and_use_the_crop_size(tmp_path):
    torch.manual_seed(0)
    labeled = paired_folder(_paired(tmp_path / "real", 4), SPACE)
    model = build_model("small", SPACE.num_classes)
    optimizer = build_optimizer(model, lr=0.05)
    scheduler = poly_lr(optimizer, total_iters=40)
    samples = [Sample(REAL, i % 4) for i in range(16)]
    losses = []
    for epoch in range(5):
        dataset = EpochSamples(rank_part(samples, 0, 1), labeled, [], PLAIN, 48, 0, epoch)
        stats = train_one_epoch(
            model,
            make_loader(dataset, 8),
            build_loss(False),
            optimizer,
            scheduler,
            torch.device("cpu"),
        )
        losses.append(stats.loss)
        assert stats.images == 16 and stats.steps == 2
        assert stats.input_sizes == [(48, 48)]
    assert losses[-1] < 0.5 * losses[0]
    # poly decay after 10 of 40 iterations: 0.05 * (1 - 10/40) ** 0.9
    assert stats.lr == pytest.approx(0.05 * 0.75**0.9)
    matrix = validate(model, labeled, SPACE, torch.device("cpu"))
    assert matrix.matrix.sum() == 4 * 64 * 128


def test_initial_weights_keep_the_body_and_reset_a_head_for_new_classes(tmp_path):
    torch.manual_seed(0)
    source = build_model("small", 3)
    path = save_checkpoint(tmp_path / "teacher.pt", source, "small", {}, SPACE, epoch=1)

    same = build_model("small", 3)
    assert load_initial_weights(same, "small", path, SPACE) is False
    torch.testing.assert_close(same.state_dict(), source.state_dict())

    five = declare_label_space("five", ["a", "b", "c", "d", "e"])
    target = build_model("small", 5)
    assert load_initial_weights(target, "small", path, five) is True
    assert target.classifier.out_channels == 5
    torch.testing.assert_close(target.stem.state_dict(), source.stem.state_dict())

    with pytest.raises(CheckpointError, match="'small' model"):
        load_initial_weights(build_model("fast_scnn", 3), "fast_scnn", path, SPACE)


def test_pretrain_then_finetune_restarts_the_lr_at_the_finetune_lr(tmp_path):
    _paired(tmp_path / "real", 4)
    _store(tmp_path / "store", tmp_path / "real", 4)
    config = _config(
        tmp_path,
        epochs=3,
        mode="pretrain_finetune",
        pretrain_epochs=1,
        samples_per_epoch=4,
        pseudo=[str(tmp_path / "store")],
        schedule=ScheduleConfig(kind="constant", crop_sizes=[32], base_batch_size=2),
        augment=PLAIN,
        model="small",
        lr=0.02,
        finetune_lr=0.002,
        ohem=False,
    )
    run = TrainingRun.start(config, torch.device("cpu"))
    trained = run.trained_module()
    rows = [run.train_epoch(trained, epoch).row for epoch in run.remaining_epochs()]
    # 2 steps an epoch; the lr after an epoch is the one for the next step.
    assert [row.phase for row in rows] == ["pretrain", "finetune", "finetune"]
    assert rows[0].lr == pytest.approx(0.002)  # restarted for the first finetune step
    assert rows[1].lr == pytest.approx(0.002 * 0.5**0.9)
    assert rows[2].lr == 0.0


# --- the levers: what the student reads of the pseudo labels -----------------------------------


def test_class_thresholds_keep_the_most_confident_fraction_of_each_class(tmp_path):
    space = declare_label_space("two", ["a", "b"])
    store = LabelStore.create(tmp_path / "s", ["x.png"], [(1, 10)], space, {}, {})
    label = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]], np.uint8)
    confidence = np.array([[10, 20, 30, 40, 50, 60, 70, 80, 90, 100]], np.uint8)
    store.write(0, label, confidence, find_centroids(label))
    # Class a: keep the top half of {10, 20, 30, 40} -> >= 30; class b: of {50..100} -> >= 80.
    np.testing.assert_array_equal(class_thresholds(store, 0.5), [30, 80])
    np.testing.assert_array_equal(class_thresholds(store, 1.0), [10, 50])


def test_underpredicted_classes_are_those_below_the_ratio_of_their_real_share():
    real = np.array([50, 40, 10, 0])  # shares 0.5, 0.4, 0.1, 0
    pseudo = np.array([60, 38, 2, 0])  # shares 0.6, 0.38, 0.02, 0
    assert underpredicted_classes(pseudo, real, 0.5) == [2]  # 0.02 < 0.5 * 0.1
    assert underpredicted_classes(pseudo, real, 0.99) == [1, 2]  # 0.38 < 0.99 * 0.4
    assert underpredicted_classes(real, real, 1.0) == []


def test_pseudo_labels_ignore_pixels_under_their_class_threshold_and_ignored_classes(tmp_path):
    root = _paired(tmp_path / "real", 1)
    _store(tmp_path / "store", root, 1)
    # The dot (class 2) has confidence 100, the rest 200.
    reader = PseudoLabels(tmp_path / "store", class_thresholds=np.array([0, 201, 90], np.uint8))
    _, label = reader.load(0)
    # The wall (class 1, rows 0-31) falls under 201; the dot (in the ground) stays at 100 >= 90.
    assert set(np.unique(label).tolist()) == {0, 2, 255}
    assert (label == 255).sum() == 32 * 128 and (label == 2).sum() == 16
    _, label = PseudoLabels(tmp_path / "store", ignored_classes=[2]).load(0)
    assert (label == 2).sum() == 0 and (label == 255).sum() == 16


def test_the_pseudo_only_augmentation_never_touches_real_samples(tmp_path):
    root = _paired(tmp_path / "real", 4)
    store = _store(tmp_path / "store", root, 4)
    labeled = paired_folder(root, SPACE)
    part = [(p, Sample(REAL, p % 4)) for p in range(8)] + [(8 + p, Sample(0, p)) for p in range(4)]
    reader = [PseudoLabels(store.path)]
    plain = EpochSamples(part, labeled, reader, PLAIN, 32, seed=1, epoch=0)
    strong = StrongAugmentConfig(color_jitter=1.0, grayscale=1.0, blur=1.0, cutout=1.0)
    strong_samples = EpochSamples(part, labeled, reader, PLAIN, 32, seed=1, epoch=0, strong=strong)
    for i, (_, sample) in enumerate(part):
        (image, label), (image2, label2) = plain[i], strong_samples[i]
        if sample.is_real:
            np.testing.assert_array_equal(image, image2)
            np.testing.assert_array_equal(label, label2)
        else:
            # Grayscale always (p 1): the three channels are equal; cutout always: a hole.
            assert (image2[..., 0] == image2[..., 1]).all() and not np.array_equal(image, image2)
            assert (label2 == 255).any() and not (label == 255).any()


def test_real_centroid_sampling_draws_real_samples_class_first(tmp_path):
    root = _paired(tmp_path / "real", 6)
    config = _config(tmp_path, epochs=1, samples_per_epoch=30, real_centroid_sampling=True)
    data = open_training_data(config)
    samples = data.sampler.samples(0, 30, 0)
    assert all(s.is_real and s.point is not None for s in samples)
    # Three classes (ground, wall, dot): each drawn 10 times, although the dot is tiny.
    labels = [paired_folder(root, SPACE).load_label(s.index)[s.point] for s in samples]
    assert sorted(np.bincount(labels).tolist()) == [10, 10, 10]


def test_open_training_data_sets_the_levers_of_each_store(tmp_path):
    root = _paired(tmp_path / "real", 4)
    _store(tmp_path / "store", root, 4)
    config = _config(
        tmp_path,
        epochs=1,
        pseudo=[str(tmp_path / "store")],
        pseudo_keep_fraction=1.0,
        ignore_underpredicted=0.5,
    )
    reader = open_training_data(config).pseudo[0]
    # The store holds the true labels, so no class is under-predicted; keeping every pixel puts
    # each class's threshold at its lowest confidence.
    assert reader.ignored_classes.tolist() == []
    np.testing.assert_array_equal(reader.class_thresholds, [200, 200, 100])


def test_a_compiled_model_trains_like_the_plain_one(tmp_path):
    """``compile: true`` on CPU (inductor): the same losses and weights as eager, within float
    tolerance, and the checkpointed model is the plain module."""
    _paired(tmp_path / "real", 4)
    results = {}
    for compiled in (False, True):
        config = _config(
            tmp_path,
            run_name=f"compile-{compiled}",
            epochs=2,
            samples_per_epoch=4,
            schedule=ScheduleConfig(kind="constant", crop_sizes=[32], base_batch_size=2),
            augment=PLAIN,
            ohem=False,
            compile=compiled,
        )
        torch.manual_seed(0)
        run = TrainingRun.start(config, torch.device("cpu"))
        trained = run.trained_module()
        assert (trained is run.model) is not compiled
        losses = [run.train_epoch(trained, epoch).row.loss for epoch in run.remaining_epochs()]
        results[compiled] = (losses, run.model.state_dict())
    eager_losses, eager_state = results[False]
    compiled_losses, compiled_state = results[True]
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert set(compiled_state) == set(eager_state)  # no "_orig_mod." prefixes
    for key, value in eager_state.items():
        torch.testing.assert_close(compiled_state[key], value, rtol=1e-3, atol=1e-4, msg=key)


def test_bf16_autocast_trains_like_fp32_within_its_precision(tmp_path):
    """``precision: bf16`` on CPU: forward and loss under bfloat16 autocast (weights stay fp32);
    the losses follow fp32's within bfloat16's ~3 significant digits (2 % here)."""
    _paired(tmp_path / "real", 4)
    losses = {}
    for precision in ("fp32", "bf16"):
        config = _config(
            tmp_path,
            run_name=f"precision-{precision}",
            epochs=2,
            samples_per_epoch=4,
            schedule=ScheduleConfig(kind="constant", crop_sizes=[32], base_batch_size=2),
            augment=PLAIN,
            ohem=False,
            precision=precision,
        )
        torch.manual_seed(0)
        run = TrainingRun.start(config, torch.device("cpu"))
        trained = run.trained_module()
        losses[precision] = [run.train_epoch(trained, e).row.loss for e in run.remaining_epochs()]
        assert all(p.dtype == torch.float32 for p in run.model.parameters())
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)
    assert losses["bf16"] != losses["fp32"]  # autocast did run in bfloat16
