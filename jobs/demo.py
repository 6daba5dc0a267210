"""The self-training demo on synthetic scenes: ``selftrain demo`` (or ``python jobs/demo.py``).

One command runs the whole loop of the paper on a laptop CPU, with Ray started in this process:

1. write synthetic street scenes: a few labeled ones of the source domain, a larger unlabeled set
   of both domains (their labels are deleted), and held-out test scenes of both domains;
2. train a teacher on the labeled scenes (jobs/teacher.py, Ray Train);
3. label the unlabeled scenes with it into a Zarr label store (jobs/label.py, Ray Data);
4. train a student on real and pseudo labels with centroid sampling and the fast crop schedule
   (jobs/student.py, Ray Train);
5. evaluate teacher and student on the held-out scenes and print a per-class table.

What the work folder holds afterwards:

    data/source/        labeled train scenes and held-out test scenes (Cityscapes layout)
    data/target/        held-out test scenes of the target domain
    data/unlabeled/     the unlabeled images (no labels)
    runs/teacher/       teacher checkpoints (last.pt) and metrics.jsonl
    runs/student/       student checkpoints (last.pt) and metrics.jsonl
    labels.zarr         the pseudo-label store
    pseudo_labels.png   unlabeled images next to their pseudo labels
    results.json        what ``run_demo`` returns

The demo never reads the test scenes while training: both models are the checkpoints of their last
epoch, not the best on some validation set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from core.configs import (
    AugmentConfig,
    DataSource,
    LabelJobConfig,
    PseudoSource,
    ScheduleConfig,
    TrainJobConfig,
)
from core.errors import ConfigError
from core.evaluate import evaluate_checkpoint
from core.labels import LabelSpace
from core.store import LabelStore
from core.synth import write_synthetic_dataset

# What run_demo writes into the work folder (and deletes first, so every demo starts fresh).
DEMO_OUTPUTS = ("data", "runs", "labels.zarr", "pseudo_labels.png", "results.json")


class DemoConfig(BaseModel):
    """The demo's data sizes and training settings.

    The defaults are tuned so that on a 2-core CPU the demo finishes in under ten minutes and the
    student, which starts from the teacher's weights, beats the teacher on the held-out source
    scenes (seeds 0, 1, 2: +2.2 to +3.0 mIoU). On these scenes more labeled training alone gains
    more (docs/performance.md has the control); the demo shows the loop, docs/results.md the
    method on real images. ``DemoConfig.quick()`` is the CI variant: tiny sizes, about a minute,
    no claim about who wins.

    Attributes:
        height: Scene height in pixels.
        width: Scene width in pixels.
        n_labeled: Labeled source scenes the teacher trains on.
        n_unlabeled_source: Unlabeled source-domain scenes the teacher labels.
        n_unlabeled_target: Unlabeled target-domain scenes the teacher labels.
        n_test: Held-out test scenes per domain.
        model: Architecture of teacher and student (core.models).
        crop_sizes: Crop sizes of the fast schedule (``coarse2fine+``: one size per epoch, cycling).
        warmup_epochs: Epochs at the largest crop before the cycling starts.
        base_batch_size: Batch size at the largest crop (smaller crops get larger batches).
        scale_min: Smallest random rescale of the augmentation.
        scale_max: Largest random rescale of the augmentation.
        lr: Initial learning rate (poly decay) of both runs.
        teacher_epochs: Teacher epochs.
        teacher_samples_per_epoch: Crops per teacher epoch.
        student_epochs: Student epochs.
        student_samples_per_epoch: Crops per student epoch, real and pseudo together.
        student_from_teacher: Start the student from the teacher's weights (else from scratch).
        real_pseudo_ratio: Real crops per pseudo crop in a student epoch.
        confidence_threshold: Pseudo-label pixels below this teacher confidence are ignored.
        min_centroid_area: Smallest pseudo-label region (pixels) that centroid sampling draws.
        cpus_per_worker: CPUs of the one Ray Train worker (its torch threads).
        preview_rows: Images in the pseudo-label picture.
        seed: Seed of the scenes and of training.
    """

    model_config = ConfigDict(extra="forbid")

    height: int = Field(default=128, ge=32)
    width: int = Field(default=256, ge=32)
    n_labeled: int = Field(default=24, gt=0)
    n_unlabeled_source: int = Field(default=200, ge=0)
    n_unlabeled_target: int = Field(default=100, ge=0)
    n_test: int = Field(default=100, gt=0)
    model: str = "small"
    crop_sizes: list[int] = Field(default_factory=lambda: [64, 96, 128])
    warmup_epochs: int = Field(default=1, ge=0)
    base_batch_size: int = Field(default=8, gt=0)
    scale_min: float = Field(default=0.75, gt=0)
    scale_max: float = Field(default=1.5, gt=0)
    lr: float = Field(default=0.05, gt=0)
    teacher_epochs: int = Field(default=16, gt=0)
    teacher_samples_per_epoch: int = Field(default=900, gt=0)
    student_epochs: int = Field(default=10, gt=0)
    student_samples_per_epoch: int = Field(default=1920, gt=0)
    student_from_teacher: bool = True
    real_pseudo_ratio: float = Field(default=3.0, gt=0)
    confidence_threshold: float = Field(default=0.0, ge=0, le=1)
    min_centroid_area: int = Field(default=16, ge=1)
    cpus_per_worker: float = Field(default=2.0, gt=0)
    preview_rows: int = Field(default=4, gt=0)
    seed: int = Field(default=0, ge=0)

    @classmethod
    def quick(cls, seed: int = 0) -> DemoConfig:
        """The CI variant: small scenes, few of them, short runs."""
        return cls(
            height=64,
            width=128,
            n_labeled=8,
            n_unlabeled_source=12,
            n_unlabeled_target=4,
            n_test=6,
            crop_sizes=[32, 48, 64],
            base_batch_size=4,
            teacher_epochs=3,
            teacher_samples_per_epoch=32,
            student_epochs=3,
            student_samples_per_epoch=48,
            min_centroid_area=4,
            cpus_per_worker=1.0,
            preview_rows=3,
            seed=seed,
        )


class DemoPaths:
    """Where the demo puts everything, under one work folder."""

    def __init__(self, workdir: str | Path) -> None:
        self.workdir = Path(workdir).expanduser().resolve()
        self.data = self.workdir / "data"
        self.source = self.data / "source"
        self.target = self.data / "target"
        self.unlabeled = self.data / "unlabeled"
        self.runs = self.workdir / "runs"
        self.store = self.workdir / "labels.zarr"
        self.picture = self.workdir / "pseudo_labels.png"
        self.results = self.workdir / "results.json"

    def clear(self) -> None:
        """Delete what an earlier demo left here (only the demo's own outputs)."""
        for name in DEMO_OUTPUTS:
            path = self.workdir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def write_demo_data(paths: DemoPaths, config: DemoConfig) -> dict[str, int]:
    """Write the labeled, unlabeled and test scenes; returns how many of each.

    The unlabeled scenes are written like the others and then their label files are deleted, so
    nothing downstream can read them.
    """
    size = (config.height, config.width)
    seed = config.seed
    sets = [
        (paths.source, config.n_labeled, "source", "train"),
        (paths.source, config.n_test, "source", "test"),
        (paths.target, config.n_test, "target", "test"),
        (paths.unlabeled, config.n_unlabeled_source, "source", "unlabeled"),
        (paths.unlabeled, config.n_unlabeled_target, "target", "unlabeled"),
    ]
    counts = {}
    for root, n, domain, split in tqdm(sets, desc="scenes", unit="set", leave=False):
        if n > 0:
            write_synthetic_dataset(root, n, domain, size, seed, split)
        counts[f"{domain}_{split}"] = n
    shutil.rmtree(paths.unlabeled / "gtFine", ignore_errors=True)
    return counts


def teacher_config(paths: DemoPaths, config: DemoConfig) -> TrainJobConfig:
    """The teacher run: labeled source scenes only."""
    return TrainJobConfig(
        role="teacher",
        run_name="teacher",
        storage_path=str(paths.runs),
        model=config.model,
        labeled=_labeled_source(paths),
        epochs=config.teacher_epochs,
        samples_per_epoch=config.teacher_samples_per_epoch,
        **_common_training(config),
    )


def label_config(paths: DemoPaths, teacher_checkpoint: str | Path) -> LabelJobConfig:
    """The labeling run: the teacher labels every unlabeled image once (whole-image inference)."""
    return LabelJobConfig(
        teacher_checkpoint=str(teacher_checkpoint),
        source=DataSource(format="folder", root=str(paths.unlabeled)),
        store=str(paths.store),
        mode="whole",
        batch_size=8,
        num_actors=1,
        cpus_per_actor=1.0,
        overwrite=True,
    )


def student_config(
    paths: DemoPaths, config: DemoConfig, teacher_checkpoint: str | Path | None = None
) -> TrainJobConfig:
    """The student run: labeled scenes and pseudo labels with centroid sampling, starting from
    ``teacher_checkpoint`` when given (else from scratch)."""
    return TrainJobConfig(
        role="student",
        run_name="student",
        storage_path=str(paths.runs),
        model=config.model,
        labeled=_labeled_source(paths),
        pseudo=[
            PseudoSource(store=str(paths.store), confidence_threshold=config.confidence_threshold)
        ],
        real_pseudo_ratio=config.real_pseudo_ratio,
        centroid_sampling=True,
        epochs=config.student_epochs,
        samples_per_epoch=config.student_samples_per_epoch,
        init_checkpoint=None if teacher_checkpoint is None else str(teacher_checkpoint),
        **_common_training(config),
    )


def _labeled_source(paths: DemoPaths) -> DataSource:
    return DataSource(format="cityscapes", root=str(paths.source), split="train")


def _common_training(config: DemoConfig) -> dict:
    return {
        "schedule": ScheduleConfig(
            kind="coarse2fine+",
            crop_sizes=config.crop_sizes,
            warmup_epochs=config.warmup_epochs,
            base_batch_size=config.base_batch_size,
        ),
        "augment": AugmentConfig(scale_min=config.scale_min, scale_max=config.scale_max),
        "lr": config.lr,
        "cpus_per_worker": config.cpus_per_worker,
        "max_failures": 0,
        "seed": config.seed,
    }


def test_sources(paths: DemoPaths) -> dict[str, DataSource]:
    """The held-out test scenes of each domain."""
    return {
        "source": DataSource(format="cityscapes", root=str(paths.source), split="test"),
        "target": DataSource(format="cityscapes", root=str(paths.target), split="test"),
    }


def class_table(teacher: dict, student: dict) -> list[dict]:
    """Per-class rows ``{"class", "teacher_iou", "student_iou", "delta"}`` of two evaluations
    (``evaluate_checkpoint`` results on the same scenes).

    A class is listed when either model has an IoU for it, i.e. it occurs in the scenes or one of
    the models predicts it; ``delta`` (student - teacher) is None unless both have one.
    """
    rows = []
    for name, t_iou in teacher["per_class_iou"].items():
        s_iou = student["per_class_iou"].get(name)
        if t_iou is None and s_iou is None:
            continue
        delta = None if t_iou is None or s_iou is None else s_iou - t_iou
        rows.append({"class": name, "teacher_iou": t_iou, "student_iou": s_iou, "delta": delta})
    return rows


def format_table(rows: list[dict], summary: list[tuple[str, float | None, float | None]]) -> str:
    """The per-class table as text, IoU in percent, then the summary rows (e.g. mIoU)."""

    def pct(value: float | None) -> str:
        return "    n/a" if value is None else f"{100 * value:7.1f}"

    def signed(value: float | None) -> str:
        return "    n/a" if value is None else f"{100 * value:+7.1f}"

    lines = [f"{'class':16s} {'teacher':>7s} {'student':>7s} {'delta':>7s}"]
    for row in rows:
        lines.append(
            f"{row['class']:16s} {pct(row['teacher_iou'])} {pct(row['student_iou'])} "
            f"{signed(row['delta'])}"
        )
    lines.append("-" * len(lines[0]))
    for name, t_value, s_value in summary:
        delta = None if t_value is None or s_value is None else s_value - t_value
        lines.append(f"{name:16s} {pct(t_value)} {pct(s_value)} {signed(delta)}")
    return "\n".join(lines)


def write_pseudo_label_picture(
    store_path: str | Path, out: str | Path, rows: int = 4, gap: int = 4
) -> Path:
    """A PNG of some labeled images of a store, each next to its pseudo label.

    Rows are spread evenly over the store's done images (sorted paths, so both domains show when
    the unlabeled set has both). Ignored pixels are black.

    Args:
        store_path: The label store.
        out: The PNG to write.
        rows: Images to show (fewer when the store has fewer).
        gap: White pixels between the tiles.
    """
    store = LabelStore.open(store_path, read_only=True)
    done = store.done_indices()
    if len(done) == 0:
        raise ConfigError(f"label store {store_path} holds no labeled images to show")
    picks = done[np.linspace(0, len(done) - 1, min(rows, len(done))).round().astype(int)]
    label_space: LabelSpace = store.label_space
    tiles = []
    for index in picks:
        image = cv2.cvtColor(cv2.imread(store.image_path(int(index))), cv2.COLOR_BGR2RGB)
        label = label_space.colorize(store.label(int(index)))
        tiles.append([image, label])
    width = max(t[0].shape[1] for t in tiles)
    white = 255
    rows_rgb = []
    for image, label in tiles:
        h = image.shape[0]
        row = np.full((h, 2 * width + gap, 3), white, np.uint8)
        row[:, : image.shape[1]] = image
        row[:, width + gap : width + gap + label.shape[1]] = label
        rows_rgb.append(row)
        rows_rgb.append(np.full((gap, 2 * width + gap, 3), white, np.uint8))
    picture = np.concatenate(rows_rgb[:-1])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{out}: cannot write the picture")
    return out


class EpochProgress:
    """A progress bar of a training run's epochs, fed from its metrics.jsonl.

    The job writes one line per epoch into the run folder; a thread on the driver reads it, so the
    bar needs nothing from inside the Ray workers.

    Args:
        metrics: The run's metrics.jsonl.
        epochs: Epochs of the run.
        desc: The bar's label.
        enabled: Show the bar at all.
    """

    def __init__(self, metrics: Path, epochs: int, desc: str, enabled: bool = True) -> None:
        self.metrics = metrics
        self.bar = tqdm(total=epochs, desc=desc, unit="epoch", disable=not enabled)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> EpochProgress:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join()
        self._update()
        self.bar.close()

    def _follow(self) -> None:
        while not self.stop.wait(0.5):
            self._update()

    def _update(self) -> None:
        try:
            lines = self.metrics.read_text().splitlines()
        except OSError:  # not written yet
            return
        rows = [json.loads(line) for line in lines if line.strip()]
        if len(rows) > self.bar.n:
            last = rows[-1]
            self.bar.set_postfix(
                loss=f"{last['loss']:.3f}",
                crop=last["crop_size"],
                img_s=f"{last['images_per_s']:.0f}",
                refresh=False,
            )
            self.bar.update(len(rows) - self.bar.n)


class _Stages:
    """Numbered stage headers with the time each stage took."""

    def __init__(self, total: int, echo: Callable[[str], None]) -> None:
        self.total = total
        self.echo = echo
        self.number = 0
        self.seconds: dict[str, float] = {}

    def run(self, key: str, title: str, fn: Callable[[], object]) -> object:
        self.number += 1
        self.echo(f"[{self.number}/{self.total}] {title}")
        start = time.perf_counter()
        result = fn()
        self.seconds[key] = round(time.perf_counter() - start, 1)
        self.echo(f"      done in {self.seconds[key]:.0f} s")
        return result


def start_ray() -> None:
    """Start a fresh local Ray in this process (a no-op when Ray is already initialized).

    Like jobs.ray_entry.init_ray without an address, but the workers' log lines (Ray Train's report
    of every epoch, its background threads' warnings) are not copied into the demo's output; they
    stay in Ray's session folder, and errors still reach the driver as exceptions.
    """
    import ray

    if ray.is_initialized():
        return
    # Each epoch's report waits for the controller's next poll (every 2 s by default).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    repo_root = str(Path(__file__).resolve().parents[1])
    paths = [repo_root, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    ray.init(
        address="local",
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}},
    )
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def run_demo(
    workdir: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    config: DemoConfig | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Run the whole demo in ``workdir`` and return its results (also written to results.json).

    Args:
        workdir: The work folder; the demo's outputs from an earlier run there are replaced.
        quick: Use ``DemoConfig.quick()`` (tiny sizes) instead of the defaults.
        seed: Seed of scenes and training (ignored when ``config`` is given).
        config: Explicit settings, overriding ``quick`` and ``seed``.
        progress: Show progress bars (on stderr).
        echo: Where stage headers and the table go.

    Returns:
        ``teacher_miou`` and ``student_miou`` (held-out source scenes), ``teacher_target_miou`` and
        ``student_target_miou`` (held-out target scenes), ``per_class`` (rows of ``class_table``),
        ``workdir``, ``artifacts`` (checkpoints, label store, picture, results file), ``seconds``
        per stage and ``config``.
    """
    if config is None:
        config = DemoConfig.quick(seed) if quick else DemoConfig(seed=seed)
    paths = DemoPaths(workdir)
    paths.workdir.mkdir(parents=True, exist_ok=True)
    paths.clear()
    stages = _Stages(6, echo)
    start = time.perf_counter()
    echo(f"selftrain demo in {paths.workdir}")

    counts = stages.run(
        "data",
        f"writing synthetic scenes ({config.height}x{config.width}): {config.n_labeled} labeled, "
        f"{config.n_unlabeled_source} + {config.n_unlabeled_target} unlabeled "
        f"(source + target), {config.n_test} + {config.n_test} held out",
        lambda: write_demo_data(paths, config),
    )
    stages.run("ray", "starting Ray in this process", start_ray)

    from jobs import label, student, teacher  # noqa: PLC0415 (Ray Train is a heavy import)
    from jobs.train import METRICS_FILE, run_dir  # noqa: PLC0415

    t_config = teacher_config(paths, config)
    t_summary = stages.run(
        "teacher",
        f"training the teacher ({config.model}) on {config.n_labeled} labeled scenes, "
        f"{config.teacher_epochs} epochs x {config.teacher_samples_per_epoch} crops",
        lambda: _train(teacher.run, t_config, run_dir(t_config) / METRICS_FILE, progress),
    )
    l_config = label_config(paths, t_summary["last_checkpoint"])
    stages.run(
        "label",
        f"labeling {config.n_unlabeled_source + config.n_unlabeled_target} unlabeled scenes "
        "into the label store (Ray Data)",
        lambda: label.run(l_config, progress_bar=progress),
    )
    init = t_summary["last_checkpoint"] if config.student_from_teacher else None
    s_config = student_config(paths, config, init)
    s_summary = stages.run(
        "student",
        f"training the student {'from the teacher' if init else 'from scratch'} on real and "
        f"pseudo labels ({config.real_pseudo_ratio:g}:1, centroid sampling, coarse2fine+ crops "
        f"{config.crop_sizes}), {config.student_epochs} epochs x "
        f"{config.student_samples_per_epoch} crops",
        lambda: _train(student.run, s_config, run_dir(s_config) / METRICS_FILE, progress),
    )
    checkpoints = {"teacher": t_summary["last_checkpoint"], "student": s_summary["last_checkpoint"]}
    scores = stages.run(
        "evaluate",
        f"evaluating both on the held-out scenes ({config.n_test} per domain)",
        lambda: _evaluate(checkpoints, test_sources(paths)),
    )
    write_pseudo_label_picture(paths.store, paths.picture, config.preview_rows)

    rows = class_table(scores["teacher"]["source"], scores["student"]["source"])
    result = {
        "teacher_miou": scores["teacher"]["source"]["miou"],
        "student_miou": scores["student"]["source"]["miou"],
        "teacher_target_miou": scores["teacher"]["target"]["miou"],
        "student_target_miou": scores["student"]["target"]["miou"],
        "per_class": rows,
        "workdir": str(paths.workdir),
        "artifacts": {
            "teacher_checkpoint": checkpoints["teacher"],
            "student_checkpoint": checkpoints["student"],
            "label_store": str(paths.store),
            "pseudo_label_picture": str(paths.picture),
            "results": str(paths.results),
        },
        "scenes": counts,
        "seconds": {**stages.seconds, "total": round(time.perf_counter() - start, 1)},
        "config": config.model_dump(),
    }
    paths.results.write_text(json.dumps(result, indent=2))
    echo("")
    echo(f"IoU (%) on {config.n_test} held-out source scenes")
    summary = [
        ("mIoU source", result["teacher_miou"], result["student_miou"]),
        ("mIoU target", result["teacher_target_miou"], result["student_target_miou"]),
    ]
    echo(format_table(rows, summary))
    if config.student_from_teacher:
        # Said with the numbers, so nobody reads the gain as pseudo labels alone.
        echo(
            f"The student started from the teacher's weights and trained {config.student_epochs} "
            "more epochs; part of its lead is that extra training (a control is in "
            "docs/performance.md)."
        )
    echo("")
    for name, path in result["artifacts"].items():
        echo(f"{name.replace('_', ' '):22s} {path}")
    echo(f"finished in {result['seconds']['total'] / 60:.1f} min")
    return result


def _train(
    run: Callable[[TrainJobConfig], dict], config: TrainJobConfig, metrics: Path, progress: bool
) -> dict:
    with EpochProgress(metrics, config.epochs, config.role, enabled=progress):
        return run(config)


def _evaluate(checkpoints: dict[str, str], sources: dict[str, DataSource]) -> dict:
    return {
        role: {domain: evaluate_checkpoint(path, source) for domain, source in sources.items()}
        for role, path in checkpoints.items()
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Teacher -> pseudo labels -> student on synthetic scenes, Ray in-process."
    )
    parser.add_argument("--workdir", default="selftrain-demo", help="where data and results go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    return parser


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Run the demo; ``args`` are parsed options (``selftrain demo`` passes its own) or argv."""
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(args)
    result = run_demo(args.workdir, quick=args.quick, seed=args.seed)
    if args.json:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
