"""CamVid self-training benchmark (issue 7): teacher -> pseudo labels -> students -> evaluation.

Every step is the real command, run as a subprocess: ``jobs/teacher.py``, ``jobs/label.py``,
``jobs/student.py`` (Ray Train / Ray Data), then ``selftrain evaluate --json`` on each final
checkpoint. The configs are the YAML files in ``benchmarks/camvid/`` (the ``full`` scale runs them
as they are); this script only makes their paths absolute, sets the seed, applies the ``smoke``
scale's overrides, and writes the config it ran next to the run.

Data (written once into ``<workdir>/data``):

- ``camvid_180x240/``: CamVid train and val at half resolution (images bilinear, which at exactly
  half averages 2x2 blocks; labels nearest), in the SegNet layout. Everything trains, labels and is
  evaluated at 180x240, because no config or CLI option sets a resolution (see docs/results.md).
- ``pool_180x240/``: the unlabeled pool for the label job, a ``folder`` source of symlinks: the 321
  train images not in ``benchmarks/camvid/labeled_1of8.txt`` and the 101 val images (their labels
  are only read to measure the pseudo labels' quality, never for training).

Per seed N, ``<workdir>/<scale>/seed<N>/`` holds ``configs/`` (the configs as run), ``runs/``
(core.runfiles), ``stores/pool.zarr`` (the pseudo labels), ``logs/`` and ``evals/``.
Prints one JSON line per model, then one JSON summary line; writes ``<workdir>/<scale>/results.md``
(tables for docs/results.md) and ``summary.json`` there.

    python benchmarks/camvid_selftrain.py --workdir camvid-bench --scale smoke   # plumbing, minutes
    python benchmarks/camvid_selftrain.py --workdir camvid-bench --scale full --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from camvid_report import STUDENTS, VARIANTS, aggregate, markdown_report

from core.configs import LabelJobConfig, TrainJobConfig, load_config, save_config
from core.datasets import camvid
from core.io import read_label, write_image, write_label
from core.labels import CAMVID
from core.metrics import ConfusionMatrix
from core.runfiles import MetricsRow, RunFiles
from core.store import LabelStore
from core.transforms import resize_pair

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "benchmarks" / "camvid"
LABELED_LIST = CONFIG_DIR / "labeled_1of8.txt"
DEFAULT_CAMVID = REPO.parent / "shared" / "datasets" / "camvid"
HALF_SIZE = (180, 240)
DATA_NAME = "camvid_180x240"
POOL_NAME = "pool_180x240"
# The smoke scale: same configs, a few steps each and a small pool, to prove the plumbing.
SMOKE_EPOCHS = 2
SMOKE_SAMPLES_PER_EPOCH = 16
SMOKE_POOL_FRACTION = 0.05


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, type=Path, help="data, runs and results")
    parser.add_argument("--scale", choices=["smoke", "full"], default="full")
    parser.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)} (the teacher always runs)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="seeds run at the same time (each job uses one core; 2 suits a 2-core machine)",
    )
    parser.add_argument(
        "--camvid", type=Path, default=DEFAULT_CAMVID, help="CamVid in the SegNet layout"
    )
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    students = [v for v in STUDENTS if v in variants]

    start = time.perf_counter()
    workdir = args.workdir.expanduser().resolve()
    machine = describe_machine()
    log(f"preparing data in {workdir / 'data'}")
    data = prepare_data(args.camvid.expanduser().resolve(), workdir / "data")
    env = job_environment(args.scale)
    models: list[dict] = []
    pseudo_labels: dict[int, dict] = {}

    def one_seed(seed: int) -> tuple[list[dict], dict | None]:
        seed_dir = workdir / args.scale / f"seed{seed}"
        return run_seed(seed, seed_dir, args.scale, students, data, env)

    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        for seed, (records, quality) in zip(seeds, pool.map(one_seed, seeds), strict=True):
            models += records
            if quality is not None:
                pseudo_labels[seed] = quality
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = {
        "scale": args.scale,
        "seeds": seeds,
        "variants": ["teacher", *students],
        "machine": machine,
        "data": data,
        "by_variant": aggregate(models),
        "pseudo_labels": pseudo_labels,
        "wall_s": round(time.perf_counter() - start, 1),
        "command": shlex.join(
            ["python", "benchmarks/camvid_selftrain.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "models": models,
    }
    out_dir = workdir / args.scale
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown_report(summary))
    log(f"wrote {out_dir / 'results.md'} and summary.json")
    print(json.dumps({k: v for k, v in summary.items() if k != "models"}), flush=True)
    return 1 if any("error" in m for m in models) else 0


# --- data ------------------------------------------------------------------------------------


def prepare_data(camvid_root: Path, data_dir: Path) -> dict:
    """Write the half-resolution copy and the unlabeled pool (once) and describe them."""
    half = data_dir / DATA_NAME
    pool = data_dir / POOL_NAME
    build_once(half, lambda tmp: write_half_resolution(camvid_root, tmp))
    labeled = {Path(p).stem for p in camvid(half, "train").image_paths()} & labeled_stems()
    build_once(pool, lambda tmp: write_pool(half, tmp, labeled))
    return {
        "camvid": str(camvid_root),
        "half_resolution": str(half),
        "size_hw": list(HALF_SIZE),
        "train_images": len(camvid(half, "train")),
        "val_images": len(camvid(half, "val")),
        "labeled_list": str(LABELED_LIST.relative_to(REPO)),
        "labeled_images": len(labeled),
        "pool": str(pool),
        "pool_images": {split: len(list((pool / split).iterdir())) for split in ("train", "val")},
    }


def build_once(folder: Path, build: Callable[[Path], None]) -> None:
    """Build ``folder`` in a temporary sibling and rename it into place, unless it exists.

    The rename is atomic, so two benchmark processes started together (e.g. one per seed) never
    see a half-written folder, and an interrupted build leaves only a temporary folder behind.
    """
    if folder.is_dir():
        return
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first
        shutil.rmtree(tmp)
        if not folder.is_dir():
            raise


def labeled_stems() -> set[str]:
    lines = LABELED_LIST.read_text().splitlines()
    return {line.split()[0] for line in lines if line.strip() and not line.startswith("#")}


def write_half_resolution(source_root: Path, dest_root: Path) -> None:
    """CamVid train and val at half resolution as PNG (images, and train-id labels with 255 for
    void, which the camvid loader reads back unchanged)."""
    for split in ("train", "val"):
        dataset = camvid(source_root, split)
        for index in range(len(dataset)):
            image, label, path = dataset[index]
            assert label is not None  # CamVid has a label for every image
            image, label = resize_pair(image, label, HALF_SIZE)
            stem = Path(path).stem
            write_image(dest_root / split / f"{stem}.png", image)
            write_label(dest_root / f"{split}annot" / f"{stem}.png", label)


def write_pool(half_root: Path, pool_root: Path, labeled: set[str]) -> None:
    """Relative symlinks to the unlabeled train images and all val images (a ``folder``
    source); ``pool_root`` is a sibling of ``half_root``, wherever it is renamed to."""
    for split in ("train", "val"):
        folder = pool_root / split
        folder.mkdir(parents=True)
        for image in (Path(p) for p in camvid(half_root, split).image_paths()):
            if image.stem not in labeled:
                (folder / image.name).symlink_to(
                    Path("..", "..", half_root.name, split, image.name)
                )


# --- one seed --------------------------------------------------------------------------------


def run_seed(
    seed: int, seed_dir: Path, scale: str, students: list[str], data: dict, env: dict
) -> tuple[list[dict], dict | None]:
    """Teacher, label job and students of one seed, each evaluated; returns their records and the
    pseudo labels' quality (None when the teacher or the label job failed)."""
    for sub in ("configs", "logs", "evals"):
        (seed_dir / sub).mkdir(parents=True, exist_ok=True)
    records = [train_and_evaluate("teacher", seed, seed_dir, scale, data, env)]
    if "error" in records[0]:
        return records, None
    label_config = resolve_label_config(seed_dir, scale)
    config_path = save_config(label_config, seed_dir / "configs" / "label.yaml")
    command = [sys.executable, str(REPO / "jobs" / "label.py"), "--config", str(config_path)]
    log(f"seed {seed}: label job")
    try:
        label_result, label_wall = run_job(command, seed_dir / "logs" / "label.log", env)
    except JobError as exc:
        record = {"model": "label", "seed": seed, "error": str(exc)}
        print(json.dumps(record), flush=True)
        return [*records, record], None
    quality = pseudo_label_quality(label_config.store, Path(data["half_resolution"]))
    quality.update(job=label_result, wall_s=round(label_wall, 1), command=shlex.join(command))
    log(f"seed {seed}: pseudo labels mIoU on the pool {quality['miou']:.3f}")
    for name in students:
        records.append(train_and_evaluate(name, seed, seed_dir, scale, data, env))
    return records, quality


def train_and_evaluate(
    name: str, seed: int, seed_dir: Path, scale: str, data: dict, env: dict
) -> dict:
    """Train one model with its job script, evaluate its last checkpoint, print its JSON line."""
    config = resolve_train_config(name, seed, seed_dir, scale)
    config_path = seed_dir / "configs" / f"{name}.yaml"
    files = RunFiles.of(config.storage_path, config.run_name)
    record: dict = {"model": name, "seed": seed, "scale": scale, **describe_config(config)}
    # The job would resume the old run under the new config (or just return it as it is).
    changed = config_path.is_file() and load_config(config_path, TrainJobConfig) != config
    if files.directory.exists() and changed:
        record["error"] = (
            f"{name}: config changed since {files.directory} was trained; use a new --workdir"
        )
        print(json.dumps(record), flush=True)
        return record
    save_config(config, config_path)
    command = [sys.executable, str(REPO / "jobs" / "train.py"), "--config", str(config_path)]
    record["train_command"] = shlex.join(command)
    log(f"seed {seed}: training {name}")
    try:
        _, wall = run_job(command, seed_dir / "logs" / f"{name}.log", env)
        record.update(training_figures(files.read_metrics()), job_wall_s=round(wall, 1))
        checkpoint = files.last
        record["checkpoint"] = str(checkpoint)
        modes = ["whole", "multiscale"] if name == "teacher" else ["whole"]
        for mode in modes:
            result, eval_command = evaluate(checkpoint, data["half_resolution"], mode, env)
            (seed_dir / "evals" / f"{name}_{mode}.json").write_text(json.dumps(result) + "\n")
            if mode == "whole":
                record.update(
                    miou=result["miou"],
                    pixel_accuracy=result["pixel_accuracy"],
                    per_class_iou=result["per_class_iou"],
                    eval_command=eval_command,
                )
            else:
                record["miou_multiscale"] = result["miou"]
                record["per_class_iou_multiscale"] = result["per_class_iou"]
    except JobError as exc:
        record["error"] = str(exc)
    print(json.dumps(record), flush=True)
    return record


def resolve_train_config(name: str, seed: int, seed_dir: Path, scale: str) -> TrainJobConfig:
    """``benchmarks/camvid/<name>.yaml`` with absolute paths, the seed, and the scale's overrides.

    Paths are relative to the seed folder, except ``subset_list`` (relative to the repository).
    """
    config = load_config(CONFIG_DIR / f"{name}.yaml", TrainJobConfig)
    data = config.model_dump()
    data["seed"] = seed
    data["storage_path"] = under(seed_dir, config.storage_path)
    for key in ("labeled", "val"):
        if data[key] is not None:
            data[key]["root"] = under(seed_dir, data[key]["root"])
            if data[key]["subset_list"] is not None:
                data[key]["subset_list"] = under(REPO, data[key]["subset_list"])
    data["pseudo"] = [under(seed_dir, store) for store in data["pseudo"]]
    if data["init_checkpoint"] is not None:
        data["init_checkpoint"] = under(seed_dir, data["init_checkpoint"])
    if scale == "smoke":
        data["epochs"] = SMOKE_EPOCHS
        data["samples_per_epoch"] = SMOKE_SAMPLES_PER_EPOCH
        schedule = data["schedule"]
        schedule["warmup_epochs"] = min(schedule["warmup_epochs"], SMOKE_EPOCHS - 1)
    return TrainJobConfig.model_validate(data)


def resolve_label_config(seed_dir: Path, scale: str) -> LabelJobConfig:
    """``benchmarks/camvid/label.yaml`` with absolute paths (smoke: 5% of the pool)."""
    config = load_config(CONFIG_DIR / "label.yaml", LabelJobConfig)
    data = config.model_dump()
    data["teacher_checkpoint"] = under(seed_dir, config.teacher_checkpoint)
    data["store"] = under(seed_dir, config.store)
    data["source"]["root"] = under(seed_dir, config.source.root)
    if scale == "smoke":
        data["source"]["subset_fraction"] = SMOKE_POOL_FRACTION
    return LabelJobConfig.model_validate(data)


def under(base: Path, path: str) -> str:
    """``path`` made absolute against ``base`` (absolute paths are kept)."""
    return str((base / Path(path).expanduser()).resolve())


def describe_config(config: TrainJobConfig) -> dict:
    """The settings that tell the variants apart, for the tables."""
    schedule = config.schedule
    crops = ",".join(str(s) for s in sorted(set(schedule.crop_sizes)))
    if schedule.kind == "constant":
        crop_schedule = f"constant {max(schedule.crop_sizes)}"
    else:
        crop_schedule = f"{schedule.kind} [{crops}], warm-up {schedule.warmup_epochs}"
    return {
        "centroid_sampling": bool(config.pseudo) and config.centroid_sampling,
        "pseudo_per_real": config.pseudo_per_real if config.pseudo else None,
        "crop_schedule": crop_schedule,
        "epochs": config.epochs,
        "samples_per_epoch": config.samples_per_epoch,
    }


# --- subprocesses ----------------------------------------------------------------------------


class JobError(RuntimeError):
    """A job or evaluation subprocess failed; the message names its log."""


def job_environment(scale: str) -> dict:
    env = dict(os.environ)
    # Reports are collected promptly instead of every 2 s (one per epoch, so it adds up).
    env.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    if scale == "smoke":
        # Keep a smoke run light on a shared machine; the full scale uses what the configs ask.
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_job(command: list[str], log_path: Path, env: dict) -> tuple[dict, float]:
    """Run a job script; returns the JSON summary it prints last and the wall time in seconds.

    Its stderr (Ray's and the job's logging) goes to ``log_path``, its stdout there too after it
    ends.
    """
    start = time.perf_counter()
    with log_path.open("w") as log_file:
        log_file.write(f"$ {shlex.join(command)}\n")
        log_file.flush()
        done = subprocess.run(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log_file, text=True
        )
        log_file.write(done.stdout)
    wall = time.perf_counter() - start
    result = last_json_line(done.stdout)
    if done.returncode != 0 or result is None:
        raise JobError(f"exit code {done.returncode}, see {log_path}: {tail(log_path)}")
    return result, wall


def evaluate(checkpoint: Path, data_root: str, mode: str, env: dict) -> tuple[dict, str]:
    """``selftrain evaluate --json`` on CamVid val (the half-resolution copy)."""
    command = [
        *selftrain_command(),
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--format",
        "camvid",
        "--root",
        data_root,
        "--split",
        "val",
        "--mode",
        mode,
        "--json",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    result = last_json_line(done.stdout)
    if done.returncode != 0 or result is None:
        raise JobError(f"{shlex.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return result, shlex.join(command)


def selftrain_command() -> list[str]:
    """The ``selftrain`` console script next to this Python, else the module."""
    script = Path(sys.executable).parent / "selftrain"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "selftrain.cli"]


def last_json_line(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- measurements ----------------------------------------------------------------------------


def training_figures(rows: list[MetricsRow]) -> dict:
    """Steps, pseudo share and times of a finished run, from its metrics rows."""
    n_real = sum(row.n_real for row in rows)
    n_pseudo = sum(row.n_pseudo for row in rows)
    # One worker: each epoch takes ceil(samples / batch) steps.
    steps = sum(math.ceil((r.n_real + r.n_pseudo) / r.batch_size) for r in rows)
    return {
        "epochs_done": len(rows),
        "steps": steps,
        "pseudo_share": n_pseudo / (n_real + n_pseudo) if n_real + n_pseudo else 0.0,
        "final_loss": rows[-1].loss if rows else None,
        "train_s": round(sum(row.seconds for row in rows), 1),
        "train_cpu_s": round(sum(row.cpu_seconds for row in rows), 1),
    }


def pseudo_label_quality(store_path: str, half_root: Path) -> dict:
    """The pseudo labels against the pool's ground truth (measured here, never trained on).

    Returns mIoU and per-class IoU over the labeled pool images, each class's share of the pixels
    with a ground-truth class in the ground truth and in the pseudo labels, and the centroids per
    class that centroid sampling draws from.
    """
    store = LabelStore.open(store_path, read_only=True)
    names = list(store.label_space.names)
    matrix = ConfusionMatrix(len(names), CAMVID.ignore_index)
    done = store.done_indices()
    for index in done:
        image = Path(store.image_path(int(index)))
        truth = half_root / f"{image.parent.name}annot" / f"{image.stem}.png"
        matrix.update(store.label(int(index)), read_label(truth, CAMVID))
    result = matrix.to_dict(names)
    truth_pixels = matrix.matrix.sum(axis=1)
    pseudo_pixels = matrix.matrix.sum(axis=0)
    total = max(1, int(truth_pixels.sum()))

    def shares(pixels: np.ndarray) -> dict[str, float]:
        return {n: float(c) / total for n, c in zip(names, pixels, strict=True)}

    return {
        "store": store_path,
        "images": int(len(done)),
        "miou": result["miou"],
        "per_class_iou": result["per_class_iou"],
        "truth_pixel_share": shares(truth_pixels),
        "pseudo_pixel_share": shares(pseudo_pixels),
        "centroids_per_class": store.summary()["centroids_per_class"],
    }


def describe_machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git": commit or None,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


# --- markdown --------------------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
