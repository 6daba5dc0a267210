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

    python benchmarks/label_throughput.py --emulated-accelerator-ms 50 --accelerators 2

measures instead how busy the label job keeps accelerators that this machine does not have: the
teacher actors' model call is replaced, in this benchmark only, by a fixed wait of T ms per batch
(labels made cheaply from the pixels, so that centroids and writes cost what they would), and
each actor holds one unit of a custom resource ``emulated_accelerator`` as it would hold a GPU.
Both layouts of the label job run (fused: each actor reads, predicts and writes; staged: CPU tasks
read and write around actors that only predict), and ``accelerator_busy`` is the actors' time in
the model call over the run's wall time times the accelerators.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from functools import partial
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
from jobs.label import ModelStep, run
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


class EmulatedAccelerator:
    """A model step that waits ``seconds`` per batch, as a model on an accelerator would while the
    CPU waits, and returns labels made from the pixels (8 classes from the red channel: regions
    like a model's, so centroids and writes cost what they would). Each call's start and end
    (wall clock) go into ``<log_dir>/<pid>.txt``."""

    def __init__(self, seconds: float, log_dir: str) -> None:
        self.seconds = seconds
        self.log = Path(log_dir) / f"{os.getpid()}.txt"

    def __call__(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        start = time.time()
        time.sleep(self.seconds)
        outputs = [(image[..., 0] // 32, image[..., 1].copy()) for image in images]
        with self.log.open("a") as f:
            f.write(f"{start} {time.time()}\n")
        return outputs


def busy_window(log_dir: Path) -> tuple[float, float]:
    """The accelerators' time in model calls, and the window from the first call's start to the
    last call's end (seconds), from the calls `EmulatedAccelerator` logged."""
    calls = np.array(
        [[float(x) for x in line.split()] for f in log_dir.glob("*.txt") for line in f.open()]
    )
    return float((calls[:, 1] - calls[:, 0]).sum()), float(calls[:, 1].max() - calls[:, 0].min())


def emulated_runs(args: argparse.Namespace, root: Path, checkpoint: Path) -> dict:
    """Both layouts with the model call emulated; the best ``accelerator_busy`` of each.

    ``accelerator_busy`` is the accelerators' time in the model over their working window (from
    the first model call's start to the last one's end, times the accelerators): how well the
    pipeline feeds them once they run. ``accelerator_busy_whole_run`` divides by the run's whole
    wall time instead, the actors' start-up included (which a long run amortizes).
    """
    layouts: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for layout in ("fused", "staged"):
            log_dir = root / f"calls_{layout}{repeat}"
            log_dir.mkdir()
            step = ModelStep(
                partial(EmulatedAccelerator, args.emulated_accelerator_ms / 1000, str(log_dir)),
                resources={"emulated_accelerator": 1},
            )
            config = LabelJobConfig(
                teacher_checkpoint=str(checkpoint),
                source=DataSource(format="folder", root=str(root / "images")),
                store=str(root / f"{layout}{repeat}.zarr"),
                batch_size=args.batch_size,
                layout=layout,
                num_actors=args.accelerators,
                # Fused actors do the CPU work themselves; staged ones only wait on the model.
                cpus_per_actor=args.cpus_per_actor if layout == "fused" else 0.05,
                cpus_per_task=args.cpus_per_task,
                images_per_shard=args.images_per_shard,
            )
            start = time.perf_counter()
            result = run(config, progress_bar=False, step=step)
            wall = time.perf_counter() - start
            assert result["n_done"] == args.n, result
            busy_s, window_s = busy_window(log_dir)
            figures = {
                "accelerator_busy": round(busy_s / (window_s * args.accelerators), 3),
                "accelerator_busy_whole_run": round(busy_s / (wall * args.accelerators), 3),
                "window_s": round(window_s, 2),
                "images_per_s": round(args.n / wall, 2),
                "wall_s": round(wall, 2),
                "first_result_s": result["first_result_s"],
                "model_s": result["model_s"],
            }
            best = layouts.get(layout)
            if best is None or figures["accelerator_busy"] > best["accelerator_busy"]:
                layouts[layout] = figures
    # What the accelerators could do if they never waited: batches x T over the accelerators.
    batches = -(-args.n // args.batch_size)
    ideal_s = batches * args.emulated_accelerator_ms / 1000 / args.accelerators
    return {"layouts": layouts, "ideal_wall_s": round(ideal_s, 2)}


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
    parser.add_argument(
        "--emulated-accelerator-ms",
        type=float,
        metavar="T",
        help="replace the model call by a wait of T ms per batch on emulated accelerators",
    )
    parser.add_argument("--accelerators", type=int, default=2, help="emulated accelerators")
    parser.add_argument("--cpus-per-task", type=float, default=0.5, help="staged read/write tasks")
    parser.add_argument("--images-per-shard", type=int, default=64)
    args = parser.parse_args()
    size = parse_size(args.size)
    if args.emulated_accelerator_ms is not None:
        print(json.dumps(emulated(args, size)))
        return

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
                images_per_shard=args.images_per_shard,
            )
            start = time.perf_counter()
            result = run(config, progress_bar=False)
            pipeline_s = time.perf_counter() - start
            assert result["n_done"] == args.n, result
            pipeline_rates.append(args.n / pipeline_s)
            # The rate after the first result: what the pipeline sustains once its actors are up.
            steady_s = pipeline_s - result["first_result_s"]
            # (The first result arrives when the first shard is written.)
            steady_rates.append((args.n - args.images_per_shard) / max(1e-9, steady_s))
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
                "images_per_shard": args.images_per_shard,
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


def emulated(args: argparse.Namespace, size: tuple[int, int]) -> dict:
    """The JSON line of an emulated-accelerator run."""
    with tempfile.TemporaryDirectory(prefix="label-bench-") as tmp:
        root = Path(tmp)
        model = build_model(args.model, CITYSCAPES_TRAIN_IDS.num_classes)
        checkpoint = save_checkpoint(
            root / "teacher.pt", model, args.model, {}, CITYSCAPES_TRAIN_IDS, epoch=0
        )
        write_images(root / "images", args.n, size)
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            resources={"emulated_accelerator": args.accelerators},
            include_dashboard=False,
        )
        try:
            result = emulated_runs(args, root, checkpoint)
        finally:
            ray.shutdown()
    return {
        "benchmark": "label_throughput_emulated",
        "n_images": args.n,
        "size": list(size),
        "emulated_accelerator_ms": args.emulated_accelerator_ms,
        "accelerators": args.accelerators,
        "batch_size": args.batch_size,
        "images_per_shard": args.images_per_shard,
        "cpus_per_actor_fused": args.cpus_per_actor,
        "cpus_per_task_staged": args.cpus_per_task,
        "repeats": args.repeats,
        **result,
        "accelerator_busy": {k: v["accelerator_busy"] for k, v in result["layouts"].items()},
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "ray": ray.__version__,
        },
    }


if __name__ == "__main__":
    main()
