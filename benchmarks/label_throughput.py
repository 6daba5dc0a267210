"""Label job throughput: the full pipeline against a bare loop, on the same images and model.

    python benchmarks/label_throughput.py --n 256 --size 256x512

Both label the same N synthetic images with the same randomly initialized model:

- bare: one process reads each image and runs core.inference.predict_batch on batches of
  same-size images (torch uses every core). No Ray, no store.
- pipeline: jobs/label.py's run() into a fresh store: Ray Data streams one row per shard of the
  store to the teacher actors, which decode, predict, find centroids and write labels,
  confidence and centroids into Zarr. Timed from the call to run() to its return, actor
  start-up included; the local Ray instance itself is started before (its start-up is
  reported apart).

The two alternate ``--repeats`` times and the best rate of each counts (a shared machine is noisy).
Prints one JSON line with both rates (images/s) and their ratio, plus the machine.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import ray
import torch

from core.checkpoint import load_model, save_checkpoint
from core.configs import DataSource, LabelJobConfig
from core.inference import predict_batch
from core.io import read_image, write_image
from core.labels import CITYSCAPES_TRAIN_IDS
from core.models import build_model
from jobs.label import run
from selftrain.cli import parse_size


def write_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Smooth random color fields (regions, like scenes, not noise), written as PNG."""
    rng = np.random.default_rng(seed)
    height, width = size
    paths = []
    for k in range(n):
        coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        paths.append(write_image(folder / f"{k:05d}.png", image))
    return paths


def bare_loop(checkpoint: Path, paths: list[Path], batch_size: int) -> float:
    """Images per second of decode + forward in one process."""
    model, _, _ = load_model(checkpoint)
    predict_batch(model, np.stack([read_image(paths[0])]))  # warm-up
    start = time.perf_counter()
    for first in range(0, len(paths), batch_size):
        images = np.stack([read_image(p) for p in paths[first : first + batch_size]])
        predict_batch(model, images)
    return len(paths) / (time.perf_counter() - start)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="number of images")
    parser.add_argument("--size", default="256x512", help="image size HxW")
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-actors", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs of each")
    args = parser.parse_args()
    size = parse_size(args.size)

    with tempfile.TemporaryDirectory(prefix="label-bench-") as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        model = build_model(args.model, CITYSCAPES_TRAIN_IDS.num_classes)
        checkpoint = save_checkpoint(
            root / "teacher.pt", model, args.model, {}, CITYSCAPES_TRAIN_IDS, epoch=0
        )
        paths = write_images(root / "images", args.n, size)

        torch_threads = torch.get_num_threads()
        start = time.perf_counter()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
        ray_init_s = time.perf_counter() - start
        bare_rates, pipeline_rates, steady_rates, first_result = [], [], [], []
        # Alternate the two, so that a burst of load elsewhere on the machine hits both alike.
        for repeat in range(args.repeats):
            bare_rates.append(bare_loop(checkpoint, paths, args.batch_size))
            config = LabelJobConfig(
                teacher_checkpoint=str(checkpoint),
                source=DataSource(format="folder", root=str(root / "images")),
                store=str(root / f"labels{repeat}.zarr"),
                batch_size=args.batch_size,
                num_actors=args.num_actors,
                cpus_per_actor=args.cpus_per_actor,
            )
            start = time.perf_counter()
            result = run(config, progress_bar=False)
            pipeline_s = time.perf_counter() - start
            assert result["n_done"] == args.n, result
            pipeline_rates.append(args.n / pipeline_s)
            # The rate after the first result: what the pipeline sustains once its actors are up.
            steady_s = pipeline_s - result["first_result_s"]
            steady_rates.append((args.n - args.batch_size) / max(1e-9, steady_s))
            first_result.append(result["first_result_s"])
        ray.shutdown()

    bare, pipeline, steady = max(bare_rates), max(pipeline_rates), max(steady_rates)
    print(
        json.dumps(
            {
                "benchmark": "label_throughput",
                "n_images": args.n,
                "size": list(size),
                "model": args.model,
                "batch_size": args.batch_size,
                "num_actors": args.num_actors,
                "cpus_per_actor": args.cpus_per_actor,
                "repeats": args.repeats,
                "bare_images_per_s": round(bare, 2),
                "pipeline_images_per_s": round(pipeline, 2),
                "ratio": round(pipeline / bare, 3),
                "pipeline_steady_images_per_s": round(steady, 2),
                "steady_ratio": round(steady / bare, 3),
                "pipeline_first_result_s": min(first_result),
                "all_bare_images_per_s": [round(r, 2) for r in bare_rates],
                "all_pipeline_images_per_s": [round(r, 2) for r in pipeline_rates],
                "ray_init_s": round(ray_init_s, 2),
                "machine": {
                    "cpus": os.cpu_count(),
                    "cpu": cpu_model(),
                    "torch_threads_bare": torch_threads,
                    "load_average_1m": round(os.getloadavg()[0], 2),
                    "torch": torch.__version__,
                    "ray": ray.__version__,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
