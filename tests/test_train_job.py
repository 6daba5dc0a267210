"""Teacher and student training on Ray Train, on CPU with the small model and synthetic scenes.

Epoch hooks run inside the Ray workers, so they are closures defined in the tests (cloudpickle
ships those by value; this module itself is not importable on the workers) and they report
through files in tmp_path.
"""

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import ray

from core.centroids import find_centroids
from core.checkpoint import load_checkpoint, load_model
from core.configs import AugmentConfig, DataSource, ScheduleConfig, TrainJobConfig
from core.datasets import cityscapes
from core.errors import ConfigError
from core.labels import CITYSCAPES
from core.runfiles import MetricsRow, RunFiles
from core.sampling import CentroidTable
from core.schedule import from_config
from core.store import LabelStore
from core.synth import write_synthetic_dataset
from core.training import EpochSamples, open_training_data
from jobs.train import run_training
from selftrain.cli import main as selftrain_main

SIZE = (64, 128)
SCHEDULE = ScheduleConfig(
    kind="coarse2fine+", crop_sizes=[32, 48, 64], warmup_epochs=1, base_batch_size=4
)
# Ray Train's controller collects each report on its next poll (2 s by default); tiny CPU epochs
# last far less, so poll often to keep the tests short.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}


@pytest.fixture(scope="module")
def ray_local():
    saved = {key: os.environ.get(key) for key in RAY_ENV}
    os.environ.update(RAY_ENV)
    # "local": never join a cluster that happens to run on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """24 source scenes to train on, 8 others to validate on, 8 target scenes to pseudo-label."""
    root = tmp_path_factory.mktemp("scenes")
    write_synthetic_dataset(root / "source", 24, "source", SIZE, seed=0, split="train")
    write_synthetic_dataset(root / "source", 8, "source", SIZE, seed=1, split="val")
    write_synthetic_dataset(root / "target", 8, "target", SIZE, seed=2, split="train")
    return root


@pytest.fixture(scope="module")
def pseudo_store(scenes) -> Path:
    """A label store over the target scenes, holding their true labels as the pseudo labels."""
    target = cityscapes(scenes / "target", "train")
    path = scenes / "store"
    store = LabelStore.create(path, target.image_paths(), [SIZE] * len(target), CITYSCAPES, {}, {})
    for i in range(len(target)):
        label = target.load_label(i)
        store.write(i, label, np.full(SIZE, 230, np.uint8), find_centroids(label, min_area=4))
    return path


@pytest.fixture(scope="module")
def soft_store(scenes) -> Path:
    """A soft-label store over the target scenes: each 4 x 4 cell's true class shares (the label
    maps averaged one-hot), as a teacher's probabilities would be kept."""
    target = cityscapes(scenes / "target", "train")
    path = scenes / "soft_store"
    store = LabelStore.create(
        path, target.image_paths(), [SIZE] * len(target), CITYSCAPES, {}, {"soft_stride": 4}
    )
    classes = CITYSCAPES.num_classes
    for i in range(len(target)):
        label = target.load_label(i)
        one_hot = (label[None] == np.arange(classes)[:, None, None]).astype(np.float32)
        cells = one_hot.reshape(classes, SIZE[0] // 4, 4, SIZE[1] // 4, 4).mean(axis=(2, 4))
        confidence = np.full(SIZE, 230, np.uint8)
        store.write(i, label, confidence, find_centroids(label, min_area=4), probabilities=cells)
    return path


def _source(scenes: Path, split: str) -> DataSource:
    return DataSource(format="cityscapes", root=str(scenes / "source"), split=split)


def _config(tmp_path: Path, scenes: Path, **fields) -> TrainJobConfig:
    values = {
        "run_name": "run",
        "storage_path": str(tmp_path / "runs"),
        "model": "small",
        "labeled": _source(scenes, "train"),
        "schedule": SCHEDULE,
        "augment": AugmentConfig(scale_min=0.75, scale_max=1.5),
        "ohem": False,
        "num_workers": 2,
        "cpus_per_worker": 1,
        "max_failures": 0,
    }
    return TrainJobConfig(**{**values, **fields})


def _metrics(config: TrainJobConfig) -> list[MetricsRow]:
    return RunFiles.of(config.storage_path, config.run_name).read_metrics()


def _teacher(config: TrainJobConfig) -> TrainJobConfig:
    return config.model_copy(update={"role": "teacher"})


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_workers_share_each_epoch_list_at_the_scheduled_crop(
    ray_local, scenes, pseudo_store, tmp_path
):
    config = _config(
        tmp_path,
        scenes,
        epochs=3,
        pseudo=[str(pseudo_store)],
        pseudo_per_real=1.0,
        samples_per_epoch=24,
    )
    log = tmp_path / "events.jsonl"

    def record(event):
        import json

        row = {
            "rank": event.rank,
            "epoch": event.epoch,
            "positions": event.positions,
            "samples": [[s.store, s.index, s.point] for s in event.samples],
            "input_sizes": event.stats.input_sizes,
        }
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")

    summary = run_training(config, epoch_hook=record)
    events = _events(log)
    data = open_training_data(config)
    table = CentroidTable([data.pseudo[0].store.centroids()])
    crops = from_config(SCHEDULE, 3).sizes()
    assert crops == [64, 32, 48]
    for epoch in range(3):
        by_rank = {e["rank"]: e for e in events if e["epoch"] == epoch}
        assert sorted(by_rank) == [0, 1]
        # Disjoint halves of one list of 24: ranks 0 and 1 take even and odd positions.
        assert by_rank[0]["positions"] == list(range(0, 24, 2))
        assert by_rank[1]["positions"] == list(range(1, 24, 2))
        # The list each rank trained on is the list the sampler draws for this epoch anywhere.
        expected = data.sampler.samples(epoch, 12, 12)
        for event in by_rank.values():
            for position, (store, index, point) in zip(
                event["positions"], event["samples"], strict=True
            ):
                want = expected[position]
                assert (store, index) == (want.store, want.index)
                assert point == (None if want.point is None else list(want.point))
            assert event["input_sizes"] == [[crops[epoch], crops[epoch]]]
        # real:pseudo = 1:1 over the epoch.
        samples = by_rank[0]["samples"] + by_rank[1]["samples"]
        assert sum(store == -1 for store, _, _ in samples) == 12
        # The 12 pseudo samples spread evenly over the classes that have centroids.
        classes = Counter()
        for store, index, point in samples:
            if store == 0:
                rows = (table.image == index) & (table.yx == point).all(axis=1)
                classes[int(table.cls[np.flatnonzero(rows)[0]])] += 1
        per_class = [classes.get(int(c), 0) for c in table.classes]
        assert max(per_class) - min(per_class) <= 1
    rows = _metrics(config)
    assert [r.epoch for r in rows] == [0, 1, 2]
    assert [r.crop_size for r in rows] == crops
    assert [r.batch_size for r in rows] == [4, 16, 7]
    assert all(r.n_real == 12 and r.n_pseudo == 12 for r in rows)
    assert summary.epochs_done == 3
    # The student's checkpoint is what the label job loads as the next teacher.
    model, label_space, checkpoint = load_model(summary.last_checkpoint)
    assert label_space.names == CITYSCAPES.names and checkpoint["epoch"] == 3


@pytest.mark.slow
def test_a_worker_killed_mid_run_resumes_from_the_last_checkpoint(ray_local, scenes, tmp_path):
    config = _config(tmp_path, scenes, epochs=4, samples_per_epoch=8, max_failures=1)
    log, marker = tmp_path / "events.jsonl", tmp_path / "killed"

    def kill_once(event):
        import os
        import signal

        with open(log, "a") as f:
            f.write(f'{{"pid": {os.getpid()}, "rank": {event.rank}, "epoch": {event.epoch}}}\n')
        # Rank 1 dies after training epoch 2, before that epoch is checkpointed, on the first
        # attempt only.
        if event.rank == 1 and event.epoch == 2 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    summary = run_training(_teacher(config), epoch_hook=kill_once)
    assert marker.exists()
    epochs_by_pid: dict[int, list[int]] = {}
    for event in _events(log):
        if event["rank"] == 0:
            epochs_by_pid.setdefault(event["pid"], []).append(event["epoch"])
    first, second = epochs_by_pid.values()
    assert first[:2] == [0, 1]
    # The restarted workers begin after the last checkpoint the controller had registered, not at 0:
    # usually epoch 1's (so they start at 2), but Ray's controller collects reports every poll
    # interval, and on a loaded machine the kill can beat epoch 1's report (they start at 1).
    assert second[0] in (1, 2)
    assert second == list(range(second[0], 4))
    assert [r.epoch for r in _metrics(config)] == [0, 1, 2, 3]
    assert summary.epochs_done == 4
    assert load_checkpoint(summary.last_checkpoint)["epoch"] == 4


@pytest.mark.slow
def test_a_run_submitted_again_with_more_epochs_resumes(ray_local, scenes, tmp_path):
    config = _config(tmp_path, scenes, epochs=2, samples_per_epoch=8, num_workers=1)
    first = run_training(_teacher(config))
    log = tmp_path / "events.jsonl"

    def record(event):
        with open(log, "a") as f:
            f.write(f'{{"epoch": {event.epoch}}}\n')

    second = run_training(_teacher(config).model_copy(update={"epochs": 3}), epoch_hook=record)
    assert [e["epoch"] for e in _events(log)] == [2]
    # Epochs 0 and 1 were not trained again: their rows are the first run's, unchanged.
    assert second.history[:2] == first.history
    assert [r.epoch for r in second.history] == [0, 1, 2]
    assert load_checkpoint(second.last_checkpoint)["epoch"] == 3


@pytest.mark.slow
def test_a_teacher_learns_the_source_scenes_and_evaluate_reproduces_its_miou(
    ray_local, scenes, tmp_path, capsys
):
    config = _config(
        tmp_path,
        scenes,
        val=_source(scenes, "val"),
        val_every=5,
        epochs=20,
        samples_per_epoch=96,
        lr=0.1,
    )
    summary = run_training(_teacher(config))
    rows = summary.history
    assert [r.val_miou is not None for r in rows] == [(e + 1) % 5 == 0 for e in range(20)]
    final = rows[-1].val_miou
    # Measured 0.20 on the 8 held-out scenes (19 classes, 0.4M parameters, 2 CPU workers); an
    # untrained model scores 0.01 to 0.02.
    assert final >= 0.15
    assert rows[-1].loss < 0.6 * rows[0].loss
    assert summary.best_val_miou == max(r.val_miou for r in rows if r.val_miou is not None)

    code = selftrain_main(
        [
            "evaluate",
            "--checkpoint",
            summary.last_checkpoint,
            "--format",
            "cityscapes",
            "--root",
            str(scenes / "source"),
            "--split",
            "val",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_images"] == 8
    assert result["miou"] == pytest.approx(final, abs=1e-12)


def test_relative_paths_are_resolved_before_the_workers_see_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = TrainJobConfig(
        run_name="r",
        storage_path="runs",
        labeled=DataSource(format="camvid", root="data", subset_list="lists/a.txt"),
        pseudo=["stores/s1", str(tmp_path / "s2")],
        init_checkpoint="teacher.pt",
    )
    here = tmp_path.resolve()
    absolute = config.with_absolute_paths()
    assert absolute.storage_path == str(here / "runs")
    assert absolute.labeled.root == str(here / "data")
    assert absolute.labeled.subset_list == str(here / "lists" / "a.txt")
    assert absolute.pseudo == [str(here / "stores" / "s1"), str(here / "s2")]
    assert absolute.init_checkpoint == str(here / "teacher.pt")
    assert absolute.val is None


def test_soft_label_samples_carry_the_stores_probabilities(
    scenes, soft_store, pseudo_store, tmp_path
):
    config = _config(
        tmp_path,
        scenes,
        epochs=1,
        pseudo=[str(soft_store)],
        pseudo_per_real=1.0,
        samples_per_epoch=8,
        soft_labels=True,
    )
    data = open_training_data(config)
    samples = list(enumerate(data.sampler.samples(0, 4, 4)))
    dataset = EpochSamples(samples, data.labeled, data.pseudo, config.augment, 32, 0, 0, soft=True)
    classes = CITYSCAPES.num_classes
    for position, sample in samples:
        _, target = dataset[position]
        assert target.shape == (32, 32, 1 + classes) and target.dtype == np.uint8
        valid = target[..., 0] != 255
        # Real samples are one-hot; the store's cells here are true-class shares, so at each valid
        # pixel the class with the most weight is one present in the cell.
        weights = target[..., 1:][valid].astype(int)
        if sample.is_real:
            assert (weights.sum(-1) == 255).all()
            assert (weights.argmax(-1) == target[..., 0][valid]).all()
        else:
            assert (abs(weights.sum(-1) - 255) <= classes).all()
    # A hard-label store cannot feed a soft student.
    hard = config.model_copy(update={"pseudo": [str(pseudo_store)]})
    with pytest.raises(ConfigError, match="keeps hard labels only"):
        open_training_data(hard)
    with pytest.raises(ValueError, match="soft_labels: OHEM"):
        _config(tmp_path, scenes, soft_labels=True, ohem=True)


@pytest.mark.slow
def test_a_soft_label_student_trains_on_ray(ray_local, scenes, soft_store, tmp_path):
    config = _config(
        tmp_path,
        scenes,
        epochs=2,
        pseudo=[str(soft_store)],
        pseudo_per_real=1.0,
        samples_per_epoch=16,
        soft_labels=True,
        num_workers=1,
    )
    summary = run_training(config)
    rows = _metrics(config)
    assert summary.epochs_done == 2 and [r.n_pseudo for r in rows] == [8, 8]
    assert all(np.isfinite(r.loss) and r.loss > 0 for r in rows)


def _online(tmp_path: Path, scenes: Path, **fields) -> TrainJobConfig:
    """An online student reading the target scenes' images as its unlabeled pool."""
    target = DataSource(format="folder", root=str(scenes / "target" / "leftImg8bit"))
    values = {
        "method": "online",
        "unlabeled": [target],
        "centroid_sampling": False,
        "pseudo_per_real": 1.0,
        "samples_per_epoch": 16,
        "online": {"threshold": 0.5, "threshold_floor": 0.2, "feature_dropout": 0.5},
        "copy_paste": {"probability": 0.5, "rare_share": 0.05},
    }
    return _config(tmp_path, scenes, **{**values, **fields})


@pytest.mark.slow
def test_two_workers_keep_identical_ema_teachers_and_thresholds(ray_local, scenes, tmp_path):
    config = _online(tmp_path, scenes, epochs=2)
    log = tmp_path / "teachers.jsonl"

    def record(event):
        import hashlib
        import json

        state = event.online_state
        digest = hashlib.sha256()
        for name, value in sorted(state["teacher"].items()):
            digest.update(name.encode())
            digest.update(value.cpu().numpy().tobytes())
        row = {
            "rank": event.rank,
            "epoch": event.epoch,
            "teacher": digest.hexdigest(),
            "thresholds": state["thresholds"]["mean_confidence"].tolist(),
            "steps": event.stats.steps,
            "unlabeled": sum(not s.is_real for s in event.samples),
        }
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")

    run_training(config, epoch_hook=record)
    events = _events(log)
    assert len(events) == 4
    for epoch in range(2):
        by_rank = {e["rank"]: e for e in events if e["epoch"] == epoch}
        assert sorted(by_rank) == [0, 1]
        # 8 real samples a rank of 16 at 1:1 ... each rank its 4 in one step of 4, beside 4
        # unlabeled: one step; the teachers and thresholds are the same on both ranks.
        assert by_rank[0]["teacher"] == by_rank[1]["teacher"]
        assert by_rank[0]["thresholds"] == by_rank[1]["thresholds"]
        assert by_rank[0]["unlabeled"] == by_rank[1]["unlabeled"] > 0
    assert events[0]["teacher"] != events[-1]["teacher"]  # the teacher moved
    rows = _metrics(config)
    assert [r.epoch for r in rows] == [0, 1]
    assert all(r.unlabeled_confident_share is not None for r in rows)
    checkpoint = load_checkpoint(RunFiles.of(config.storage_path, config.run_name).last)
    assert set(checkpoint["extra"]["online"]) == {"teacher", "thresholds"}


@pytest.mark.slow
def test_an_online_student_trains_through_the_student_job(ray_local, scenes, tmp_path):
    from core.configs import save_config
    from jobs.train import main

    config = _online(tmp_path, scenes, epochs=1, num_workers=1)
    path = save_config(config, tmp_path / "online.yaml")
    assert main(["--config", str(path)], role="student") == 0
    rows = _metrics(config)
    assert len(rows) == 1 and rows[0].n_pseudo > 0
    assert rows[0].pseudo_class_share is not None and rows[0].class_thresholds is not None
