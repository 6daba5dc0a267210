"""CamVid self-training benchmark, inductive: teacher -> pseudo labels -> students -> evaluation on
a sequence that no model trained on.

Every step is the real command, run as a subprocess: ``jobs/train.py`` (Ray Train: teacher,
control and students), ``jobs/label.py`` (Ray Data), then ``selftrain evaluate --json`` on each
final checkpoint and evaluation split. The configs are the YAML files in ``benchmarks/camvid/``
(the ``full`` scale runs them as they are); this script only makes their paths absolute, sets the
seed, applies the ``smoke`` scale's overrides, and writes the config it ran next to the run.

Splits (benchmarks/camvid_data.py writes them once into ``<workdir>/data``, all at 180x240):

- ``test`` (the headline): CamVid train's sequence 0006R0, 101 frames, in neither the labeled set
  nor the pool, so a gain there is a gain on images nobody labeled or pseudo-labeled.
- labeled: ``benchmarks/camvid/labeled_1of8_inductive.txt``, 33 of the other 266 train frames.
- pool: the other 233 train frames plus the 101 val frames, labeled by the teacher.
- ``val``: CamVid val, reported as a transductive column (its images are in the pool).
- ``--extra-test NAME=FORMAT:ROOT:SPLIT`` (repeatable): more labeled splits, e.g. CamVid's own
  ``test/`` + ``testannot/`` (``camvid_test=camvid:/data/camvid:test``), converted to 180x240.

Per seed N, ``<workdir>/<scale>/seed<N>/`` holds ``configs/`` (the configs as run), ``runs/``
(core.runfiles), ``stores/pool.zarr`` (the pseudo labels), ``logs/`` and ``evals/``.
Prints one JSON line per model (a student's with the promotion gate's verdict, ``gate``: promoted
or not, and why), then one JSON summary line; writes ``<workdir>/<scale>/results.md``
(benchmarks/camvid_report.py) and ``summary.json`` there.

    python benchmarks/camvid_selftrain.py --workdir camvid-bench --scale smoke   # plumbing
    python benchmarks/camvid_selftrain.py --workdir camvid-bench --scale full --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from camvid_data import (
    DEFAULT_CAMVID,
    ExtraTest,
    is_test_frame,
    prepare_data,
    prepare_extra_test,
)
from camvid_report import (
    STUDENTS,
    VARIANTS,
    aggregate,
    markdown_report,
    paired_deltas,
)

from core.configs import LabelJobConfig, TrainJobConfig, load_config, save_config
from core.io import read_label
from core.labels import CAMVID
from core.metrics import ConfusionMatrix
from core.runfiles import MetricsRow, RunFiles
from core.store import LabelStore

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "benchmarks" / "camvid"
# The smoke scale: same configs, a few steps each and a small pool, to prove the plumbing.
SMOKE_EPOCHS = 2
SMOKE_SAMPLES_PER_EPOCH = 16
SMOKE_POOL_FRACTION = 0.05
# The teacher is also evaluated with multi-scale + flip inference (the settings its pseudo labels
# were made with) on these splits.
MULTISCALE_SPLITS = ("test", "val")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
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
        "--extra-test",
        action="append",
        default=[],
        metavar="NAME=FORMAT:ROOT:SPLIT",
        help="another labeled split every model is evaluated on, converted to 180x240 first; "
        "FORMAT camvid (ROOT/SPLIT + ROOT/SPLITannot) or folder (ROOT/images + ROOT/labels in "
        "CamVid train ids), e.g. camvid_test=camvid:/data/camvid:test; repeatable",
    )
    parser.add_argument(
        "--report-from",
        type=Path,
        metavar="LOG",
        help="train nothing: rebuild the report from the JSON records an earlier (perhaps "
        "stopped) run of this script printed into LOG, for the same --workdir and --scale",
    )
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    students = [v for v in STUDENTS if v in variants]
    try:
        extras = [ExtraTest.parse(text) for text in args.extra_test]
    except ValueError as exc:
        parser.error(f"--extra-test {exc}")
    if len({e.name for e in extras}) != len(extras):
        parser.error("--extra-test: each NAME once")

    start = time.perf_counter()
    workdir = args.workdir.expanduser().resolve()
    machine = describe_machine()
    log(f"preparing data in {workdir / 'data'}")
    data = prepare_data(args.camvid.expanduser().resolve(), workdir / "data")
    for extra in extras:
        log(f"converting extra test split {extra.name} from {extra.root}")
        data["eval_splits"][extra.name] = prepare_extra_test(extra, workdir / "data")
    data["prepare_s"] = round(time.perf_counter() - start, 1)
    env = job_environment(args.scale)
    models: list[dict] = []
    pseudo_labels: dict[int, dict] = {}

    def one_seed(seed: int) -> tuple[list[dict], dict | None]:
        seed_dir = workdir / args.scale / f"seed{seed}"
        if args.report_from is not None:
            return records_from_log(args.report_from, seed, seed_dir, data)
        return run_seed(seed, seed_dir, args.scale, students, data, env)

    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        for seed, (records, quality) in zip(seeds, pool.map(one_seed, seeds), strict=True):
            models += records
            if quality is not None:
                pseudo_labels[seed] = quality
    for model in models:  # the teacher's delta to the control, which trained after it
        model.update(paired_deltas(model, models))
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
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown_report(summary))
    log(f"wrote {out_dir / 'results.md'} and summary.json")
    print(json.dumps({k: v for k, v in summary.items() if k != "models"}), flush=True)
    return 1 if any("error" in m for m in models) else 0


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every CamVid benchmark takes: work folder, scale, seeds, CamVid's root."""
    parser.add_argument("--workdir", required=True, type=Path, help="data, runs and results")
    parser.add_argument("--scale", choices=["smoke", "full"], default="full")
    parser.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
    parser.add_argument(
        "--camvid", type=Path, default=DEFAULT_CAMVID, help="CamVid in the SegNet layout"
    )


def records_from_log(
    log_path: Path, seed: int, seed_dir: Path, data: dict
) -> tuple[list[dict], dict | None]:
    """The model records of ``seed`` that an earlier run printed into ``log_path`` (one JSON line
    each), and its pseudo labels' quality measured again from its store (None without one)."""
    records = []
    for line in log_path.read_text().splitlines():
        if line.startswith('{"model"'):
            record = json.loads(line)
            if record.get("seed") == seed and record.get("scale") is not None:
                records.append(record)
    store = seed_dir / "stores" / "pool.zarr"
    if not store.is_dir():
        return records, None
    return records, pseudo_label_quality(str(store), Path(data["half_resolution"]))


# --- one seed --------------------------------------------------------------------------------


def run_seed(
    seed: int, seed_dir: Path, scale: str, students: list[str], data: dict, env: dict
) -> tuple[list[dict], dict | None]:
    """Teacher, control, label job and students of one seed, each evaluated; returns their
    records and the pseudo labels' quality (None when the teacher or the label job failed).

    The control needs no pseudo labels, so it runs before the label job (and even if it fails);
    every later record carries its paired deltas to the teacher and the control when printed.
    """
    for sub in ("configs", "logs", "evals"):
        (seed_dir / sub).mkdir(parents=True, exist_ok=True)
    records: list[dict] = []

    def train(name: str) -> dict:
        record = train_and_evaluate(name, seed, seed_dir, scale, data, env)
        record.update(paired_deltas(record, records))
        print(json.dumps(record), flush=True)
        records.append(record)
        return record

    teacher = train("teacher")
    # Controls need no pseudo labels, online students that read the pool's images no stores:
    # they train before the label job.
    for name in [s for s in students if not reads_stores(s)]:
        train(name)
    if "error" in teacher:
        return records, None
    pseudo_students = [name for name in students if reads_stores(name)]
    if not pseudo_students:
        return records, None
    quality: dict | None = None
    failed: set[str] = set()
    for label_name in sorted({label_config_of(name) for name in pseudo_students}):
        label_config = resolve_label_config(seed_dir, scale, label_name)
        config_path = save_config(label_config, seed_dir / "configs" / f"{label_name}.yaml")
        command = [sys.executable, str(REPO / "jobs" / "label.py"), "--config", str(config_path)]
        log(f"seed {seed}: label job {label_name}")
        try:
            label_result, wall = run_job(command, seed_dir / "logs" / f"{label_name}.log", env)
        except JobError as exc:
            record = {"model": label_name, "seed": seed, "error": str(exc)}
            print(json.dumps(record), flush=True)
            records.append(record)
            failed.add(label_name)
            continue
        if quality is None:  # the hard labels: the same argmax in every store of the teacher
            quality = pseudo_label_quality(label_config.store, Path(data["half_resolution"]))
            quality.update(job=label_result, wall_s=round(wall, 1), command=shlex.join(command))
            log(f"seed {seed}: pseudo labels mIoU on the pool {quality['miou']:.3f}")
    for name in pseudo_students:
        if label_config_of(name) not in failed:
            train(name)
    return records, quality


def reads_stores(student: str) -> bool:
    """Whether the student reads label stores (and so needs the label job first)."""
    return bool(load_config(CONFIG_DIR / f"{student}.yaml", TrainJobConfig).pseudo)


def label_config_of(student: str) -> str:
    """The label config (``benchmarks/camvid/<name>.yaml``) whose store the student reads."""
    store = load_config(CONFIG_DIR / f"{student}.yaml", TrainJobConfig).pseudo[0]
    for path in sorted(CONFIG_DIR.glob("label*.yaml")):
        if load_config(path, LabelJobConfig).store == store:
            return path.stem
    raise ValueError(f"{student}: no benchmarks/camvid/label*.yaml writes {store}")


def train_and_evaluate(
    name: str,
    seed: int,
    seed_dir: Path,
    scale: str,
    data: dict,
    env: dict,
    config_dir: Path = CONFIG_DIR,
    evaluated: bool = True,
) -> dict:
    """Train one model with its job script (``config_dir/<name>.yaml``) and, if ``evaluated``,
    evaluate its last checkpoint on every split."""
    config = resolve_train_config(name, seed, seed_dir, scale, config_dir)
    config_path = seed_dir / "configs" / f"{name}.yaml"
    files = RunFiles.of(config.storage_path, config.run_name)
    record: dict = {"model": name, "seed": seed, "scale": scale, **describe_config(config)}
    # The job would resume the old run under the new config (or just return it as it is).
    changed = config_path.is_file() and not same_training(
        load_config(config_path, TrainJobConfig), config
    )
    if files.directory.exists() and changed:
        record["error"] = (
            f"{name}: config changed since {files.directory} was trained; use a new --workdir"
        )
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
        if not evaluated:
            return record
        record["evals"], record["evals_multiscale"] = {}, {}
        eval_start = time.perf_counter()
        for split, where in data["eval_splits"].items():
            modes = ["whole"]
            if name == "teacher" and split in MULTISCALE_SPLITS:
                modes.append("multiscale")
            for mode in modes:
                result = evaluate(checkpoint, where["root"], where["split"], mode, env)
                out = seed_dir / "evals" / f"{name}_{split}_{mode}.json"
                out.write_text(json.dumps(result) + "\n")
                record["evals" if mode == "whole" else "evals_multiscale"][split] = result
        record["eval_wall_s"] = round(time.perf_counter() - eval_start, 1)
        # The headline (held-out sequence) and the transductive column, at the top level.
        record["miou"] = record["evals"]["test"]["miou"]
        record["miou_val"] = record["evals"]["val"]["miou"]
        record["per_class_iou"] = record["evals"]["test"]["per_class_iou"]
    except JobError as exc:
        record["error"] = str(exc)
    return record


def same_training(a: TrainJobConfig, b: TrainJobConfig) -> bool:
    """Whether two configs train the same run: equal but for where their labeled-list files
    lie, when those files hold the same lines (another checkout of the repository)."""

    def without_lists(config: TrainJobConfig) -> tuple[dict, list[str | None]]:
        data = config.model_dump()
        lists = []
        for key in ("labeled", "val"):
            if data[key] is not None:
                path = data[key].pop("subset_list")
                lists.append(None if path is None else Path(path).read_text())
        return data, lists

    return without_lists(a) == without_lists(b)


def resolve_train_config(
    name: str, seed: int, seed_dir: Path, scale: str, config_dir: Path = CONFIG_DIR
) -> TrainJobConfig:
    """``config_dir/<name>.yaml`` with absolute paths, the seed, and the scale's overrides.

    Paths are relative to the seed folder, except ``subset_list`` (relative to the repository).
    """
    config = load_config(config_dir / f"{name}.yaml", TrainJobConfig)
    data = config.model_dump()
    data["seed"] = seed
    data["storage_path"] = under(seed_dir, config.storage_path)
    for key in ("labeled", "val"):
        if data[key] is not None:
            data[key]["root"] = under(seed_dir, data[key]["root"])
            if data[key]["subset_list"] is not None:
                data[key]["subset_list"] = under(REPO, data[key]["subset_list"])
    data["pseudo"] = [under(seed_dir, store) for store in data["pseudo"]]
    for source in data["unlabeled"]:
        source["root"] = under(seed_dir, source["root"])
    for key in ("init_checkpoint", "online_teacher"):
        if data[key] is not None:
            data[key] = under(seed_dir, data[key])
    if scale == "smoke":
        data["epochs"] = SMOKE_EPOCHS
        data["samples_per_epoch"] = SMOKE_SAMPLES_PER_EPOCH
        schedule = data["schedule"]
        schedule["warmup_epochs"] = min(schedule["warmup_epochs"], SMOKE_EPOCHS - 1)
    return TrainJobConfig.model_validate(data)


def resolve_label_config(
    seed_dir: Path, scale: str, name: str = "label", config_dir: Path = CONFIG_DIR
) -> LabelJobConfig:
    """``config_dir/<name>.yaml`` with absolute paths (smoke: 5% of the pool)."""
    config = load_config(config_dir / f"{name}.yaml", LabelJobConfig)
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
    levers = []
    if config.pseudo_augment is not None:
        levers.append("pseudo_augment")
    if config.real_centroid_sampling:
        levers.append("real_centroid_sampling")
    if config.pseudo_keep_fraction is not None:
        levers.append(f"pseudo_keep_fraction {config.pseudo_keep_fraction:g}")
    if config.ignore_underpredicted is not None:
        levers.append(f"ignore_underpredicted {config.ignore_underpredicted:g}")
    if config.soft_labels:
        levers.append("soft labels")
    if config.labeled_cutmix:
        levers.append(f"labeled_cutmix {config.labeled_cutmix:g}")
    if config.copy_paste is not None:
        levers.append(f"copy_paste {config.copy_paste.probability:g}")
    if config.init_checkpoint:
        levers.append("init teacher")
    uses_pseudo = bool(config.pseudo or config.unlabeled) and config.pseudo_per_real > 0
    if config.online_method and uses_pseudo:
        online = config.online
        levers.append(
            f"online (EMA {online.ema_decay:g} from {online.teacher_start}, threshold "
            f"{online.threshold:g}{' per class' if online.class_thresholds else ''}, "
            f"{2 if online.second_view else 1} strong views, cutmix {online.cutmix:g}"
            f"{f', feature dropout {online.feature_dropout:g}' if online.feature_dropout else ''})"
        )
    return {
        "centroid_sampling": uses_pseudo and config.centroid_sampling,
        "pseudo_per_real": config.pseudo_per_real if uses_pseudo else None,
        "crop_schedule": crop_schedule,
        "levers": levers,
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


def evaluate(checkpoint: Path, data_root: str, split: str, mode: str, env: dict) -> dict:
    """``selftrain evaluate --json`` on a split in the SegNet layout; its result plus the command
    and its wall time."""
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
        split,
        "--mode",
        mode,
        "--json",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    result = last_json_line(done.stdout)
    if done.returncode != 0 or result is None:
        raise JobError(f"{shlex.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    wall = round(time.perf_counter() - start, 1)
    return {**result, "command": shlex.join(command), "wall_s": wall}


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
    # One worker: each epoch takes ceil(samples / batch) steps (rows written before the rows had
    # a step count).
    steps = sum(
        r.steps if r.steps is not None else math.ceil((r.n_real + r.n_pseudo) / r.batch_size)
        for r in rows
    )
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
    by_split: dict[str, int] = {}
    for index in done:
        image = Path(store.image_path(int(index)))
        if is_test_frame(image.stem):
            raise RuntimeError(f"{store_path}: the pool holds test frame {image}")
        by_split[image.parent.name] = by_split.get(image.parent.name, 0) + 1
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
        "images_by_split": by_split,
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


if __name__ == "__main__":
    sys.exit(main())
