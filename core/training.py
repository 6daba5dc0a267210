"""The pure pieces of teacher and student training: the plan of every epoch, the epoch's samples as
a torch Dataset that crops and augments them, one epoch of SGD, and validation.

Modes (``TrainJobConfig.mode``):

- ``joint`` (default): every epoch mixes real and pseudo samples, ``pseudo_per_real`` pseudo
  samples per real one (see ``plan_epochs``).
- ``pretrain_finetune``: the first ``pretrain_epochs`` epochs on pseudo labels only, the rest on
  real labels only.
- ``finetune``: as ``joint``, starting from ``init_checkpoint`` with lr 0.002 by default; when the
  checkpoint's classes differ from the data's, its classifier is re-initialized
  (``load_initial_weights``). Any mode may start from ``init_checkpoint``, e.g. a student from its
  teacher.

jobs/train.py runs these on Ray Train; nothing here knows about Ray. Distributed runs are seen only
through torch.distributed (losses and confusion matrices are summed over ranks when it is
initialized), so every function also works in a single plain process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.checkpoint import load_checkpoint
from core.configs import AugmentConfig, StrongAugmentConfig, TrainJobConfig
from core.datasets import SegmentationDataset, open_source
from core.errors import CheckpointError, ConfigError, DataError
from core.evaluate import evaluate
from core.labels import LabelSpace
from core.metrics import ConfusionMatrix
from core.mixing import (
    SegmentBank,
    cutmix_box,
    mix_with_partner,
    override,
    paste,
    rare_classes,
)
from core.models import reset_head
from core.online_data import UnlabeledPool
from core.pseudo import (
    LabeledStatistics,
    PseudoLabels,
    class_thresholds,
    labeled_statistics,
    underpredicted_classes,
)
from core.sampling import REAL, EpochSampler, Sample, sample_rng, split_counts
from core.schedule import from_config
from core.transforms import (
    augment_around_point,
    build_strong_transform,
    build_train_transform,
    normalize_batch,
    soft_target,
    to_tensors,
)


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch trains on, fixed before training starts.

    Attributes:
        epoch: 0-based epoch index.
        crop_size: Side of the square crops (from the crop schedule).
        batch_size: Samples per step on each rank (from the crop schedule).
        n_real: Real samples in the epoch's list.
        n_pseudo: Pseudo samples in the epoch's list.
        phase: ``"joint"``, or ``"pretrain"`` / ``"finetune"`` in mode ``pretrain_finetune``.
        unlabeled_batch_size: Online students: unlabeled samples per step on each rank beside
            ``batch_size`` real ones (``n_pseudo`` then counts unlabeled samples); 0 otherwise.
    """

    epoch: int
    crop_size: int
    batch_size: int
    n_real: int
    n_pseudo: int
    phase: str = "joint"
    unlabeled_batch_size: int = 0

    @property
    def n_samples(self) -> int:
        return self.n_real + self.n_pseudo

    @property
    def online(self) -> bool:
        return self.unlabeled_batch_size > 0

    def steps(self, world_size: int) -> int:
        """Optimizer steps of this epoch on each of ``world_size`` ranks (an online step takes a
        batch of real samples and one of unlabeled samples)."""
        per_rank = math.ceil((self.n_real if self.online else self.n_samples) / world_size)
        return math.ceil(per_rank / self.batch_size)


def plan_epochs(config: TrainJobConfig, n_labeled: int, n_pseudo_images: int) -> list[EpochPlan]:
    """The plan of every epoch of a run.

    A ``joint`` epoch is composed as in the paper: its real samples plus ``pseudo_per_real`` times
    as many pseudo samples. By default the real samples show each labeled image about once
    (``n_labeled``), so the epoch grows with the ratio (paper: 1.5K real + 10.5K pseudo at 7:1).
    With ``samples_per_epoch`` the epoch's total is fixed instead and split at the ratio, for
    comparisons at an equal budget (paper Table 2b). ``pseudo_per_real`` 0, or no label stores,
    trains on real samples only. In mode ``pretrain_finetune`` the first ``pretrain_epochs`` epochs
    train on pseudo labels only (``samples_per_epoch`` or ``n_pseudo_images`` samples), the rest on
    real labels only.

    Args:
        config: The run's config.
        n_labeled: Images in the labeled dataset.
        n_pseudo_images: Labeled images in all label stores together.

    Raises:
        ConfigError: The counts cannot work (an empty source asked for samples, or bad
            pretrain_epochs).
    """
    schedule = from_config(config.schedule, config.epochs)
    if config.mode == "pretrain_finetune" and not 0 < config.pretrain_epochs < config.epochs:
        raise ConfigError(
            f"pretrain_epochs must be in [1, epochs - 1] = [1, {config.epochs - 1}] in mode "
            f"'pretrain_finetune', got {config.pretrain_epochs}"
        )
    plans = []
    for epoch in range(config.epochs):
        crop, batch = schedule.at(epoch)
        phase = epoch_phase(config, epoch)
        n_real, n_pseudo = _sample_counts(config, phase, n_labeled, n_pseudo_images)
        if n_real and not n_labeled:
            raise ConfigError(
                f"epoch {epoch} needs {n_real} real samples; the labeled set is empty"
            )
        if n_pseudo and not n_pseudo_images:
            raise ConfigError(
                f"epoch {epoch} needs {n_pseudo} pseudo samples; no store or source has images"
            )
        if _online(config) and n_pseudo:
            plans.append(_online_plan(config, epoch, crop, batch, n_real))
            continue
        if n_real + n_pseudo == 0:
            raise ConfigError(f"epoch {epoch} has no samples")
        plans.append(EpochPlan(epoch, crop, batch, n_real, n_pseudo, phase))
    return plans


def _online(config: TrainJobConfig) -> bool:
    return config.online_method and bool(config.pseudo or config.unlabeled)


def _online_plan(
    config: TrainJobConfig, epoch: int, crop: int, batch: int, n_real: int
) -> EpochPlan:
    """An online epoch: ``n_real`` real samples in steps of ``batch`` per rank, each step beside
    ``batch * pseudo_per_real`` unlabeled samples (at least one), so the unlabeled count fills
    every step of every rank."""
    unlabeled_batch = max(1, round(batch * config.pseudo_per_real))
    plan = EpochPlan(epoch, crop, batch, n_real, 0, "joint", unlabeled_batch)
    n_unlabeled = plan.steps(config.num_workers) * unlabeled_batch * config.num_workers
    return EpochPlan(epoch, crop, batch, n_real, n_unlabeled, "joint", unlabeled_batch)


def epoch_phase(config: TrainJobConfig, epoch: int) -> str:
    """``joint``, or ``pretrain`` / ``finetune`` in mode ``pretrain_finetune``."""
    if config.mode != "pretrain_finetune":
        return "joint"
    return "pretrain" if epoch < config.pretrain_epochs else "finetune"


def _sample_counts(
    config: TrainJobConfig, phase: str, n_labeled: int, n_pseudo_images: int
) -> tuple[int, int]:
    """``(n_real, n_pseudo)`` of an epoch in ``phase`` (see ``plan_epochs``)."""
    ratio = config.pseudo_per_real
    if phase == "pretrain":
        return 0, config.samples_per_epoch or n_pseudo_images
    if phase == "finetune" or not (config.pseudo or config.unlabeled) or ratio == 0:
        return config.samples_per_epoch or n_labeled, 0
    if config.samples_per_epoch:
        return split_counts(config.samples_per_epoch, ratio)
    return n_labeled, round(n_labeled * ratio)


@dataclass
class TrainingData:
    """Everything a run trains and validates on, opened and checked.

    Attributes:
        labeled: The labeled dataset.
        label_space: Its classes, which the model predicts and every label store must share.
        pseudo: The label stores, in config order.
        val: The validation set, or None.
        sampler: Draws each epoch's sample list.
        plans: The plan of every epoch.
        stats: The labeled set's centroids and class pixels, when something needs them.
        bank: Rare-class segments to paste (``copy_paste``), or None.
        pool: An online student's unlabeled images (its stores, then its sources), or None.
    """

    labeled: SegmentationDataset
    label_space: LabelSpace
    pseudo: list[PseudoLabels]
    val: SegmentationDataset | None
    sampler: EpochSampler
    plans: list[EpochPlan]
    stats: LabeledStatistics | None = None
    bank: SegmentBank | None = None
    pool: UnlabeledPool | None = None


def open_training_data(config: TrainJobConfig) -> TrainingData:
    """Open the datasets and label stores of a run and plan its epochs.

    Raises:
        ConfigError: A label store's classes differ from the labeled data's, or the plan
            cannot work.
        DataError: A dataset has images without labels (or any error opening the data).
        StoreError: A label store cannot be opened.
    """
    labeled = open_source(config.labeled)
    if not labeled.is_labeled() or labeled.label_space is None:
        raise DataError(config.labeled.root, "the labeled dataset has images without labels")
    label_space = labeled.label_space
    pseudo = [PseudoLabels(store, config.confidence_threshold) for store in config.pseudo]
    for reader in pseudo:
        names = list(reader.store.label_space.names)
        if names != list(label_space.names):
            raise ConfigError(
                f"label store {reader.path} has classes {names}, but the labeled data has "
                f"{list(label_space.names)}"
            )
        if config.soft_labels and reader.store.soft_stride is None:
            raise ConfigError(
                f"soft_labels: label store {reader.path} keeps hard labels only; label it with "
                "soft_labels: true"
            )
    stats = None
    if (
        config.real_centroid_sampling
        or config.ignore_underpredicted is not None
        or config.copy_paste is not None
        or config.online_method
    ):
        stats = labeled_statistics(labeled)
    _set_pseudo_levers(config, pseudo, stats)
    pool = UnlabeledPool.open(pseudo, config.unlabeled) if config.online_method else None
    # The index of each store, read once: its done set, then its centroid table (core.store).
    done = pool.indices if pool is not None else [r.store.done_indices() for r in pseudo]
    centroids = None
    if config.centroid_sampling and not config.unlabeled:
        centroids = [r.store.centroids(done=d) for r, d in zip(pseudo, done, strict=False)]
    real_centroids = stats.centroids if config.real_centroid_sampling and stats else None
    sampler = EpochSampler(len(labeled), done, centroids, config.seed, real_centroids)
    val = None
    if config.val is not None:
        val = open_source(config.val)
        if not val.is_labeled() or val.label_space is None:
            raise DataError(config.val.root, "the validation set has images without labels")
        if list(val.label_space.names) != list(label_space.names):
            raise ConfigError(
                f"validation classes {list(val.label_space.names)} differ from the labeled "
                f"data's {list(label_space.names)}"
            )
    plans = plan_epochs(config, len(labeled), sum(len(d) for d in done))
    bank = segment_bank(config, labeled, stats)
    return TrainingData(labeled, label_space, pseudo, val, sampler, plans, stats, bank, pool)


def segment_bank(
    config: TrainJobConfig, labeled: SegmentationDataset, stats: LabeledStatistics | None
) -> SegmentBank | None:
    """The rare-class segments ``copy_paste`` pastes: its classes, or the labeled set's classes
    below its ``rare_share`` of the pixels.

    Raises:
        ConfigError: A named class is not one of the labeled set's.
    """
    paste = config.copy_paste
    if paste is None or stats is None:
        return None
    assert labeled.label_space is not None  # checked by open_training_data
    names = list(labeled.label_space.names)
    if paste.classes is None:
        classes = rare_classes(stats.class_pixels, paste.rare_share)
    else:
        unknown = [name for name in paste.classes if name not in names]
        if unknown:
            raise ConfigError(f"copy_paste.classes: {unknown} are not classes of {names}")
        classes = [names.index(name) for name in paste.classes]
    return SegmentBank(labeled, stats.centroids, classes, config.augment)


def _set_pseudo_levers(
    config: TrainJobConfig, pseudo: list[PseudoLabels], stats: LabeledStatistics | None
) -> None:
    """Per-class thresholds and ignored classes of each store, as the config asks."""
    for reader in pseudo:
        if config.pseudo_keep_fraction is not None:
            reader.class_thresholds = class_thresholds(
                reader.store, config.pseudo_keep_fraction, seed=config.seed
            )
        if config.ignore_underpredicted is not None and stats is not None:
            ignored = underpredicted_classes(
                reader.store.class_pixels(), stats.class_pixels, config.ignore_underpredicted
            )
            reader.ignored_classes = np.asarray(ignored, dtype=np.uint8)


class EpochSamples(Dataset):
    """One rank's part of an epoch list, each sample cropped and augmented on access.

    Real samples and whole-image pseudo samples get the standard scale / random crop / flip / blur
    / color pipeline; centroid samples get the same pipeline with a crop that contains the centroid.
    Sample ``(position, s)`` is augmented with ``sample_rng(seed, epoch, position)``, so its crop is
    the same on any rank and in any loader worker.

    Args:
        part: ``(position in the epoch list, sample)`` pairs, from core.sampling.rank_part.
        labeled: The labeled dataset (``Sample.store == REAL``).
        pseudo: The label stores, in the order that ``Sample.store`` counts them.
        aug: Augmentation settings.
        crop_size: This epoch's crop size.
        seed: The run's seed.
        epoch: The epoch.
        strong: Extra augmentation for pseudo samples only (after the standard pipeline, drawing
            from the same generator, so real samples are exactly as without it).
        soft: Soft targets (core.transforms.soft_target): the pseudo samples' class
            probabilities from their stores, the real samples' labels one-hot.
        bank: Rare-class segments pasted into real samples (``copy_paste``), or None.
        paste_probability: Chance that a real sample gets a pasted segment.
        cutmix: Chance that a sample gets a CutMix box of its batch partner; when above 0 each
            item also carries its box (``(H, W)`` bool), mixed in ``train_one_epoch``.
    """

    def __init__(
        self,
        part: Sequence[tuple[int, Sample]],
        labeled: SegmentationDataset,
        pseudo: Sequence[PseudoLabels],
        aug: AugmentConfig,
        crop_size: int,
        seed: int,
        epoch: int,
        strong: StrongAugmentConfig | None = None,
        soft: bool = False,
        bank: SegmentBank | None = None,
        paste_probability: float = 0.0,
        cutmix: float = 0.0,
    ) -> None:
        self.soft = soft
        self.bank = bank
        self.paste_probability = paste_probability if bank is not None and len(bank) else 0.0
        self.cutmix = cutmix
        self.part = list(part)
        self.labeled = labeled
        self.pseudo = list(pseudo)
        self.aug = aug
        self.crop_size = crop_size
        self.seed = seed
        self.epoch = epoch
        self.transform = build_train_transform(aug, crop_size)
        self.strong = None if strong is None else build_strong_transform(strong)

    def __len__(self) -> int:
        return len(self.part)

    def __getitem__(self, i: int) -> tuple[np.ndarray, ...]:
        position, sample = self.part[i]
        probabilities = None
        if sample.store == REAL:
            image, label, _ = self.labeled[sample.index]
            assert label is not None  # training data is checked to be labeled
        else:
            image, label = self.pseudo[sample.store].load(sample.index)
            if self.soft:
                probabilities = self.pseudo[sample.store].store.probabilities(sample.index)
        if self.soft:
            assert self.labeled.label_space is not None  # training data is checked to be labeled
            label = soft_target(label, probabilities, self.labeled.label_space.num_classes)
        rng = sample_rng(self.seed, self.epoch, position)
        if sample.point is None:
            image, label = self.transform(image, label, rng)
        else:
            image, label = augment_around_point(
                image, label, sample.point, self.aug, self.crop_size, rng
            )
        if self.strong is not None and not sample.is_real:
            image, label = self.strong(image, label, rng)
        if sample.is_real and self.paste_probability and rng.random() < self.paste_probability:
            assert self.bank is not None
            image, pasted = paste(image, *self.bank.draw(rng, self.crop_size))
            label = override(label, pasted)
        if self.cutmix:
            return image, label, cutmix_box(rng, label.shape[:2], self.cutmix)
        return image, label


def collate(batch: Sequence[tuple[np.ndarray, ...]]) -> tuple[torch.Tensor, ...]:
    """Stack crops into uint8 images (N, H, W, 3) and int64 labels (N, H, W), and their CutMix
    boxes (N, H, W) bool when the samples carry them."""
    images, labels, *boxes = zip(*batch, strict=True)
    tensors = to_tensors(images, labels)
    if boxes:
        return *tensors, torch.from_numpy(np.stack(boxes[0]))
    return tensors


def make_loader(dataset: EpochSamples, batch_size: int, workers: int = 0) -> DataLoader:
    """A loader over the samples in list order (the list is already shuffled)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
    )


@dataclass
class EpochStats:
    """What one epoch of training measured (summed over ranks when distributed).

    Attributes:
        loss: Mean loss over the steps of all ranks.
        lr: Learning rate of parameter group 0 after the last step.
        images: Samples trained on, all ranks together.
        seconds: Wall time of the epoch, data loading included.
        cpu_seconds: CPU time of this rank's process in the epoch (all its threads; loader worker
            processes not included), a measure that other load on the machine barely changes.
        steps: Optimizer steps on this rank.
        input_sizes: The distinct ``(height, width)`` of the batches this rank trained on.
    """

    loss: float
    lr: float
    images: int
    seconds: float
    cpu_seconds: float
    steps: int
    input_sizes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    bf16: bool = False,
) -> EpochStats:
    """One pass over ``loader``: forward, loss, backward, optimizer and lr step per batch.

    Args:
        model: The model (possibly DistributedDataParallel) on ``device``.
        loader: Yields (uint8 images (N, H, W, 3), int64 labels (N, H, W)).
        loss_fn: ``(logits, labels) -> loss``.
        optimizer: Stepped every batch.
        lr_scheduler: Stepped every batch (poly decay per iteration).
        device: Where the batches go; they travel as uint8 and are normalized there.
        bf16: Run forward and loss under bfloat16 autocast.
    """
    model.train()
    start, start_cpu = time.perf_counter(), time.process_time()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    steps, images = 0, 0
    sizes: set[tuple[int, int]] = set()
    for batch in loader:
        x, target = labeled_batch(batch, device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        loss_sum += loss.detach().double()
        steps += 1
        images += x.shape[0]
        sizes.add((x.shape[2], x.shape[3]))
    totals = torch.tensor([loss_sum.item(), steps, images], dtype=torch.float64)
    sum_over_ranks(totals, device)
    return EpochStats(
        loss=float(totals[0] / max(totals[1], 1)),
        lr=float(optimizer.param_groups[0]["lr"]),
        images=int(totals[2]),
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - start_cpu,
        steps=steps,
        input_sizes=sorted(sizes),
    )


def labeled_batch(
    batch: Sequence[torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader's batch on ``device``: normalized images and their labels, each sample's CutMix
    box taken from its partner when the batch carries boxes (core.mixing)."""
    x = normalize_batch(batch[0].to(device, non_blocking=True))
    target = batch[1].to(device, non_blocking=True)
    if len(batch) > 2:
        boxes = batch[2].to(device, non_blocking=True)
        x, target = mix_with_partner(x, boxes), mix_with_partner(target, boxes)
    return x, target


def sum_over_ranks(values: torch.Tensor, device: torch.device) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        return
    # NCCL reduces CUDA tensors only.
    on_device = values.to(device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(on_device)
    values.copy_(on_device.cpu())


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DistributedDataParallel broadcasts them at the start of each forward pass, so after the last
    step every other rank holds its own last update; evaluating without this would not give the
    numbers of the checkpoint that rank 0 saves.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def validate(
    model: nn.Module,
    dataset: SegmentationDataset,
    label_space: LabelSpace,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> ConfusionMatrix:
    """Confusion matrix of ``model`` on ``dataset`` (whole-image inference, as
    core.evaluate.evaluate_checkpoint does by default), each rank predicting every
    ``world_size``-th image; the counts are summed over ranks, so every rank gets the full matrix.

    Args:
        model: The bare model (not the DDP wrapper), on ``device``.
    """
    sync_buffers(model)
    part = dataset.subset(range(rank, len(dataset), world_size))
    matrix = evaluate(model, part, label_space, mode="whole", device=device)
    return matrix.all_reduce()


def load_initial_weights(
    model: nn.Module, model_name: str, path: str | Path, label_space: LabelSpace
) -> bool:
    """Start ``model`` from the weights of a checkpoint (finetuning, or a student that continues
    from its teacher).

    When the checkpoint's classes differ from ``label_space`` (another dataset), the classifier is
    re-initialized for the new classes and everything else is loaded.

    Returns:
        Whether the classifier was re-initialized.

    Raises:
        CheckpointError: The checkpoint holds another architecture, or its weights do not fit.
    """
    checkpoint = load_checkpoint(path)
    if checkpoint["model_name"] != model_name:
        raise CheckpointError(
            path, f"holds a {checkpoint['model_name']!r} model, but the run trains {model_name!r}"
        )
    state = checkpoint["model"]
    same_classes = list(checkpoint["label_space"]["names"]) == list(label_space.names)
    if not same_classes:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        reset_head(model, label_space.num_classes)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of another shape (other model options)
        raise CheckpointError(path, f"weights do not fit {model_name!r}: {exc}") from exc
    missing = [k for k in missing if same_classes or not k.startswith("classifier.")]
    if missing or unexpected:
        raise CheckpointError(
            path, f"weights do not fit {model_name!r}: missing {missing}, unexpected {unexpected}"
        )
    return not same_classes
