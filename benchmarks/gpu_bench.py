"""The GPU figures of the label job and of student training (run through benchmarks/gpu.sh).

    bash benchmarks/gpu.sh            # one GPU node: under 8 minutes
    bash benchmarks/gpu.sh --smoke    # tiny sizes on CPU (CI): every step runs, no figure counts

Three measurements, one JSON line:

1. ``bare``: DeepLabV3+ ResNet-50, output stride 8, on decoded uint8 images (1024x2048), bf16
   autocast, channels-last, batches uploaded from pinned memory as the label job does: the model
   alone. Its rate against the model's FLOPs (counted by torch's FlopCounterMode) gives the
   fraction of the accelerator's bf16 peak (``--peak-tflops``, or a table of known GPUs).
2. ``label``: the whole label job (jobs/label.py, staged layout: decode tasks, one teacher actor
   per GPU, write tasks) on the same model and images written as PNG: images/s, and its ratio to
   the bare loop.
3. ``train``: a student (real synthetic scenes + the label job's pseudo labels, 1:1) trained with
   Ray Train at 768-px crops, bf16, one worker per GPU (NCCL; SyncBatchNorm once there are two or
   more GPUs, DDP does not exist with one): crops per second in its last epoch.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import ray
import torch
from label_throughput import cpu_model, write_images
from torch.utils.flop_counter import FlopCounterMode

from core.checkpoint import load_model, save_checkpoint
from core.configs import DataSource, LabelJobConfig, ScheduleConfig, TrainJobConfig
from core.inference import predict_batch
from core.io import read_image
from core.labels import CITYSCAPES
from core.models import build_model
from core.runfiles import RunFiles
from core.synth import write_synthetic_dataset
from jobs.label import run as run_label_job
from jobs.ray_entry import init_ray
from jobs.train import run_training
from selftrain.cli import parse_size

MODEL = "deeplabv3plus_resnet50"
MODEL_OPTIONS = {"output_stride": 8}
# Dense bf16 tensor-core peaks (TFLOP/s) of known accelerators, by a part of their CUDA name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


@dataclass(frozen=True)
class Sizes:
    image: tuple[int, int]
    images: int
    batch: int
    crop: int
    train_batch: int
    train_scenes: int
    train_samples: int
    train_epochs: int
    images_per_shard: int


FULL = Sizes((1024, 2048), 192, 8, 768, 8, 32, 128, 2, 16)
SMOKE = Sizes((64, 128), 8, 2, 48, 2, 4, 8, 1, 4)


def peak_tflops(device: str, given: float | None) -> float | None:
    if given is not None:
        return given
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((peak for part, peak in BF16_PEAK_TFLOPS.items() if part in name), None)


def model_flops(model: torch.nn.Module, size: tuple[int, int], device: str) -> float:
    """FLOPs of one forward pass on one image of ``size`` (multiply-adds count two)."""
    image = torch.zeros(1, 3, *size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(image)
    return float(counter.get_total_flops())


def bare_loop(checkpoint: Path, paths: list[Path], sizes: Sizes, device: str) -> dict:
    """The model alone on decoded images, as the teacher actors run it."""
    model, _, _ = load_model(checkpoint, device)
    images = np.stack([read_image(p) for p in paths])
    flops = model_flops(model, sizes.image, device)

    def one_pass() -> None:
        for first in range(0, len(images), sizes.batch):
            batch = torch.from_numpy(images[first : first + sizes.batch])
            if device == "cuda":
                batch = batch.pin_memory()
            predict_batch(model, batch, device=device, bf16=True, channels_last=True)
        if device == "cuda":
            torch.cuda.synchronize()

    one_pass()  # warm-up: cuDNN picks its kernels
    start = time.perf_counter()
    one_pass()
    seconds = time.perf_counter() - start
    return {
        "images_per_s": round(len(images) / seconds, 2),
        "gflops_per_image": round(flops / 1e9, 1),
        "achieved_tflops": round(flops * len(images) / seconds / 1e12, 2),
    }


def label_pipeline(checkpoint: Path, root: Path, sizes: Sizes, gpus: int) -> dict:
    """The label job, staged, one teacher actor per GPU."""
    config = LabelJobConfig(
        teacher_checkpoint=str(checkpoint),
        source=DataSource(format="folder", root=str(root / "images")),
        store=str(root / "labels.zarr"),
        layout="staged",
        batch_size=sizes.batch,
        num_actors=max(1, gpus),
        gpus_per_actor=1.0 if gpus else 0.0,
        cpus_per_actor=1.0,
        cpus_per_task=1.0,
        precision="bf16",
        channels_last=True,
        images_per_shard=sizes.images_per_shard,
    )
    result = run_label_job(config, progress_bar=False)
    assert result["n_done"] == sizes.images, result
    # After the first shard's results: the rate once the actors are up.
    steady_s = result["seconds"] - result["first_result_s"]
    return {
        "images_per_s": round(sizes.images / result["seconds"], 2),
        "steady_images_per_s": round((sizes.images - sizes.images_per_shard) / steady_s, 2),
        "first_result_s": result["first_result_s"],
        "model_s": result["model_s"],
        "store": config.store,
    }


def train_student(root: Path, store: str, sizes: Sizes, gpus: int) -> dict:
    """A student on synthetic scenes + the label job's pseudo labels, one worker per GPU."""
    write_synthetic_dataset(root / "scenes", sizes.train_scenes, "source", sizes.image, seed=0)
    config = TrainJobConfig(
        role="student",
        run_name="student",
        storage_path=str(root / "runs"),
        model=MODEL,
        model_options=MODEL_OPTIONS,
        labeled=DataSource(format="cityscapes", root=str(root / "scenes"), split="train"),
        pseudo=[store],
        pseudo_per_real=1.0,
        epochs=sizes.train_epochs,
        samples_per_epoch=sizes.train_samples,
        schedule=ScheduleConfig(
            kind="constant", crop_sizes=[sizes.crop], base_batch_size=sizes.train_batch
        ),
        num_workers=max(1, gpus),
        gpus_per_worker=1.0 if gpus else 0.0,
        cpus_per_worker=max(1, (os.cpu_count() or 2) // max(1, gpus) - 1) if gpus else 1,
        loader_workers=4 if gpus else 0,
        precision="bf16",
        max_failures=0,
    )
    run_training(config)
    rows = RunFiles.of(config.storage_path, config.run_name).read_metrics()
    return {
        "crop": sizes.crop,
        "batch_per_worker": sizes.train_batch,
        "workers": config.num_workers,
        "backend": "nccl" if gpus else "gloo",
        "sync_batchnorm": gpus >= 2,
        "crops_per_s": round(rows[-1].images_per_s, 2),
        "epoch_s": [round(row.seconds, 2) for row in rows],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (CI)")
    parser.add_argument("--size", help="image size HxW (default 1024x2048; smoke 64x128)")
    parser.add_argument("--peak-tflops", type=float, help="the accelerator's dense bf16 peak")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.size:
        sizes = replace(sizes, image=parse_size(args.size))
    gpus = 0 if args.smoke else torch.cuda.device_count()
    if not args.smoke and gpus == 0:
        parser.error("no GPU here; use --smoke for the CPU run")
    device = "cuda" if gpus else "cpu"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        model = build_model(MODEL, CITYSCAPES.num_classes, **MODEL_OPTIONS)
        checkpoint = save_checkpoint(
            root / "teacher.pt", model, MODEL, MODEL_OPTIONS, CITYSCAPES, epoch=0
        )
        paths = write_images(root / "images", sizes.images, sizes.image)
        bare = bare_loop(checkpoint, paths, sizes, device)
        init_ray()
        try:
            label = label_pipeline(checkpoint, root, sizes, gpus)
            train = train_student(root, label.pop("store"), sizes, gpus)
        finally:
            ray.shutdown()
    peak = peak_tflops(device, args.peak_tflops)
    label_tflops = bare["gflops_per_image"] * label["images_per_s"] / 1000
    print(
        json.dumps(
            {
                "benchmark": "gpu",
                "smoke": args.smoke,
                "model": f"{MODEL} OS{MODEL_OPTIONS['output_stride']}",
                "size": list(sizes.image),
                "images": sizes.images,
                "batch": sizes.batch,
                "precision": "bf16",
                "bare": bare,
                "label": label,
                "label_to_bare": round(label["images_per_s"] / bare["images_per_s"], 3),
                "label_steady_to_bare": round(
                    label["steady_images_per_s"] / bare["images_per_s"], 3
                ),
                "bf16_peak_tflops": peak,
                "fraction_of_peak": (
                    round(bare["achieved_tflops"] / peak, 3) if peak is not None else None
                ),
                "label_achieved_tflops": round(label_tflops, 2),
                "label_fraction_of_peak": (
                    round(label_tflops / peak, 3) if peak is not None else None
                ),
                "train": train,
                "wall_s": round(time.perf_counter() - start, 1),
                "machine": {
                    "device": torch.cuda.get_device_name() if gpus else cpu_model(),
                    "gpus": gpus,
                    "cpus": os.cpu_count(),
                    "torch": torch.__version__,
                    "ray": ray.__version__,
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
