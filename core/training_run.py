"""One rank's training run from start (or resume) to its last epoch, without Ray.

``TrainingRun`` holds what a rank trains (data, model, optimizer, lr schedule) and what it carries
from epoch to epoch (metric history, best mIoU); jobs/train.py drives it from Ray Train's worker
function and hands its checkpoints to Ray. Everything here also runs in a plain process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.checkpoint import save_checkpoint
from core.configs import TrainJobConfig
from core.losses import build_loss
from core.models import build_model, convert_sync_batchnorm
from core.online_data import UnlabeledViews, make_views_loader
from core.online_train import OnlineParts, online_metrics, online_parts, train_online_epoch
from core.optim import build_optimizer, poly_lr
from core.runfiles import MetricsRow, RunFiles
from core.sampling import Sample, rank_part
from core.training import (
    EpochPlan,
    EpochSamples,
    EpochStats,
    TrainingData,
    load_initial_weights,
    make_loader,
    open_training_data,
    train_one_epoch,
    validate,
)


@dataclass(frozen=True)
class EpochResult:
    """What a rank did in one epoch.

    Attributes:
        plan: The epoch's plan.
        part: ``(position in the epoch list, sample)`` pairs this rank trained on.
        stats: What the epoch's training measured.
        row: The epoch's metrics (validation included).
        is_best: Whether this epoch's model is the run's best so far.
    """

    plan: EpochPlan
    part: list[tuple[int, Sample]]
    stats: EpochStats
    row: MetricsRow
    is_best: bool


@dataclass
class TrainingRun:
    """A training run on one rank.

    Build it with ``TrainingRun.start``; ``restore`` a checkpoint to resume, then call
    ``train_epoch`` for every epoch of ``remaining_epochs()`` and ``save`` on rank 0.
    """

    config: TrainJobConfig
    data: TrainingData
    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    rank: int = 0
    world_size: int = 1
    start_epoch: int = 0
    history: list[MetricsRow] = field(default_factory=list)
    best_val_miou: float | None = None
    online: OnlineParts | None = None

    @classmethod
    def start(
        cls, config: TrainJobConfig, device: torch.device, rank: int = 0, world_size: int = 1
    ) -> TrainingRun:
        """Open the data, build the model (from ``init_checkpoint`` when set), the optimizer and
        the poly lr schedule over every step of the run."""
        # Same initial weights on every rank (DDP also broadcasts rank 0's at wrapping).
        torch.manual_seed(config.seed)
        data = open_training_data(config)
        model = build_model(config.model, data.label_space.num_classes, **config.model_options)
        if config.init_checkpoint:
            load_initial_weights(model, config.model, config.init_checkpoint, data.label_space)
        model.to(device)
        optimizer = build_optimizer(
            model, config.effective_lr(), config.momentum, config.weight_decay
        )
        lr_scheduler = lr_schedule(config, data.plans, optimizer, world_size)
        run = cls(config, data, model, optimizer, lr_scheduler, device, rank, world_size)
        if config.online_method and data.pool is not None:
            run.online = online_parts(config, model, data.label_space)
        return run

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint that ``save`` wrote (core.checkpoint format)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.data.sampler.load_state_dict(state["extra"]["sampler"])
        self.start_epoch = state["epoch"]
        self.history = [MetricsRow.model_validate(row) for row in state["extra"]["history"]]
        self.best_val_miou = state["extra"]["best_val_miou"]
        if self.online is not None:
            online = state["extra"]["online"]
            self.online.teacher.load_state_dict(online["teacher"])
            self.online.thresholds.load_state_dict(online["thresholds"])

    def remaining_epochs(self) -> range:
        return range(self.start_epoch, self.config.epochs)

    def trained_module(self) -> nn.Module:
        """The module to train: the model, wrapped in DistributedDataParallel over several ranks
        (with synchronized BatchNorm on GPUs), and compiled when the config asks."""
        module = self.model
        if self.world_size > 1:
            if self.device.type == "cuda":
                self.model = convert_sync_batchnorm(self.model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(self.model, device_ids=ids)
        # self.model stays the plain module: checkpoints and validation use its weights.
        return torch.compile(module) if self.config.compile else module

    def train_epoch(self, trained: nn.Module, epoch: int) -> EpochResult:
        """Train this rank's part of ``epoch``, validate when due, and record the epoch."""
        config, data = self.config, self.data
        plan = data.plans[epoch]
        samples = data.sampler.samples(epoch, plan.n_real, plan.n_pseudo)
        if plan.online:
            return self._train_online_epoch(trained, plan, samples)
        part = rank_part(samples, self.rank, self.world_size)
        loader = make_loader(self._samples(part, plan), plan.batch_size, config.loader_workers)
        bf16 = config.precision == "bf16"
        stats = train_one_epoch(
            trained, loader, self._loss(), self.optimizer, self.lr_scheduler, self.device, bf16
        )
        row = metrics_row(plan, stats, self._validate(epoch))
        is_best = self._record(row)
        return EpochResult(plan, part, stats, row, is_best)

    def _samples(self, part: list[tuple[int, Sample]], plan: EpochPlan) -> EpochSamples:
        config, data = self.config, self.data
        paste = config.copy_paste.probability if config.copy_paste is not None else 0.0
        return EpochSamples(
            part,
            data.labeled,
            data.pseudo,
            config.augment,
            plan.crop_size,
            config.seed,
            plan.epoch,
            config.pseudo_augment,
            config.soft_labels,
            data.bank,
            paste,
            config.labeled_cutmix,
        )

    def _loss(self) -> nn.Module:
        config = self.config
        return build_loss(
            config.ohem, config.ohem_thresh, config.ohem_min_kept, soft=config.soft_labels
        )

    def _train_online_epoch(
        self, trained: nn.Module, plan: EpochPlan, samples: list[Sample]
    ) -> EpochResult:
        """An online epoch: the list's real samples in one loader, its unlabeled ones in another
        (each rank its own part of each), a step taking a batch of each."""
        config, data = self.config, self.data
        assert self.online is not None and data.pool is not None  # set up by start
        # The feature perturbation's dropout draws from torch's generator: seeded per epoch and
        # rank, a resumed run draws what an uninterrupted one would.
        torch.manual_seed(
            int(np.random.SeedSequence([config.seed, plan.epoch, self.rank]).generate_state(1)[0])
        )
        positions = list(range(len(samples)))
        real = [(p, s) for p, s in zip(positions, samples, strict=True) if s.is_real]
        unlabeled = [(p, s) for p, s in zip(positions, samples, strict=True) if not s.is_real]
        real_part = _rank_slice(real, self.rank, self.world_size)
        unlabeled_part = _rank_slice(unlabeled, self.rank, self.world_size)
        labeled_loader = make_loader(
            self._samples(real_part, plan), plan.batch_size, config.loader_workers
        )
        paste = config.copy_paste.probability if config.copy_paste is not None else 0.0
        views = UnlabeledViews(
            unlabeled_part,
            data.pool,
            config.augment,
            config.online,
            plan.crop_size,
            config.seed,
            plan.epoch,
            data.bank,
            paste,
        )
        views_loader = make_views_loader(views, plan.unlabeled_batch_size, config.loader_workers)
        stats, pseudo = train_online_epoch(
            trained,
            self.model,
            labeled_loader,
            views_loader,
            self.online,
            self._loss(),
            self.optimizer,
            self.lr_scheduler,
            self.device,
            config.precision == "bf16",
        )
        row = metrics_row(plan, stats, self._validate(plan.epoch))
        assert data.stats is not None  # online runs read the labeled statistics
        names = list(data.label_space.names)
        row = row.model_copy(
            update=online_metrics(self.online, pseudo, data.stats.class_pixels, names)
        )
        is_best = self._record(row)
        return EpochResult(plan, real_part + unlabeled_part, stats, row, is_best)

    def _validate(self, epoch: int) -> float | None:
        val = self.data.val
        last_epoch = epoch == self.config.epochs - 1
        if val is None or not ((epoch + 1) % self.config.val_every == 0 or last_epoch):
            return None
        matrix = validate(
            self.model, val, self.data.label_space, self.device, self.rank, self.world_size
        )
        miou = matrix.miou()
        return None if math.isnan(miou) else miou

    def _record(self, row: MetricsRow) -> bool:
        self.history.append(row)
        if row.val_miou is None:
            # Without a validation set every epoch's model is the best there is.
            return self.data.val is None
        if self.best_val_miou is None or row.val_miou > self.best_val_miou:
            self.best_val_miou = row.val_miou
            return True
        return False

    def save(self, state_path: Path, result: EpochResult) -> Path:
        """Write the checkpoint to resume from after ``result``'s epoch to ``state_path`` and
        publish the run folder's stable files (core.runfiles); returns ``state_path``."""
        config = self.config
        save_checkpoint(
            state_path,
            self.model,
            config.model,
            config.model_options,
            self.data.label_space,
            result.plan.epoch + 1,
            self.optimizer,
            self.lr_scheduler,
            config=config.model_dump(mode="json"),
            extra={
                "history": [row.model_dump() for row in self.history],
                "best_val_miou": self.best_val_miou,
                "sampler": self.data.sampler.state_dict(),
                "role": config.role,
                "online": None if self.online is None else self.online.state_dict(),
            },
        )
        files = RunFiles.of(config.storage_path, config.run_name)
        files.write(state_path, self.history, result.is_best)
        if self.online is not None:
            save_checkpoint(
                files.ema,
                self.online.teacher.model,
                config.model,
                config.model_options,
                self.data.label_space,
                result.plan.epoch + 1,
                config=config.model_dump(mode="json"),
            )
        return state_path


def _rank_slice(
    pairs: list[tuple[int, Sample]], rank: int, world_size: int
) -> list[tuple[int, Sample]]:
    """Rank ``rank``'s part of ``(position, sample)`` pairs (core.sampling.rank_part: every rank
    the same count, wrapping around); a wrapped repeat gets a position of its own."""
    if not pairs:
        return []
    span = max(position for position, _ in pairs) + 1
    part = rank_part([sample for _, sample in pairs], rank, world_size)
    return [(pairs[p % len(pairs)][0] + span * (p // len(pairs)), s) for p, s in part]


def lr_schedule(
    config: TrainJobConfig,
    plans: list[EpochPlan],
    optimizer: torch.optim.Optimizer,
    world_size: int,
) -> torch.optim.lr_scheduler.LRScheduler:
    """Poly decay over every step of the run; in mode ``pretrain_finetune`` it restarts at
    ``finetune_lr`` on the first finetune step (paper: 0.02 from scratch, 0.002 finetuning)."""
    steps = [plan.steps(world_size) for plan in plans]
    restarts = []
    if config.mode == "pretrain_finetune":
        restart_at = sum(steps[: config.pretrain_epochs])
        restarts = [(restart_at, config.finetune_lr / config.effective_lr())]
    return poly_lr(optimizer, sum(steps), restarts=restarts)


def metrics_row(plan: EpochPlan, stats: EpochStats, val_miou: float | None) -> MetricsRow:
    """The metrics of an epoch, from its plan and what its training measured."""
    return MetricsRow(
        epoch=plan.epoch,
        phase=plan.phase,
        loss=stats.loss,
        lr=stats.lr,
        crop_size=plan.crop_size,
        batch_size=plan.batch_size,
        n_real=plan.n_real,
        n_pseudo=plan.n_pseudo,
        steps=stats.steps,
        images_per_s=stats.images_per_s,
        seconds=stats.seconds,
        cpu_seconds=stats.cpu_seconds,
        val_miou=val_miou,
    )
