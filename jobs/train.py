"""The training loop shared by jobs/teacher.py and jobs/student.py: DDP on Ray Train.

One TorchTrainer runs ``num_workers`` ranks (NCCL on GPUs, gloo on CPUs). Each epoch every rank
draws the same sample list (core.sampling), trains on its part at the crop and batch size the
schedule gives for that epoch, and the ranks validate together every ``val_every`` epochs.

What a run leaves in ``<storage_path>/<run_name>/``:

- ``epoch_NNNN/state.pt``: Ray Train checkpoints (core.checkpoint format with optimizer, lr
  schedule, sampler state and metric history), the best by val mIoU and the latest kept. A run
  restarted by Ray Train after a worker failure, or submitted again with the same run name,
  resumes from the latest one (with more ``epochs`` it trains on; with as many it just returns).
- ``last.pt`` and ``best.pt``: the latest and the best (by val mIoU; without a val set, the latest)
  model at a stable path, loadable with core.checkpoint.load_model (the label job, evaluate).
- ``metrics.jsonl``: one JSON line per epoch: epoch (0-based), phase, loss, lr, crop_size,
  batch_size, n_real, n_pseudo, images_per_s, seconds (wall), cpu_seconds (rank 0's process),
  val_miou (null when not validated).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from torch.nn.parallel import DistributedDataParallel

from core.checkpoint import load_checkpoint, save_checkpoint
from core.configs import DataSource, TrainJobConfig
from core.errors import ConfigError
from core.losses import build_loss
from core.models import build_model, convert_sync_batchnorm
from core.optim import build_optimizer, poly_lr
from core.sampling import Sample, rank_part
from core.training import (
    EpochPlan,
    EpochSamples,
    EpochStats,
    load_initial_weights,
    make_loader,
    open_training_data,
    train_one_epoch,
    validate,
)
from jobs.ray_entry import init_ray

STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
# The val_miou that Ray Train's reports carry for epochs without validation.
NOT_VALIDATED = -1.0


@dataclass(frozen=True)
class EpochEvent:
    """What a rank did in one epoch, handed to ``run_training``'s ``epoch_hook`` after training and
    before validation and checkpointing (tests use it to look inside the workers)."""

    rank: int
    world_size: int
    epoch: int
    plan: EpochPlan
    positions: list[int]
    samples: list[Sample]
    stats: EpochStats


EpochHook = Callable[[EpochEvent], None]


def run_dir(config: TrainJobConfig) -> Path:
    """``<storage_path>/<run_name>``, where Ray Train and this job keep the run's files."""
    return Path(config.storage_path).expanduser().resolve() / config.run_name


def run_training(config: TrainJobConfig, epoch_hook: EpochHook | None = None) -> dict:
    """Train (or resume) the run that ``config`` describes and return its summary.

    Args:
        config: The run.
        epoch_hook: Called on every rank after each epoch's training steps (see ``EpochEvent``).

    Returns:
        ``{"run_dir", "best_checkpoint", "last_checkpoint", "epochs_done", "best_val_miou",
        "final": last metrics row, "history": all rows}``.

    Raises:
        ConfigError, DataError, StoreError: The data cannot be used (checked before Ray starts).
        ray.train.TrainingFailedError: Training failed more often than ``max_failures`` allows.
    """
    if "://" in config.storage_path:
        raise ConfigError(
            f"storage_path {config.storage_path!r}: use a local or shared (NFS) folder; the "
            "stable best.pt / last.pt files are written with plain file I/O"
        )
    # Workers may run in another folder (a Ray job's working dir, another node).
    config = with_absolute_paths(config)
    # Fail here, with the real error, instead of in every worker and every retry.
    open_training_data(config)
    init_ray(config.ray_address)
    use_gpu = config.gpus_per_worker > 0
    resources = {"CPU": config.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = config.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker=train_worker,
        train_loop_config={"config": config.model_dump(mode="json"), "epoch_hook": epoch_hook},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=config.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=config.run_name,
            storage_path=str(run_dir(config).parent),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_miou", checkpoint_score_order="max"
            ),
        ),
    )
    trainer.fit()
    return summarize_run(run_dir(config))


def with_absolute_paths(config: TrainJobConfig) -> TrainJobConfig:
    """``config`` with its relative paths (storage, data, label stores, initial checkpoint) made
    absolute against the current folder."""

    def absolute(path: str | None) -> str | None:
        return None if path is None else str(Path(path).expanduser().resolve())

    def source(data: DataSource | None) -> DataSource | None:
        if data is None:
            return None
        update = {"root": absolute(data.root), "subset_list": absolute(data.subset_list)}
        return data.model_copy(update=update)

    return config.model_copy(
        update={
            "storage_path": absolute(config.storage_path),
            "labeled": source(config.labeled),
            "val": source(config.val),
            "pseudo": [p.model_copy(update={"store": absolute(p.store)}) for p in config.pseudo],
            "init_checkpoint": absolute(config.init_checkpoint),
        }
    )


def summarize_run(directory: str | Path) -> dict:
    """The summary ``run_training`` returns, read from a run folder's metrics.jsonl."""
    directory = Path(directory)
    metrics = directory / METRICS_FILE
    history = []
    if metrics.is_file():
        history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    scores = [row["val_miou"] for row in history if row["val_miou"] is not None]
    return {
        "run_dir": str(directory),
        "best_checkpoint": str(directory / "best.pt"),
        "last_checkpoint": str(directory / "last.pt"),
        "epochs_done": len(history),
        "best_val_miou": max(scores) if scores else None,
        "final": history[-1] if history else None,
        "history": history,
    }


def train_worker(loop_config: dict) -> None:
    """The per-rank training function that Ray Train runs."""
    config = TrainJobConfig.model_validate(loop_config["config"])
    epoch_hook: EpochHook | None = loop_config.get("epoch_hook")
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    # Same initial weights on every rank (DDP also broadcasts rank 0's at wrapping).
    torch.manual_seed(config.seed)

    data = open_training_data(config)
    model = build_model(config.model, data.label_space.num_classes, **config.model_options)
    if config.init_checkpoint:
        load_initial_weights(model, config.model, config.init_checkpoint, data.label_space)
    model.to(device)
    optimizer = build_optimizer(model, config.effective_lr(), config.momentum, config.weight_decay)
    lr_scheduler = poly_lr(optimizer, sum(plan.steps(world_size) for plan in data.plans))
    start_epoch, history, best_miou = 0, [], None

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(Path(directory) / STATE_FILE)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        data.sampler.load_state_dict(state["extra"]["sampler"])
        start_epoch = state["epoch"]
        history = state["extra"]["history"]
        best_miou = state["extra"]["best_val_miou"]

    trained = model
    if world_size > 1:
        if device.type == "cuda":
            model = convert_sync_batchnorm(model)
        trained = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loss_fn = build_loss(config.ohem, config.ohem_thresh, config.ohem_min_kept)

    for epoch in range(start_epoch, config.epochs):
        plan = data.plans[epoch]
        samples = data.sampler.samples(epoch, plan.n_real, plan.n_pseudo)
        part = rank_part(samples, rank, world_size)
        dataset = EpochSamples(
            part, data.labeled, data.pseudo, config.augment, plan.crop_size, config.seed, epoch
        )
        loader = make_loader(dataset, plan.batch_size, config.loader_workers)
        stats = train_one_epoch(
            trained, loader, loss_fn, optimizer, lr_scheduler, device, config.precision == "bf16"
        )
        if epoch_hook is not None:
            positions = [position for position, _ in part]
            samples_seen = [sample for _, sample in part]
            epoch_hook(EpochEvent(rank, world_size, epoch, plan, positions, samples_seen, stats))

        val_miou = None
        last_epoch = epoch == config.epochs - 1
        if data.val is not None and ((epoch + 1) % config.val_every == 0 or last_epoch):
            miou = validate(model, data.val, data.label_space, device, rank, world_size).miou()
            val_miou = None if math.isnan(miou) else miou
        row = _metrics_row(plan, stats, val_miou)
        history.append(row)
        is_best = val_miou is not None and (best_miou is None or val_miou > best_miou)
        if is_best:
            best_miou = val_miou
        # Ray ranks its checkpoints by val_miou and needs a number in every report (NaN or inf do
        # not survive its run snapshot): -1 ranks an epoch without validation below every mIoU.
        reported = {**row, "val_miou": NOT_VALIDATED if val_miou is None else val_miou}
        if rank != 0:
            ray.train.report(reported)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            state_path = save_checkpoint(
                Path(tmp) / STATE_FILE,
                model,
                config.model,
                config.model_options,
                data.label_space,
                epoch + 1,
                optimizer,
                lr_scheduler,
                config=config.model_dump(mode="json"),
                extra={
                    "history": history,
                    "best_val_miou": best_miou,
                    "sampler": data.sampler.state_dict(),
                    "role": config.role,
                },
            )
            _write_stable_files(run_dir(config), state_path, history, is_best or data.val is None)
            ray.train.report(
                reported,
                checkpoint=Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"epoch_{epoch + 1:04d}",
            )


def _metrics_row(plan: EpochPlan, stats: EpochStats, val_miou: float | None) -> dict:
    return {
        "epoch": plan.epoch,
        "phase": plan.phase,
        "loss": stats.loss,
        "lr": stats.lr,
        "crop_size": plan.crop_size,
        "batch_size": plan.batch_size,
        "n_real": plan.n_real,
        "n_pseudo": plan.n_pseudo,
        "images_per_s": stats.images_per_s,
        "seconds": stats.seconds,
        "cpu_seconds": stats.cpu_seconds,
        "val_miou": val_miou,
    }


def _write_stable_files(directory: Path, state: Path, history: list[dict], is_best: bool) -> None:
    """last.pt (and best.pt) and metrics.jsonl, each replaced atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_copy(state, directory / "last.pt")
    if is_best:
        _atomic_copy(state, directory / "best.pt")
    # Rewritten whole from the checkpointed history, so an epoch redone after a failure is never
    # listed twice.
    lines = "".join(json.dumps(row) + "\n" for row in history)
    tmp = directory / f".{METRICS_FILE}.tmp"
    tmp.write_text(lines)
    os.replace(tmp, directory / METRICS_FILE)


def _atomic_copy(source: Path, destination: Path) -> None:
    tmp = destination.with_name(f".{destination.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, destination)
