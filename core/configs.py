"""Pydantic configs shared by the jobs (which read them from YAML/JSON files) and the control plane
(which takes them as REST bodies and shows them on the dashboard).

Only plain values live here; nothing touches the file system when a config is built, so a config
can be validated anywhere. Checks that need the data (paths exist, crop fits the images) are done
by the code that opens the data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from core.errors import ConfigError

DatasetFormat = Literal[
    "cityscapes", "cityscapes_coarse", "camvid", "folder", "paired", "mapillary", "bdd100k", "kitti"
]
InferenceMode = Literal["whole", "slide", "multiscale"]
Precision = Literal["fp32", "bf16"]
LabelLayout = Literal["auto", "staged", "fused"]
ScheduleKind = Literal["constant", "coarse2fine", "fine2coarse", "coarse2fine+", "fine2coarse+"]
TrainMode = Literal["joint", "pretrain_finetune", "finetune"]
TrainMethod = Literal["offline", "online"]
OnlineTeacherStart = Literal["teacher", "student"]
Role = Literal["teacher", "student"]


# Images per shard of a label store unless a label job says otherwise: 256 keeps a store of 10^6
# images to about 4,000 shards (reading a column is about 4,000 small reads) and the files of a
# shard of full-HD images to a few hundred MB.
IMAGES_PER_SHARD = 256


def check_images_per_shard(images_per_shard: int) -> int:
    """``images_per_shard`` when it is a power of two from 1 to 65536.

    Raises:
        ValueError: It is not.
    """
    if not 1 <= images_per_shard <= 65536 or images_per_shard & (images_per_shard - 1):
        raise ValueError(
            f"images_per_shard must be a power of two <= 65536, got {images_per_shard}"
        )
    return images_per_shard


# Bounds that any real cluster and dataset stay within: a value past them is a typo (or an attack
# on the service), refused when the config is read instead of failing, or never ending, later.
MAX_EPOCHS = 100_000
MAX_WORKERS = 1024  # training workers or teacher actors
MAX_GPUS = 16  # per worker or actor
MAX_CPUS = 512  # per worker, actor or task
MAX_SIDE = 16_384  # pixels: crop sizes, windows
MAX_PIXELS = MAX_SIDE * MAX_SIDE


class StrictModel(BaseModel):
    # strict: a number must be a number ("10" and true are not 10), names must be known.
    model_config = ConfigDict(extra="forbid", strict=True)


class DataSource(StrictModel):
    """Where images (and, for labeled data, labels) come from.

    ``format``: ``cityscapes`` (leftImg8bit + gtFine), ``cityscapes_coarse`` (leftImg8bit images
    of a gtCoarse split, used unlabeled), ``camvid`` (SegNet layout), ``folder`` (images only,
    recursive), ``paired`` (``images/`` + ``labels/`` with matching stems, needs ``classes``),
    ``mapillary`` (Mapillary Vistas ``version`` v1.2 or v2.0, classes from its config file),
    ``bdd100k`` (BDD100K semantic segmentation, 19 classes), ``kitti`` (KITTI semantics,
    Cityscapes ids; splits ``training``, ``testing``).
    """

    format: DatasetFormat
    root: str
    split: str = "train"
    label_kind: Literal["labelIds", "labelTrainIds"] = "labelIds"
    version: Literal["v1.2", "v2.0"] = "v1.2"  # Mapillary Vistas
    # At most 255 classes: train ids are one byte and 255 means ignore.
    classes: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        default=None, max_length=255
    )
    # Stored label value (an 8- or 16-bit PNG: 0..65535) -> train id (a class, or 255: ignore).
    # Not strict: JSON object keys are strings.
    id_map: dict[Annotated[int, Field(strict=False)], int] | None = Field(
        default=None, max_length=65_536
    )
    subset_fraction: float | None = Field(default=None, gt=0, le=1)
    subset_list: str | None = None
    subset_seed: int = Field(default=0, ge=0, le=2**32 - 1)
    n_shot: int | None = Field(default=None, gt=0, le=100_000)

    @model_validator(mode="after")
    def _check(self) -> DataSource:
        if self.format == "paired" and not self.classes:
            raise ValueError("format 'paired' needs 'classes' (the declared label space)")
        if self.subset_fraction is not None and self.subset_list is not None:
            raise ValueError("give subset_fraction or subset_list, not both")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("classes: each name once")
        if self.id_map and self.classes is not None:  # (id_map without classes: see open_source)
            n_classes = len(self.classes)
            bad_keys = [k for k in self.id_map if not 0 <= k <= 65_535]
            bad_ids = [v for v in self.id_map.values() if not (0 <= v < n_classes or v == 255)]
            if bad_keys:
                raise ValueError(f"id_map: stored values must be 0..65535, got {bad_keys[:5]}")
            if bad_ids:
                raise ValueError(
                    f"id_map: train ids must be classes 0..{n_classes - 1} or 255, "
                    f"got {bad_ids[:5]}"
                )
        return self


class InferenceSettings(StrictModel):
    """The settings that shape a teacher's labels; a label store is never mixed from two.

    Settings that a mode ignores are None (scales and flip apply to multiscale only, the window
    size to slide and multiscale), so changing them does not make a store incompatible.
    """

    mode: InferenceMode = "whole"
    precision: Precision = "fp32"
    min_centroid_area: int = Field(default=32, ge=1, le=MAX_PIXELS)
    crop: int | None = Field(default=None, gt=0, le=MAX_SIDE)
    scales: list[float] | None = None
    flip: bool | None = None
    # Soft labels: the class probabilities are kept too, averaged over soft_stride x soft_stride
    # pixels (the model's output resolution); None keeps hard labels only.
    soft_stride: int | None = Field(default=None, ge=1, le=64)

    def identity(self) -> dict:
        """The settings as a label store records and compares them (unused ones left out)."""
        return self.model_dump(exclude_none=True)


class LabelSettings(StrictModel):
    """How a teacher labels: what a user chooses for a label job (REST ``label.options``)."""

    batch_size: int = Field(default=4, gt=0, le=1024)
    # How the label job lays out its work (core.label_shards): "staged" reads and writes in CPU
    # tasks around teacher actors that only run the model (keeps accelerators busy), "fused" does
    # every step in the teacher actors (no images move between processes: what suits CPU-only
    # machines), "auto" stages when the actors hold GPUs.
    layout: LabelLayout = "auto"
    # The teacher actors: a pool that grows from min_actors (default: num_actors, a fixed pool)
    # to num_actors while shards wait for them, each with these GPUs (fractions share one) and CPUs.
    num_actors: int = Field(default=1, gt=0, le=MAX_WORKERS)
    min_actors: int | None = Field(default=None, gt=0, le=MAX_WORKERS)
    gpus_per_actor: float = Field(default=0.0, ge=0, le=MAX_GPUS)
    cpus_per_actor: float = Field(default=0.5, gt=0, le=MAX_CPUS)
    # CPUs of each read (decode) and write task of the staged layout.
    cpus_per_task: float = Field(default=0.5, gt=0, le=MAX_CPUS)
    mode: InferenceMode = "whole"
    scales: list[Annotated[float, Field(gt=0, le=8)]] = Field(
        default_factory=lambda: [0.5, 1.0, 2.0], min_length=1, max_length=16
    )
    flip: bool = True
    slide_crop: int = Field(default=512, gt=0, le=MAX_SIDE)
    precision: Precision = "fp32"
    channels_last: bool = False
    # Run a torch.compile'd teacher (dynamic shapes; same labels, off by default: compiling costs
    # start-up time in every actor and needs a C++ compiler on CPU).
    compile: bool = False
    min_centroid_area: int = Field(default=32, ge=1, le=MAX_PIXELS)
    # Keep each image's class probabilities too (float16, averaged over soft_stride x soft_stride
    # pixels), for students trained with soft_labels (the paper's Table 7 ablation).
    soft_labels: bool = False
    soft_stride: int = Field(default=8, ge=1, le=64)
    overwrite: bool = False
    retry_failed: bool = True
    # Images per shard of a new store (core.store_layout); an existing store keeps its own.
    images_per_shard: int = IMAGES_PER_SHARD

    @model_validator(mode="after")
    def _check_shards(self) -> LabelSettings:
        check_images_per_shard(self.images_per_shard)
        if self.min_actors is not None and self.min_actors > self.num_actors:
            raise ValueError(
                f"min_actors ({self.min_actors}) must not exceed num_actors ({self.num_actors})"
            )
        return self

    def staged(self) -> bool:
        """Whether the label job runs as a pipeline of read tasks, model actors and write tasks."""
        return self.layout == "staged" or (self.layout == "auto" and self.gpus_per_actor > 0)

    def inference(self) -> InferenceSettings:
        """The settings among these that shape the labels (see ``InferenceSettings``)."""
        windowed = self.mode in ("slide", "multiscale")
        multiscale = self.mode == "multiscale"
        return InferenceSettings(
            mode=self.mode,
            precision=self.precision,
            min_centroid_area=self.min_centroid_area,
            crop=self.slide_crop if windowed else None,
            scales=list(self.scales) if multiscale else None,
            flip=self.flip if multiscale else None,
            soft_stride=self.soft_stride if self.soft_labels else None,
        )


class TrackingSettings(StrictModel):
    """Where a job logs its MLflow run (core.tracking); filled in by whoever runs the stages.

    Attributes:
        uri: MLflow's tracking URI (a server, or ``sqlite:///...`` on this machine).
        experiment: The MLflow experiment.
        run_name: The self-training run's name (its parent MLflow run).
        parent_run_id: The parent MLflow run the stage's run is nested under.
        artifacts: Where a new experiment keeps artifacts (default: the server's choice).
    """

    uri: str = Field(min_length=1, max_length=2000)
    experiment: str = Field(default="selftrain", min_length=1, max_length=200)
    artifacts: str | None = Field(default=None, max_length=2000)
    run_name: str | None = Field(default=None, max_length=200)
    parent_run_id: str | None = Field(default=None, max_length=100)


class LabelJobConfig(LabelSettings):
    """The pseudo-label job: a teacher labels unlabeled images into a Zarr label store.

    The settings plus what connects the job to the rest of a run (filled in by the run's plan).
    """

    teacher_checkpoint: str
    source: DataSource
    store: str
    # Labeled images no stage trains on, labeled like the pool; the store records how the
    # pseudo labels compare with their truth (core.audit).
    audit: list[DataSource] = Field(default_factory=list, max_length=16)
    ray_address: str | None = None
    tracking: TrackingSettings | None = None
    allowed_roots: list[str] | None = Field(default=None, max_length=64)

    def paths(self) -> list[tuple[str, str]]:
        """``(field, path)`` of every file or folder the job reads or writes."""
        return [
            ("teacher_checkpoint", self.teacher_checkpoint),
            *source_paths("source", self.source),
            ("store", self.store),
            *[p for i, a in enumerate(self.audit) for p in source_paths(f"audit.{i}", a)],
        ]


def source_paths(field: str, source: DataSource | None) -> list[tuple[str, str]]:
    """``(field, path)`` of a source's root and list file (for a job's ``paths``)."""
    if source is None:
        return []
    paths = [(f"{field}.root", source.root)]
    if source.subset_list is not None:
        paths.append((f"{field}.subset_list", source.subset_list))
    return paths


class ScheduleConfig(StrictModel):
    """The crop schedule (paper Sec. 3.3); see core.schedule."""

    kind: ScheduleKind = "constant"
    crop_sizes: list[Annotated[int, Field(gt=0, le=MAX_SIDE)]] = Field(
        default_factory=lambda: [400, 480, 560, 640, 720, 800], min_length=1, max_length=64
    )
    warmup_epochs: int = Field(default=0, ge=0, le=MAX_EPOCHS)
    base_batch_size: int = Field(default=8, gt=0, le=4096)
    # Batch at a smaller crop = base_batch_size x (largest crop / crop) ** batch_growth: 2 keeps
    # the pixels per step (the paper's bigger batch for small crops), 0 keeps the batch.
    batch_growth: float = Field(default=2.0, ge=0, le=2)

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if not self.crop_sizes or any(s <= 0 for s in self.crop_sizes):
            raise ValueError("crop_sizes must be a non-empty list of positive sizes")
        return self


class AugmentConfig(StrictModel):
    scale_min: float = Field(default=0.5, gt=0, le=16)
    scale_max: float = Field(default=2.0, gt=0, le=16)
    flip: bool = True
    blur: bool = True
    color_jitter: float = Field(default=0.1, ge=0, le=1)


class StrongAugmentConfig(StrictModel):
    """Extra augmentation for pseudo samples only, after the standard pipeline (the ST++ finding:
    a student that sees its teacher's labels on harder views than the teacher did learns more
    than to copy them). Each is applied with its probability; cutout's region becomes ignore.

    Attributes:
        color_jitter: Strength of a strong brightness / contrast / saturation jitter (p 0.8).
        grayscale: Probability of turning the crop gray.
        blur: Probability of a Gaussian blur (sigma 0.1 to 2).
        cutout: Probability of cutting out one rectangle (image 0, label ignore).
        cutout_max: Largest side of the rectangle, as a fraction of the crop's side.
    """

    color_jitter: float = Field(default=0.4, ge=0, le=1)
    grayscale: float = Field(default=0.2, ge=0, le=1)
    blur: float = Field(default=0.5, ge=0, le=1)
    cutout: float = Field(default=0.5, ge=0, le=1)
    cutout_max: float = Field(default=0.5, gt=0, le=1)


class CopyPasteConfig(StrictModel):
    """Ground-truth segments of rare classes pasted into training crops (the rare-class side of AEL
    and AugSeg): a crop of a labeled image centred on one of these classes is drawn, and its pixels
    of these classes are pasted at the same place into the crop, their labels overriding whatever
    label (true or pseudo) the crop had there. Labeled crops get it in every method (so a
    labeled-only control can have it too); online students also paste into their strong views.

    Attributes:
        probability: Chance that a crop gets a pasted segment.
        classes: The classes pasted, by name; default: the rare ones, whose share of the labeled
            set's pixels is below ``rare_share``.
        rare_share: See ``classes``.
    """

    probability: float = Field(default=0.5, ge=0, le=1)
    classes: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        default=None, min_length=1, max_length=255
    )
    rare_share: float = Field(default=0.02, gt=0, le=1)


class OnlineSettings(StrictModel):
    """Online self-training (``TrainSettings.method: online``): weak-to-strong consistency with an
    exponential-moving-average teacher, as in Mean Teacher (the EMA), FixMatch / UniMatch (a
    confident prediction on a weak view supervises strong views; a second strong view and a
    feature-perturbation branch) and CutMix-Seg (CutMix between unlabeled images, the labels mixed
    with the same box). See core.online.

    Attributes:
        ema_decay: The teacher's weights after each step: ``decay * teacher + (1 - decay) *
            student`` (Mean Teacher; 0.99 as in U2PL and CutMix-Seg).
        teacher_start: Where the EMA teacher starts: ``teacher`` (the trained teacher's checkpoint,
            ``TrainJobConfig.online_teacher``) or ``student`` (a copy of the student's start).
        threshold: The confidence above which a teacher's pixel supervises the student (UniMatch:
            0.95); also the ceiling of the per-class thresholds.
        class_thresholds: Adapt a threshold per class while training (FreeMatch's self-adaptive
            thresholds, per class): each class's threshold is ``threshold`` times its running mean
            confidence over the most confident class's, never below ``threshold_floor``, so a
            class the teacher is less sure of (a rare one) is not filtered out entirely.
        threshold_floor: The lowest a per-class threshold goes.
        threshold_momentum: Of the running per-class mean confidences (per step).
        strong: The strong views' photometric augmentation (cutout off by default: CutMix does its
            job).
        cutmix: Chance that a strong view gets a box of another unlabeled image of the batch.
        second_view: Two strong views per image, each with its own CutMix (UniMatch).
        feature_dropout: Also train on the weak view with dropout of this rate on the features the
            classifier reads (UniMatch's feature perturbation, on the penultimate features every
            model has); None: off.
        unlabeled_weight: Weight of the strong views' loss (averaged over the views).
        feature_weight: Weight of the feature-perturbation loss.
        offline_weight: Weight of a loss on the label stores' offline pseudo labels of the same
            strong views (when the unlabeled images come from stores); 0: unused.
    """

    ema_decay: float = Field(default=0.99, ge=0, lt=1)
    teacher_start: OnlineTeacherStart = "student"
    threshold: float = Field(default=0.95, ge=0, le=1)
    class_thresholds: bool = True
    threshold_floor: float = Field(default=0.7, ge=0, le=1)
    threshold_momentum: float = Field(default=0.99, ge=0, lt=1)
    strong: StrongAugmentConfig = Field(
        default_factory=lambda: StrongAugmentConfig(color_jitter=0.5, cutout=0.0)
    )
    cutmix: float = Field(default=0.5, ge=0, le=1)
    second_view: bool = True
    feature_dropout: float | None = Field(default=None, gt=0, lt=1)
    unlabeled_weight: float = Field(default=1.0, ge=0, le=100)
    feature_weight: float = Field(default=0.5, ge=0, le=100)
    offline_weight: float = Field(default=0.0, ge=0, le=100)

    @model_validator(mode="after")
    def _check(self) -> OnlineSettings:
        if self.threshold_floor > self.threshold:
            raise ValueError(
                f"threshold_floor ({self.threshold_floor}) must not exceed threshold "
                f"({self.threshold})"
            )
        if self.strong.cutout > 0:
            raise ValueError("strong.cutout: online strong views mix boxes with cutmix instead")
        return self


class TrainSettings(StrictModel):
    """Teacher or student training: what a user chooses (REST ``teacher.train``, ``student.train``).

    Attributes (the less obvious ones):
        pseudo_per_real: Pseudo samples per real sample in a ``joint`` epoch (the paper's
            "pseudo:real" ratio: 7.0 is its best, 7:1); 0 trains on real samples only.
        real_centroid_sampling: Draw real samples like pseudo ones: a class uniformly, then a
            region of it, then a crop around it, so a class the teacher misses still reaches the
            student from real crops as often as any other (the labeled set's centroids are found
            once, at start).
        confidence_threshold: Pseudo-label pixels whose teacher confidence is below this are
            ignored when the student reads them.
        pseudo_keep_fraction: Per-class thresholds instead of one (CBST): of each class's
            pseudo pixels, keep the most confident fraction; estimated at start from the
            confidences of a fixed sample of each store's images.
        ignore_underpredicted: Ignore the pseudo pixels of classes whose share of pseudo pixels is
            below this fraction of their share of real pixels (classes the teacher
            under-predicts), so pseudo crops do not teach the student to drop them.
        pseudo_augment: Strong augmentation applied to pseudo samples only.
        method: ``offline`` (the paper's: a label job's stored pseudo labels are the student's
            targets) or ``online`` (``online``'s settings: an EMA teacher labels weak views of
            the unlabeled images while the student trains on strong views; ``pseudo_per_real``
            is then unlabeled samples per real one in every step).
        labeled_cutmix: Chance that a labeled crop gets a box of another labeled crop of its batch
            (image and true label mixed with the same box); labeled-side, so a control has it too.
        copy_paste: Rare classes' true segments pasted into crops (see ``CopyPasteConfig``).
        soft_labels: Train on the stores' class probabilities with a soft cross entropy instead
            of their hard labels (the paper's Table 7 ablation; hard labels are its choice). The
            stores must be labeled with ``soft_labels``; real samples count as one-hot; not with
            ``ohem``.
        samples_per_epoch: Samples per epoch, real and pseudo together (a fixed budget, split at
            ``pseudo_per_real``); default: each labeled image once as a real sample, plus
            ``pseudo_per_real`` times as many pseudo samples (see core.training.plan_epochs).
        lr: Initial learning rate; default 0.02, or ``finetune_lr`` in mode ``finetune``.
        finetune_lr: The lr a finetune starts from (the paper's 0.002): mode ``finetune``'s
            default, and where mode ``pretrain_finetune`` restarts its poly decay when it
            switches from pseudo to real labels.
        precision: ``bf16`` runs forward and loss under bfloat16 autocast (GPUs with bf16).
        compile: Train a ``torch.compile``d model (off by default: compiling costs start-up time,
            once per crop size until shapes are marked dynamic, and needs a C++ compiler on CPU;
            checkpoints hold the plain model's weights either way).
    """

    model: str = "small"
    model_options: dict = Field(default_factory=dict)
    labeled: DataSource
    val: DataSource | None = None
    val_every: int = Field(default=1, gt=0, le=MAX_EPOCHS)
    pseudo_per_real: float = Field(default=7.0, ge=0, le=1000)
    centroid_sampling: bool = True
    real_centroid_sampling: bool = False
    confidence_threshold: float = Field(default=0.0, ge=0, le=1)
    pseudo_keep_fraction: float | None = Field(default=None, gt=0, le=1)
    ignore_underpredicted: float | None = Field(default=None, gt=0, le=1)
    pseudo_augment: StrongAugmentConfig | None = None
    soft_labels: bool = False
    method: TrainMethod = "offline"
    online: OnlineSettings = Field(default_factory=OnlineSettings)
    labeled_cutmix: float = Field(default=0.0, ge=0, le=1)
    copy_paste: CopyPasteConfig | None = None
    samples_per_epoch: int | None = Field(default=None, gt=0, le=100_000_000)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    epochs: int = Field(default=10, gt=0, le=MAX_EPOCHS)
    mode: TrainMode = "joint"
    pretrain_epochs: int = Field(default=0, ge=0, le=MAX_EPOCHS)
    lr: float | None = Field(default=None, gt=0, le=10)
    finetune_lr: float = Field(default=0.002, gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=1e-4, ge=0, le=1)
    ohem: bool = True
    ohem_thresh: float = Field(default=0.7, gt=0, le=1)
    ohem_min_kept: int = Field(default=100_000, gt=0, le=MAX_PIXELS)
    num_workers: int = Field(default=1, gt=0, le=MAX_WORKERS)
    gpus_per_worker: float = Field(default=0.0, ge=0, le=MAX_GPUS)
    cpus_per_worker: float = Field(default=1.0, gt=0, le=MAX_CPUS)
    loader_workers: int = Field(default=0, ge=0, le=64)
    precision: Precision = "fp32"
    compile: bool = False
    max_failures: int = Field(default=2, ge=0, le=100)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: object) -> object:
        if isinstance(data, dict) and "real_pseudo_ratio" in data:
            old = data["real_pseudo_ratio"]
            try:
                here = f", here {1 / float(old):.4g}"
            except (TypeError, ValueError, ZeroDivisionError):
                here = ""
            raise ValueError(
                "real_pseudo_ratio is no longer read: it counted real samples per pseudo sample. "
                "Use pseudo_per_real, pseudo samples per real sample as the paper counts them: "
                f"pseudo_per_real = 1 / real_pseudo_ratio{here}; the paper's 7:1 is "
                "pseudo_per_real: 7"
            )
        return data

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str) -> str:
        _raise_model_problems(model, {}, "model")
        return model

    @field_validator("model_options")
    @classmethod
    def _buildable(cls, options: dict, info: ValidationInfo) -> dict:
        # Checked here, not when a job builds the model after its teacher has trained.
        if "model" in info.data:
            _raise_model_problems(info.data["model"], options, "model_options")
        return options

    @model_validator(mode="after")
    def _check_soft(self) -> TrainSettings:
        if self.soft_labels and self.ohem:
            raise ValueError("soft_labels: OHEM ranks pixels by a hard label loss; set ohem false")
        if self.soft_labels and self.labeled_cutmix:
            raise ValueError("labeled_cutmix: soft targets are not mixed; set it to 0")
        if self.method == "online" and self.soft_labels:
            raise ValueError("soft_labels: an online student's targets are its EMA teacher's")
        if self.method == "online" and self.mode == "pretrain_finetune":
            raise ValueError("mode 'pretrain_finetune' trains on stored pseudo labels; use joint")
        return self

    @property
    def online_method(self) -> bool:
        return self.method == "online"

    def effective_lr(self) -> float:
        """lr if given, else the paper's defaults: ``finetune_lr`` when finetuning, else 0.02."""
        if self.lr is not None:
            return self.lr
        return self.finetune_lr if self.mode == "finetune" else 0.02


def _raise_model_problems(model: str, options: dict, field: str) -> None:
    """Raise the problems core.models finds with ``model`` and ``options`` that concern ``field``
    (``model``, or ``model_options``: its options named in the message), as pydantic's error."""
    from core.models import MODELS  # torch; only configs that name a model pay for it
    from core.models.options import model_problems

    found = [
        (name, message)
        for name, message in model_problems(model, options, MODELS)
        if name == field or name.startswith(f"{field}.")
    ]
    if found:
        text = "; ".join(
            f"{name.removeprefix(field + '.')}: {message}" if name != field else message
            for name, message in found
        )
        raise PydanticCustomError("model", text)


class TrainJobConfig(TrainSettings):
    """A training job on Ray Train (one loop serves teacher and student): the settings plus what
    connects it to the rest of a run (filled in by the run's plan).

    Attributes:
        role: ``teacher`` (labeled data only) or ``student``.
        run_name: The run folder's name under ``storage_path`` (core.runfiles).
        storage_path: Where run folders live.
        pseudo: Label stores (core.store) whose pseudo labels the student trains on (offline), or
            whose images an online student reads (their centroids can centre its crops).
        unlabeled: Online students: unlabeled sources read directly (any source a label job
            reads), instead of or beside ``pseudo``'s stores.
        online_teacher: Online students with ``online.teacher_start: teacher``: the checkpoint
            the EMA teacher starts from.
        init_checkpoint: Start from these weights (a finetune, or a student from its teacher).
        ray_address: The cluster; default: RAY_ADDRESS, else Ray in-process.
        allowed_roots: The folders every path of the job must lie in, checked again when the
            job starts (core.confine); the service fills them in; None: not confined.
    """

    role: Role = "student"
    run_name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    storage_path: str
    pseudo: list[str] = Field(default_factory=list, max_length=256)
    unlabeled: list[DataSource] = Field(default_factory=list, max_length=64)
    online_teacher: str | None = None
    init_checkpoint: str | None = None
    ray_address: str | None = None
    tracking: TrackingSettings | None = None
    allowed_roots: list[str] | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _check(self) -> TrainJobConfig:
        if self.role == "teacher" and self.pseudo:
            raise ValueError("pseudo: a teacher trains on labeled data only")
        if self.mode == "finetune" and not self.init_checkpoint:
            raise ValueError("init_checkpoint: mode 'finetune' needs a checkpoint to start from")
        if self.mode == "pretrain_finetune" and not self.pseudo:
            raise ValueError("pseudo: mode 'pretrain_finetune' needs at least one label store")
        if self.role == "teacher" and self.unlabeled:
            raise ValueError("unlabeled: a teacher trains on labeled data only")
        if self.unlabeled and not self.online_method:
            raise ValueError("unlabeled: only an online student reads unlabeled sources")
        starts_from_teacher = self.online_method and self.online.teacher_start == "teacher"
        if starts_from_teacher and not self.online_teacher:
            raise ValueError(
                "online_teacher: online.teacher_start 'teacher' needs the teacher's checkpoint"
            )
        if self.online_method and self.unlabeled and self.centroid_sampling:
            raise ValueError(
                "centroid_sampling: centroids come from label stores; an online student that "
                "reads unlabeled sources draws whole images: set centroid_sampling false"
            )
        return self

    def paths(self) -> list[tuple[str, str]]:
        """``(field, path)`` of every file or folder the job reads or writes."""
        from core.weights import weights_files

        return [
            ("storage_path", str(Path(self.storage_path) / self.run_name)),
            *source_paths("labeled", self.labeled),
            *source_paths("val", self.val),
            *[(f"pseudo.{i}", store) for i, store in enumerate(self.pseudo)],
            *([("init_checkpoint", self.init_checkpoint)] if self.init_checkpoint else []),
            *[(f"model_options.{k}", v) for k, v in weights_files(self.model_options)],
        ]

    def with_absolute_paths(self) -> TrainJobConfig:
        """This config with its relative paths (storage, data, label stores, initial checkpoint)
        made absolute against the current folder (Ray workers run in other folders)."""

        def source(data: DataSource | None) -> DataSource | None:
            if data is None:
                return None
            update = {"root": _absolute(data.root), "subset_list": _absolute(data.subset_list)}
            return data.model_copy(update=update)

        return self.model_copy(
            update={
                "storage_path": _absolute(self.storage_path),
                "labeled": source(self.labeled),
                "val": source(self.val),
                "pseudo": [_absolute(store) for store in self.pseudo],
                "unlabeled": [source(data) for data in self.unlabeled],
                "online_teacher": _absolute(self.online_teacher),
                "init_checkpoint": _absolute(self.init_checkpoint),
            }
        )


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def validation_problems(exc: ValidationError) -> str:
    """A pydantic error as one line: ``field.path: problem; ...``."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'config'}: {error['msg']}"
        for error in exc.errors()
    )


def load_config(path: str | Path, cls: type[ConfigT]) -> ConfigT:
    """Read a YAML or JSON file into ``cls``.

    Raises:
        ConfigError: The file cannot be read, is not YAML (JSON), or its values do not fit
            ``cls``; one line that names the file and each field's problem.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from exc
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        where = " ".join(str(exc).split())  # the parser's message, on one line
        kind = path.suffix.lstrip(".") or "YAML"
        raise ConfigError(f"{path}: not valid {kind}: {where}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_problems(exc)}") from exc


def save_config(config: BaseModel, path: str | Path) -> Path:
    """Write a config as YAML (or JSON when the suffix is .json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config.model_dump(mode="json")
    path.write_text(json.dumps(data, indent=2) if path.suffix == ".json" else yaml.safe_dump(data))
    return path
