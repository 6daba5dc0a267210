"""Crop schedule benchmark (paper Sec. 3.3): the same model trained on the same number of images,
once at the largest crop every epoch (``constant``) and once with ``coarse2fine+`` after warm-up
epochs at the largest crop. Prints one JSON line with both wall times, the speedup and the val mIoU
of each.

Both runs go through the real training job (jobs/train.py on Ray Train, one worker) on synthetic
source scenes. The crop sizes are the paper's 400..800 (for 1024 x 2048 Cityscapes images) scaled
to the scenes' size by core.schedule.scale_crop_sizes. ``wall_s`` is the whole run (worker start,
checkpoints and validation included); ``train_s`` sums the epochs' training time only and
``train_cpu_s`` their CPU time (the steadier figure on a shared machine); the speedups are
constant / coarse2fine+.

    python benchmarks/crop_schedule.py                 # about 2 x 1.5 minutes on 2 CPU cores
    python benchmarks/crop_schedule.py --gpus 1 --model deeplabv3plus_resnet50 --size 512x1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from core.configs import AugmentConfig, DataSource, ScheduleConfig, TrainJobConfig
from core.schedule import scale_crop_sizes
from core.synth import write_synthetic_dataset
from jobs.train import run_training
from selftrain.cli import parse_size

PAPER_CROPS = [400, 480, 560, 640, 720, 800]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--size", default="128x256", help="HxW of the synthetic scenes")
    parser.add_argument("--n-train", type=int, default=48)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=13)
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--samples-per-epoch", type=int, default=64)
    parser.add_argument("--base-batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument(
        "--batch-growth",
        type=float,
        default=2.0,
        help="coarse2fine+ batch = base x (largest crop / crop) ** this (2: same pixels a step)",
    )
    parser.add_argument(
        "--crops",
        help="coarse2fine+ crop sizes, comma-separated (default: the paper's scaled to --size)",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (scenes stay)")
    parser.add_argument(
        "--kinds",
        default="constant,coarse2fine+",
        help="which runs (one kind alone prints no speedups, e.g. to sweep coarse2fine+)",
    )
    parser.add_argument("--gpus", type=int, default=0, help="GPUs for the one training worker")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each kind; fastest kept")
    parser.add_argument("--workdir", default=None, help="where data and runs go (default: temp)")
    args = parser.parse_args(argv)

    size = parse_size(args.size)
    crops = sorted(set(scale_crop_sizes(PAPER_CROPS, size)))
    if args.crops:
        crops = sorted({int(c) for c in args.crops.split(",")})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        write_synthetic_dataset(root / "scenes", args.n_train, "source", size, seed=0)
        write_synthetic_dataset(root / "scenes", args.n_val, "source", size, seed=1, split="val")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Tiny CPU epochs: collect each epoch's report promptly instead of every 2 s.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        runs: dict[str, list[dict]] = {kind: [] for kind in args.kinds.split(",")}
        # Alternating the two kinds spreads the noise of a shared machine over both; the fastest
        # of the repeats is reported.
        for _ in range(args.repeats):
            for kind in runs:
                runs[kind].append(_train_once(kind, args, root, crops))
        ray.shutdown()
    best = {kind: min(runs[kind], key=lambda r: r["wall_s"]) for kind in runs}
    speedups = {}
    if {"constant", "coarse2fine+"} <= set(best):
        constant, fast = best["constant"], best["coarse2fine+"]
        speedups = {
            "speedup_wall": round(constant["wall_s"] / fast["wall_s"], 2),
            "speedup_train": round(constant["train_s"] / fast["train_s"], 2),
            "speedup_train_cpu": round(constant["train_cpu_s"] / fast["train_cpu_s"], 2),
            "miou_gap": round(constant["val_miou"] - fast["val_miou"], 4),
        }
    print(
        json.dumps(
            {
                "machine": f"{_cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
                "device": "cuda" if args.gpus else "cpu",
                "model": args.model,
                "image_size": list(size),
                "images_per_run": args.epochs * args.samples_per_epoch,
                "repeats": args.repeats,
                "seed": args.seed,
                "warmup_epochs": args.warmup_epochs,
                "batch_growth": args.batch_growth,
                **best,
                **speedups,
            }
        )
    )
    return 0


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _train_once(kind: str, args: argparse.Namespace, root: Path, crops: list[int]) -> dict:
    config = TrainJobConfig(
        role="teacher",
        run_name=f"bench_{kind.replace('+', 'plus')}_{time.time_ns()}",
        storage_path=str(root / "runs"),
        model=args.model,
        labeled=DataSource(format="cityscapes", root=str(root / "scenes"), split="train"),
        val=DataSource(format="cityscapes", root=str(root / "scenes"), split="val"),
        val_every=args.epochs,
        samples_per_epoch=args.samples_per_epoch,
        schedule=ScheduleConfig(
            kind=kind,
            crop_sizes=crops,
            warmup_epochs=0 if kind == "constant" else args.warmup_epochs,
            base_batch_size=args.base_batch_size,
            batch_growth=args.batch_growth,
        ),
        augment=AugmentConfig(scale_min=0.75, scale_max=1.5),
        epochs=args.epochs,
        lr=args.lr,
        ohem=False,
        num_workers=1,
        cpus_per_worker=max(1, (os.cpu_count() or 2) - (1 if args.gpus else 0)),
        gpus_per_worker=args.gpus,
        max_failures=0,
        seed=args.seed,
    )
    start = time.perf_counter()
    summary = run_training(config)
    wall = time.perf_counter() - start
    history = summary.history
    return {
        "wall_s": round(wall, 2),
        "train_s": round(sum(row.seconds for row in history), 2),
        "train_cpu_s": round(sum(row.cpu_seconds for row in history), 2),
        "val_miou": round(summary.final.val_miou, 4),
        "crop_sizes": [row.crop_size for row in history],
        "steps": sum(-(-row.n_real // row.batch_size) for row in history),
    }


if __name__ == "__main__":
    sys.exit(main())
