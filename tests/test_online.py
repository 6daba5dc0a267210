"""Online self-training (core.online, core.mixing, core.online_data, core.online_train): the pieces
by hand, then whole epochs in one process (a resume is bitwise the uninterrupted run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.checkpoint import load_checkpoint
from core.configs import DataSource, OnlineSettings, ScheduleConfig, TrainJobConfig
from core.io import write_image, write_label
from core.labels import IGNORE_INDEX, declare_label_space
from core.mixing import cutmix_box, mix_with_partner, override, paste, rare_classes
from core.online import ClassThresholds, EmaTeacher, masked_cross_entropy, teacher_targets
from core.online_data import PathTable
from core.training import plan_epochs
from core.training_run import TrainingRun

SPACE = declare_label_space("dots", ["ground", "wall", "dot"])


# --- the EMA teacher -----------------------------------------------------------------------------


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        self.norm = nn.BatchNorm2d(1)
        self.classifier = nn.Conv2d(1, 2, 1)


def test_one_ema_update_by_hand():
    student = _Tiny()
    with torch.no_grad():
        student.conv.weight.fill_(2.0)
        student.norm.running_mean.fill_(1.0)
    teacher = EmaTeacher(student, decay=0.9)
    with torch.no_grad():
        student.conv.weight.fill_(12.0)  # the student moves on
        student.norm.running_mean.fill_(3.0)
        student.norm.num_batches_tracked.fill_(7)
    teacher.update(student)
    # 0.9 * 2 + 0.1 * 12 = 3; 0.9 * 1 + 0.1 * 3 = 1.2; the step counter is copied.
    assert teacher.model.conv.weight.item() == pytest.approx(3.0)
    assert teacher.model.norm.running_mean.item() == pytest.approx(1.2)
    assert teacher.model.norm.num_batches_tracked.item() == 7
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_an_ema_teacher_can_start_from_other_weights():
    student = _Tiny()
    start = {k: torch.full_like(v, 5) for k, v in student.state_dict().items()}
    teacher = EmaTeacher(student, decay=0.5, start=start)
    assert teacher.model.conv.weight.item() == 5.0
    with torch.no_grad():
        student.conv.weight.fill_(1.0)
    teacher.update(student)
    assert teacher.model.conv.weight.item() == pytest.approx(3.0)


# --- CutMix and pasted segments ------------------------------------------------------------------


def test_cutmix_labels_exactly_the_boxes_mixed():
    # Three 4x4 samples, each one class; sample i takes its box from sample (i + 1) % 3.
    labels = torch.stack([torch.full((4, 4), k) for k in (0, 1, 2)])
    boxes = torch.zeros(3, 4, 4, dtype=torch.bool)
    boxes[0, :2, :2] = True  # sample 0: top-left 2x2 from sample 1
    boxes[2, 3, :] = True  # sample 2: its last row from sample 0
    mixed = mix_with_partner(labels, boxes)
    expected = labels.clone()
    expected[0, :2, :2] = 1
    expected[2, 3, :] = 0
    assert torch.equal(mixed, expected)
    # Images (N, C, H, W) take the same boxes in every channel.
    images = labels[:, None].repeat(1, 3, 1, 1).float()
    mixed_images = mix_with_partner(images, boxes)
    assert torch.equal(mixed_images, expected[:, None].repeat(1, 3, 1, 1).float())


def test_cutmix_boxes_are_drawn_with_their_chance_and_area():
    rng = np.random.default_rng(0)
    assert not cutmix_box(rng, (40, 60), probability=0.0).any()
    areas = [cutmix_box(rng, (40, 60), probability=1.0).mean() for _ in range(200)]
    # One box of 2 % to 40 % of the crop (rounding the sides moves it a little).
    assert min(areas) >= 0.015 and max(areas) <= 0.45
    box = cutmix_box(np.random.default_rng(1), (40, 60), 1.0)
    ys, xs = np.nonzero(box)
    assert box.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # a rectangle


def test_pasted_segments_override_pseudo_labels_and_always_count():
    # The teacher says class 0 everywhere, at confidence 0.5 on the left half, 0.99 on the right.
    confidence = torch.full((1, 2, 4), 0.5)
    confidence[:, :, 2:] = 0.99
    label = torch.zeros(1, 2, 4, dtype=torch.long)
    valid = torch.ones(1, 2, 4, dtype=torch.bool)
    valid[0, 1, 3] = False  # one pixel of padding
    pasted = torch.full((1, 2, 4), IGNORE_INDEX, dtype=torch.uint8)
    pasted[0, 0, 0] = 2  # a pasted "dot" pixel where the teacher was unsure
    targets = teacher_targets(confidence, label, valid, pasted, torch.tensor([0.9, 0.9, 0.9]))
    assert targets.label.tolist() == [[[2, 0, 0, 0], [0, 0, 0, IGNORE_INDEX]]]
    assert targets.keep.tolist() == [[[True, False, True, True], [False, False, True, False]]]
    assert targets.confidence[0, 0, 0] == 1.0


def test_paste_copies_the_labeled_pixels_of_a_segment_only():
    image = np.zeros((2, 3, 3), np.uint8)
    segment = np.full((2, 3, 3), 200, np.uint8)
    segment_label = np.full((2, 3), IGNORE_INDEX, np.uint8)
    segment_label[1, 2] = 2
    out, pasted = paste(image, segment, segment_label)
    assert out[1, 2].tolist() == [200, 200, 200] and out.sum() == 600
    label = np.ones((2, 3), np.uint8)
    assert override(label, pasted).tolist() == [[1, 1, 1], [1, 1, 2]]


def test_rare_classes_are_those_under_their_share_of_labeled_pixels():
    # 1000 pixels: class 0 900, class 1 90, class 2 10, class 3 none.
    assert rare_classes(np.array([900, 90, 10, 0]), share=0.05) == [2]
    assert rare_classes(np.array([900, 90, 10, 0]), share=0.1) == [1, 2]


# --- thresholds and losses -----------------------------------------------------------------------


def test_adaptive_class_thresholds_from_a_hand_made_confidence_map():
    # Class 0 at confidence 0.9 (3 pixels), class 1 at 0.6 and 0.3 (mean 0.45), class 2 unseen,
    # one padding pixel at 0.1 that must not count.
    confidence = torch.tensor([[[0.9, 0.9, 0.9], [0.6, 0.3, 0.1]]])
    label = torch.tensor([[[0, 0, 0], [1, 1, IGNORE_INDEX]]])
    thresholds = ClassThresholds(3, threshold=0.95, floor=0.3, momentum=0.5)
    assert thresholds.values().tolist() == [0.95, 0.95, 0.95]  # nothing seen yet
    thresholds.update(confidence, label)
    # First sight sets the means: 0.9 and 0.45; 0.95 * 0.45 / 0.9 = 0.475; unseen class 2: 0.95.
    assert thresholds.values().tolist() == pytest.approx([0.95, 0.475, 0.95])
    # Next step only class 1, at 0.85: its mean 0.5 * 0.45 + 0.5 * 0.85 = 0.65.
    thresholds.update(torch.full((1, 1, 2), 0.85), torch.ones(1, 1, 2, dtype=torch.long))
    assert thresholds.values().tolist() == pytest.approx([0.95, 0.95 * 0.65 / 0.9, 0.95])
    # The floor holds; not adaptive: one threshold.
    low = ClassThresholds(3, threshold=0.95, floor=0.7, momentum=0.5)
    low.update(confidence, label)
    assert low.values().tolist() == pytest.approx([0.95, 0.7, 0.95])
    flat = ClassThresholds(3, threshold=0.8, floor=0.7, momentum=0.5, adaptive=False)
    flat.update(confidence, label)
    assert flat.values().tolist() == [0.8, 0.8, 0.8]
    # A resumed run restores the means exactly.
    restored = ClassThresholds(3, threshold=0.95, floor=0.3, momentum=0.5)
    restored.load_state_dict(thresholds.state_dict())
    assert torch.equal(restored.values(), thresholds.values())


def test_masked_cross_entropy_counts_kept_pixels_over_the_image():
    logits = torch.zeros(1, 2, 1, 4)  # uniform: every pixel's loss is log 2
    confidence = torch.ones(1, 1, 4)
    label = torch.zeros(1, 1, 4, dtype=torch.long)
    valid = torch.tensor([[[True, True, True, False]]])
    pasted = torch.full((1, 1, 4), IGNORE_INDEX, dtype=torch.uint8)
    thresholds = torch.tensor([0.5, 0.5])
    targets = teacher_targets(confidence, label, valid, pasted, thresholds)
    targets.keep[0, 0, 0] = False  # 2 of the 3 image pixels count
    loss = masked_cross_entropy(logits, targets)
    assert loss.item() == pytest.approx(2 * np.log(2) / 3)


# --- plans and pools -----------------------------------------------------------------------------


def _online_config(tmp_path: Path, **fields) -> TrainJobConfig:
    values = {
        "run_name": "online",
        "storage_path": str(tmp_path / "runs"),
        "model": "small",
        "labeled": DataSource(
            format="paired", root=str(tmp_path / "real"), classes=list(SPACE.names)
        ),
        "unlabeled": [DataSource(format="folder", root=str(tmp_path / "pool"))],
        "centroid_sampling": False,
        "method": "online",
        "pseudo_per_real": 1.0,
        "ohem": False,
        "schedule": ScheduleConfig(crop_sizes=[32], base_batch_size=4),
    }
    return TrainJobConfig(**{**values, **fields})


def test_an_online_epoch_fills_every_step_with_an_unlabeled_batch(tmp_path):
    config = _online_config(tmp_path, epochs=2, samples_per_epoch=32, pseudo_per_real=1.0)
    plans = plan_epochs(config, n_labeled=10, n_pseudo_images=50)
    # 32 samples at 1:1: 16 real in steps of 4 (4 steps), beside 4 unlabeled a step.
    assert [(p.n_real, p.n_pseudo, p.unlabeled_batch_size, p.steps(1)) for p in plans] == [
        (16, 16, 4, 4),
        (16, 16, 4, 4),
    ]
    two = config.model_copy(update={"num_workers": 2, "pseudo_per_real": 0.5})
    # At 1:2, 32 samples hold 21 real ones: 11 a rank, 3 steps of 4 beside 2 unlabeled: 12.
    plan = plan_epochs(two, n_labeled=10, n_pseudo_images=50)[0]
    assert (plan.n_real, plan.unlabeled_batch_size, plan.steps(2), plan.n_pseudo) == (
        21,
        2,
        3,
        12,
    )


def test_path_table_keeps_paths_in_one_buffer():
    paths = ["/a/b.png", "/c/é.jpg", "", "/d.png"]
    table = PathTable(paths)
    assert [table[i] for i in range(len(table))] == paths
    assert table.data.dtype == np.uint8 and table.ends.tolist() == [8, 17, 17, 23]
    with pytest.raises(IndexError):
        table[4]


def test_online_settings_refuse_a_floor_above_the_threshold_and_cutout():
    with pytest.raises(ValueError, match="threshold_floor"):
        OnlineSettings(threshold=0.8, threshold_floor=0.9)
    with pytest.raises(ValueError, match="cutout"):
        OnlineSettings(strong={"cutout": 0.5})


def test_an_online_student_that_reads_sources_cannot_sample_centroids(tmp_path):
    with pytest.raises(ValueError, match="centroid_sampling"):
        _online_config(tmp_path, centroid_sampling=True)
    with pytest.raises(ValueError, match="online_teacher"):
        _online_config(tmp_path, online={"teacher_start": "teacher"})


# --- whole epochs --------------------------------------------------------------------------------


def _scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 48x64 scene: ground (0) below a random horizon, wall (1) above, a 6x6 dot (2)."""
    rng = np.random.default_rng(seed)
    label = np.zeros((48, 64), np.uint8)
    label[: int(rng.integers(16, 32))] = 1
    y, x = int(rng.integers(0, 42)), int(rng.integers(0, 58))
    label[y : y + 6, x : x + 6] = 2
    colors = np.array([[90, 160, 60], [200, 200, 210], [230, 30, 30]], np.uint8)
    noise = rng.integers(0, 20, (48, 64, 3), dtype=np.uint8)
    return colors[label] + noise, label


@pytest.fixture
def online_data(tmp_path: Path) -> Path:
    for i in range(6):
        image, label = _scene(i)
        write_image(tmp_path / "real" / "images" / f"{i:02d}.png", image)
        write_label(tmp_path / "real" / "labels" / f"{i:02d}.png", label)
    for i in range(12):
        write_image(tmp_path / "pool" / f"{i:02d}.png", _scene(100 + i)[0])
    return tmp_path


def _run_epochs(config: TrainJobConfig, epochs: range, state: dict | None = None) -> TrainingRun:
    run = TrainingRun.start(config, torch.device("cpu"))
    if state is not None:
        run.restore(state)
    trained = run.trained_module()
    for epoch in epochs:
        result = run.train_epoch(trained, epoch)
        run.save(Path(config.storage_path) / f"state{epoch}.pt", result)
    return run


@pytest.mark.slow
def test_a_resumed_online_run_is_bitwise_the_uninterrupted_one(online_data):
    torch.set_num_threads(1)
    config = _online_config(
        online_data,
        epochs=2,
        samples_per_epoch=16,
        labeled_cutmix=0.5,
        copy_paste={"probability": 0.5, "classes": ["dot"]},
        online={"feature_dropout": 0.5, "ema_decay": 0.9, "threshold": 0.6, "threshold_floor": 0.3},
    )
    whole = _run_epochs(config, range(2))
    first = _run_epochs(config.model_copy(update={"run_name": "first"}), range(1))
    state = load_checkpoint(Path(config.storage_path) / "state0.pt")
    resumed = _run_epochs(config.model_copy(update={"run_name": "resumed"}), range(1, 2), state)
    assert first.online is not None and resumed.online is not None and whole.online is not None
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    for name, value in whole.online.teacher.state_dict().items():
        assert torch.equal(value, resumed.online.teacher.state_dict()[name]), name
    assert torch.equal(
        whole.online.thresholds.mean_confidence, resumed.online.thresholds.mean_confidence
    )
    # The EMA teacher is published beside the student's checkpoints, loadable as a model.
    ema = load_checkpoint(Path(config.storage_path) / "online" / "ema.pt")
    for name, value in whole.online.teacher.state_dict().items():
        assert torch.equal(value, ema["model"][name]), name
    rows = whole.history
    # Each epoch: 8 real samples in 2 steps of 4, beside 8 unlabeled ones.
    assert [(r.n_real, r.n_pseudo, r.steps) for r in rows] == [(8, 8, 2), (8, 8, 2)]
    assert 0 <= rows[-1].unlabeled_confident_share <= 1
    assert set(rows[-1].class_thresholds) == {"ground", "wall", "dot"}
    # The prior: each class's share of the labeled pixels.
    assert sum(rows[-1].labeled_class_share.values()) == pytest.approx(1.0)
    assert rows[-1].labeled_class_share["dot"] == pytest.approx(6 * 36 / (6 * 48 * 64))


@pytest.mark.slow
def test_an_online_student_trains_in_bf16(online_data):
    config = _online_config(online_data, epochs=1, samples_per_epoch=16, precision="bf16")
    run = _run_epochs(config, range(1))
    assert np.isfinite(run.history[0].loss)
    assert run.online is not None
    assert all(
        v.dtype == torch.float32
        for v in run.online.teacher.model.state_dict().values()
        if v.is_floating_point()
    )


def test_an_online_epoch_is_logged_to_mlflow_as_flat_metrics():
    from core.runfiles import MetricsRow
    from core.tracking import online_metric_values

    row = MetricsRow(
        epoch=0,
        phase="joint",
        loss=1.0,
        lr=0.1,
        crop_size=32,
        batch_size=4,
        n_real=8,
        n_pseudo=8,
        images_per_s=1.0,
        seconds=1.0,
        cpu_seconds=1.0,
        unlabeled_confident_share=0.25,
        pseudo_class_share={"road": 0.9, "traffic sign": 0.1},
        labeled_class_share={"road": 0.8, "traffic sign": 0.2},
        class_thresholds={"road": 0.95, "traffic sign": 0.7},
    )
    assert online_metric_values(row) == {
        "unlabeled_confident_share": 0.25,
        "pseudo_class_share/road": 0.9,
        "pseudo_class_share/traffic sign": 0.1,
        "labeled_class_share/road": 0.8,
        "labeled_class_share/traffic sign": 0.2,
        "class_threshold/road": 0.95,
        "class_threshold/traffic sign": 0.7,
    }
    offline = row.model_copy(
        update={
            "unlabeled_confident_share": None,
            "pseudo_class_share": None,
            "labeled_class_share": None,
            "class_thresholds": None,
        }
    )
    assert online_metric_values(offline) == {}


def test_the_benchmark_reports_a_t_interval_of_paired_differences():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from camvid_report import paired_interval

    # Differences 1, 2, 3: mean 2, sd 1, standard error 1/sqrt(3); t(0.975, 2) = 4.303.
    interval = paired_interval([0.01, 0.02, 0.03])
    half = 4.303 * 0.01 / np.sqrt(3)
    assert interval == pytest.approx(
        {"n": 3, "mean": 0.02, "low": 0.02 - half, "high": 0.02 + half}
    )
    assert paired_interval([0.5]) is None
