"""The run spec (the REST body of ``POST /api/runs``) and the stages it plans.

A run is teacher -> label (one job per unlabeled source) -> student -> optional finetune, then
``loops`` further rounds in which the last model becomes the next teacher. Every stage either runs a
job or is given an existing artifact (``checkpoint`` / ``stores``). The spec is made of the configs
the jobs read; the fields that connect the stages (run names, output folders, the teacher checkpoint
of a label job, the pseudo stores of a student, the checkpoint a finetune starts from) are filled in
by the plan, so every stage's output path is known when the run is created.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.json_schema import SkipJsonSchema

from core.configs import DataSource, LabelJobConfig, PseudoSource, TrainJobConfig

StageKind = Literal["teacher", "label", "student", "finetune"]

# Fields the plan sets; a spec that sets them would be silently overridden, so they are refused.
_TRAIN_FIELDS_SET_BY_RUN = ("run_name", "storage_path", "role", "pseudo", "ray_address")
_LABEL_FIELDS_SET_BY_RUN = ("teacher_checkpoint", "source", "store", "ray_address")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainOptions(TrainJobConfig):
    """A ``TrainJobConfig`` without the fields the run fills in (run_name, storage_path, role,
    pseudo, ray_address; and init_checkpoint for a finetune stage)."""

    # Left out of the JSON schema: the client should not send them (and is told so if it does).
    run_name: SkipJsonSchema[str | None] = None  # type: ignore[assignment]
    storage_path: SkipJsonSchema[str | None] = None  # type: ignore[assignment]
    role: SkipJsonSchema[Literal["teacher", "student"]] = "student"
    pseudo: SkipJsonSchema[list[PseudoSource]] = Field(default_factory=list)
    ray_address: SkipJsonSchema[str | None] = None

    @model_validator(mode="after")
    def _check(self) -> TrainOptions:
        # Replaces TrainJobConfig's cross-field check, which needs the fields filled in by the plan;
        # the planned config is validated in full when the run is created.
        for name in _TRAIN_FIELDS_SET_BY_RUN:
            if name in self.model_fields_set:
                raise ValueError(f"{name}: set by the run, leave it out")
        return self


class LabelOptions(LabelJobConfig):
    """A ``LabelJobConfig`` without the fields the run fills in (teacher_checkpoint, source, store,
    ray_address)."""

    teacher_checkpoint: SkipJsonSchema[str | None] = None  # type: ignore[assignment]
    source: SkipJsonSchema[DataSource | None] = None  # type: ignore[assignment]
    store: SkipJsonSchema[str | None] = None  # type: ignore[assignment]
    ray_address: SkipJsonSchema[str | None] = None

    @model_validator(mode="after")
    def _check(self) -> LabelOptions:
        for name in _LABEL_FIELDS_SET_BY_RUN:
            if name in self.model_fields_set:
                raise ValueError(f"{name}: set by the run, leave it out")
        return self


class TrainStage(StrictModel):
    """Train a model (``train``) or take an existing checkpoint (``checkpoint``)."""

    train: TrainOptions | None = None
    checkpoint: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> TrainStage:
        if (self.train is None) == (self.checkpoint is None):
            raise ValueError("give either 'train' (run the stage) or 'checkpoint' (use it instead)")
        return self


class LabelStage(StrictModel):
    """Label ``sources`` with the teacher, and/or use existing label ``stores``."""

    sources: list[DataSource] = Field(default_factory=list)
    stores: list[str] = Field(default_factory=list)
    options: LabelOptions = Field(default_factory=LabelOptions)
    confidence_threshold: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _some(self) -> LabelStage:
        if not self.sources and not self.stores:
            raise ValueError("give unlabeled 'sources' to label, or existing 'stores', or both")
        return self


class RunSpec(StrictModel):
    """One self-training run.

    Attributes:
        name: A label for people; need not be unique.
        output: Folder for the run's checkpoints and label stores (inside a data root); default: a
            folder of the run under the service's workdir.
        teacher: The first teacher.
        label: Unlabeled sources (one label job each) and/or existing stores.
        student: Trained on the labeled data of its config plus the pseudo labels.
        finetune: Optional: the student finetuned on a few labels (``mode`` is set to ``finetune``).
        loops: Further rounds: the last model labels the sources again and a new student is trained.
    """

    name: str = Field(min_length=1, max_length=100)
    output: str | None = None
    teacher: TrainStage
    label: LabelStage
    student: TrainStage
    finetune: TrainStage | None = None
    loops: int = Field(default=0, ge=0, le=10)

    @model_validator(mode="after")
    def _loops_need_jobs(self) -> RunSpec:
        if self.loops and not self.label.sources:
            raise ValueError("loops: further rounds relabel label.sources; give at least one")
        if self.loops and self.student.train is None:
            raise ValueError("loops: further rounds train a student; give student.train")
        if self.loops and self.finetune is not None and self.finetune.train is None:
            raise ValueError("loops: further rounds finetune each student; give finetune.train")
        finetune = self.finetune.train if self.finetune is not None else None
        if finetune is not None and "init_checkpoint" in finetune.model_fields_set:
            raise ValueError("finetune.train.init_checkpoint: set by the run, leave it out")
        return self


@dataclass
class PlannedStage:
    """One stage of a run as the orchestrator runs it.

    Attributes:
        index: Position in the run (0-based).
        name: Unique in the run, e.g. ``teacher``, ``label-0``, ``loop1-student``.
        kind: What the stage does.
        spec_field: Where its settings are in the run spec (for error messages), e.g. ``student``.
        script: The job (``teacher``, ``label``, ``student``); ``None`` when the artifact is given.
        config: The job config as planned (JSON-able dict); ``None`` when given.
        outputs: ``{"checkpoint": path}`` or ``{"store": path}``.
    """

    index: int
    name: str
    kind: StageKind
    spec_field: str
    script: str | None
    config: dict | None
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def given(self) -> bool:
        return self.script is None


def plan_stages(spec: RunSpec, output: Path) -> list[PlannedStage]:
    """The stages of a run whose outputs go under ``output``.

    Paths in ``spec`` are used as they are (the caller resolves them first). Each planned job
    config is validated as the job will validate it.

    Raises:
        SpecError: A planned job config is invalid; the problem names the spec field.
    """
    plan = _Planner(output)
    model = plan.train("teacher", "teacher", spec.teacher)
    for i, store in enumerate(spec.label.stores):
        plan.given(f"store-{i}", "label", f"label.stores.{i}", {"store": store})
    given_stores = list(spec.label.stores)
    for loop in range(spec.loops + 1):
        prefix = f"loop{loop}-" if loop else ""
        stores = [] if loop else list(given_stores)
        for i, source in enumerate(spec.label.sources):
            stores.append(
                plan.label(f"{prefix}label-{i}", f"label.sources.{i}", spec.label, source, model)
            )
        pseudo = [
            PseudoSource(store=s, confidence_threshold=spec.label.confidence_threshold)
            for s in stores
        ]
        model = plan.train(f"{prefix}student", "student", spec.student, pseudo=pseudo)
        if spec.finetune is not None:
            model = plan.train(f"{prefix}finetune", "finetune", spec.finetune, init=model)
    return plan.stages


class _Planner:
    def __init__(self, output: Path) -> None:
        self.output = output
        self.stages: list[PlannedStage] = []

    def _add(self, name, kind, spec_field, script, config, outputs) -> None:
        self.stages.append(
            PlannedStage(len(self.stages), name, kind, spec_field, script, config, outputs)
        )

    def given(self, name: str, kind: StageKind, spec_field: str, outputs: dict[str, str]) -> None:
        self._add(name, kind, spec_field, None, None, outputs)

    def label(
        self, name: str, spec_field: str, label: LabelStage, source: DataSource, teacher: str
    ) -> str:
        """Plan a label job; returns the store it writes."""
        store = str(self.output / "stores" / f"{name}.zarr")
        values = label.options.model_dump(exclude_unset=True)
        values |= {"teacher_checkpoint": teacher, "source": source.model_dump(), "store": store}
        config = _validated(LabelJobConfig, spec_field, values)
        self._add(name, "label", spec_field, "label", config, {"store": store})
        return store

    def train(
        self,
        name: str,
        kind: StageKind,
        stage: TrainStage,
        pseudo: list[PseudoSource] | None = None,
        init: str | None = None,
    ) -> str:
        """Plan a training stage (or take its given checkpoint); returns its checkpoint."""
        spec_field = "student" if kind == "student" else kind
        if stage.checkpoint is not None:
            self.given(name, kind, spec_field, {"checkpoint": stage.checkpoint})
            return stage.checkpoint
        assert stage.train is not None  # TrainStage holds exactly one of the two
        values = stage.train.model_dump(exclude_unset=True)
        values |= {"run_name": name, "storage_path": str(self.output)}
        values["role"] = "teacher" if kind == "teacher" else "student"
        if pseudo:
            values["pseudo"] = [p.model_dump() for p in pseudo]
        if init is not None:
            values |= {"mode": "finetune", "init_checkpoint": init}
        config = _validated(TrainJobConfig, f"{spec_field}.train", values)
        script = "teacher" if kind == "teacher" else "student"
        checkpoint = str(self.output / name / "best.pt")
        self._add(name, kind, spec_field, script, config, {"checkpoint": checkpoint})
        return checkpoint


def _validated(cls: type[BaseModel], spec_field: str, values: dict) -> dict:
    """``values`` checked as ``cls`` (the job's config), as a JSON-able dict."""
    try:
        return cls.model_validate(values).model_dump(mode="json")
    except ValidationError as exc:
        problems = [(join_field(spec_field, *e["loc"]), e["msg"]) for e in exc.errors()]
        raise SpecError(problems) from exc


def join_field(*parts: object) -> str:
    """A dotted field name, e.g. ``student.train.schedule.crop_sizes``."""
    return ".".join(str(p) for p in parts if p != "")


class SpecError(ValueError):
    """A run spec that cannot run; ``problems`` lists (dotted field, message) pairs (-> 422)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{name}: {message}" for name, message in problems))
