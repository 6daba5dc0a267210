"""The run spec (what a user asks for: the REST body of ``POST /api/runs``, and the demo's config)
and the stages it plans.

A run is teacher -> label (one job per unlabeled source) -> student -> optional finetune, then
``loops`` further rounds in which the last model becomes the next teacher. Every stage either runs a
job or is given an existing artifact (``checkpoint`` / ``stores``). The spec is made of the
settings models the jobs' configs extend (``TrainSettings``, ``LabelSettings``); the fields that
connect the stages (run names, output folders, the teacher checkpoint of a label job, the pseudo
stores of a student, the checkpoint a finetune starts from) are filled in by the plan, so every
stage's output path is known when the run is created.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from core.configs import (
    DataSource,
    LabelJobConfig,
    LabelSettings,
    StrictModel,
    TrainJobConfig,
    TrainSettings,
)
from core.drift import TAUGHT_AWAY_BELOW
from core.errors import SelfTrainError
from core.evaluation import EvaluationSettings, ModelRef
from core.evaluation_run import EvaluateJobConfig
from core.gate import MODEL_NAME_PATTERN, GateSpec
from core.runfiles import RunFiles, resolve_checkpoint
from core.sampling import split_counts

StageKind = Literal["teacher", "label", "student", "control", "finetune", "evaluate"]
JobScript = Literal["train", "label", "evaluate"]
# Where a run folder keeps its evaluation stages' reports.
EVALUATIONS_DIR = "evaluations"


class TrainStage(StrictModel):
    """Train a model (``train``) or take an existing checkpoint (``checkpoint``).

    Attributes:
        train: The training settings.
        checkpoint: An existing checkpoint to use instead of training.
        init_from_teacher: Start from the weights of the model that labeled the student's pseudo
            labels (the teacher, or in a later loop the last model) instead of from scratch.
    """

    train: TrainSettings | None = None
    checkpoint: str | None = None
    init_from_teacher: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> TrainStage:
        if (self.train is None) == (self.checkpoint is None):
            raise ValueError("give either 'train' (run the stage) or 'checkpoint' (use it instead)")
        if self.init_from_teacher and self.train is None:
            raise ValueError("init_from_teacher: only a stage that trains can start from weights")
        return self


class LabelStage(StrictModel):
    """Label ``sources`` with the teacher, and/or use existing label ``stores``.

    Attributes:
        audit: Labeled images no stage trains on; every label job labels them too, with the same
            settings, and its store records how good its pseudo labels are (core.audit).
        taught_away_below: A class whose share of a store's pseudo labels is below this fraction
            of its labeled share (the audit's) is named as taught away (core.drift).
    """

    sources: list[DataSource] = Field(default_factory=list, max_length=64)
    stores: list[str] = Field(default_factory=list, max_length=256)
    options: LabelSettings = Field(default_factory=LabelSettings)
    audit: list[DataSource] = Field(default_factory=list, max_length=16)
    taught_away_below: float = Field(default=TAUGHT_AWAY_BELOW, gt=0, le=1)

    @model_validator(mode="after")
    def _some(self) -> LabelStage:
        if not self.sources and not self.stores:
            raise ValueError("give unlabeled 'sources' to label, or existing 'stores', or both")
        return self


class RunSpec(StrictModel):
    """One self-training run.

    Attributes:
        name: A label for people; need not be unique.
        output: Where the service puts the run's folder, ``<output>/<run id>``, for its checkpoints
            and label stores (inside a data root, not overlapping a dataset, the service's own
            folder or another run's); default: ``<workdir>/<run id>/outputs``. (``selftrain run``
            takes its folder from ``--output`` instead.)
        teacher: The first teacher.
        label: Unlabeled sources (one label job each) and/or existing stores.
        student: Trained on the labeled data of its settings plus the pseudo labels.
        finetune: Optional: the student finetuned on a few labels (``mode`` is set to ``finetune``).
        loops: Further rounds: the last model labels the sources again and a new student is trained.
        control: Also train a labeled-only control beside the (first) student: the student's
            settings and start, no pseudo labels, the same number of samples per epoch (an
            online student's control: its real samples, so the same steps of the same real
            batches); the student's gain over it is what the pseudo labels gave.
        evaluation: Named held-out test sets: each loop ends with an evaluation stage that
            scores its teacher, the control and its student on them (core.evaluation).
        gate: What a student must show there before it is promoted and registered (core.gate).
    """

    name: str = Field(min_length=1, max_length=100)
    output: str | None = None
    teacher: TrainStage
    label: LabelStage
    student: TrainStage
    finetune: TrainStage | None = None
    loops: int = Field(default=0, ge=0, le=10)
    control: bool = False
    evaluation: EvaluationSettings | None = None
    gate: GateSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> RunSpec:
        self._check_gate()
        if self.teacher.init_from_teacher:
            raise ValueError("teacher.init_from_teacher: the first teacher has no teacher")
        if self.loops and not self.label.sources:
            raise ValueError("loops: further rounds relabel label.sources; give at least one")
        if self.loops and self.student.train is None:
            raise ValueError("loops: further rounds train a student; give student.train")
        if self.loops and self.finetune is not None and self.finetune.train is None:
            raise ValueError("loops: further rounds finetune each student; give finetune.train")
        soft_student = self.student.train is not None and self.student.train.soft_labels
        if soft_student and self.label.sources and not self.label.options.soft_labels:
            raise ValueError(
                "student.train.soft_labels: the student reads class probabilities; set "
                "label.options.soft_labels: true so the label jobs keep them"
            )
        if self.control and (
            self.student.train is None or not self.student.train.samples_per_epoch
        ):
            raise ValueError(
                "control: the control trains at the student's budget; give "
                "student.train.samples_per_epoch"
            )
        return self

    def _check_gate(self) -> None:
        if self.gate is None:
            return
        if self.evaluation is None:
            raise ValueError("gate: the gate reads the evaluation's test sets; give evaluation")
        unknown = [t for t in self.gate.tests if t not in self.evaluation.tests]
        if unknown:
            raise ValueError(
                f"gate.tests: {unknown} are not in evaluation.tests {list(self.evaluation.tests)}"
            )
        if not self.control:
            raise ValueError(
                "gate: a student must beat its labeled-only control too; set control: true"
            )
        if self.gate.model_name is None and not re.match(MODEL_NAME_PATTERN, self.name):
            raise ValueError(
                f"gate.model_name: the run's name {self.name!r} cannot name a registered model "
                "(letters, digits, space, _ . -); give gate.model_name"
            )

    def model_name(self) -> str:
        """The name a promoted student is registered under."""
        return (self.gate.model_name if self.gate else None) or self.name


@dataclass
class PlannedStage:
    """One stage of a run as the orchestrator (or the demo) runs it.

    Attributes:
        index: Position in the run (0-based).
        name: Unique in the run, e.g. ``teacher``, ``label-0``, ``loop1-student``.
        kind: What the stage does.
        spec_field: Where its settings are in the run spec (for error messages), e.g. ``student``.
        script: The job (``train`` or ``label``); ``None`` when the artifact is given.
        config: The job config as planned (JSON-able dict); ``None`` when given.
        outputs: ``{"checkpoint": path}`` or ``{"store": path}``.
    """

    index: int
    name: str
    kind: StageKind
    spec_field: str
    script: JobScript | None
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
    control = None
    for i, store in enumerate(spec.label.stores):
        plan.given(f"store-{i}", "label", f"label.stores.{i}", {"store": store})
    labels = student_needs_stores(spec.student.train)
    for loop in range(spec.loops + 1):
        prefix = f"loop{loop}-" if loop else ""
        stores = [] if loop else list(spec.label.stores)
        for i, source in enumerate(spec.label.sources if labels else []):
            name, spec_field = f"{prefix}label-{i}", f"label.sources.{i}"
            stores.append(plan.label(name, spec_field, spec.label, source, model.checkpoint))
        unlabeled = [] if labels else list(spec.label.sources)
        init = model.checkpoint if spec.student.init_from_teacher else None
        if spec.control and not loop:
            control = plan.train("control", "control", spec.student, init=init)
        teacher = model
        model = plan.train(
            f"{prefix}student",
            "student",
            spec.student,
            pseudo=stores,
            init=init,
            teacher=model.checkpoint,
            unlabeled=unlabeled,
        )
        if spec.finetune is not None:
            model = plan.train(
                f"{prefix}finetune", "finetune", spec.finetune, init=model.checkpoint
            )
        if spec.evaluation is not None:
            plan.evaluate(f"{prefix}evaluate", spec, loop, (teacher, control, model), stores)
    return plan.stages


def student_needs_stores(settings: TrainSettings | None) -> bool:
    """Whether the student reads label stores, so the run labels its sources first: an offline
    student always; an online student only to centre its crops on the stores' centroids
    (``centroid_sampling``) or to learn their offline labels too (``online.offline_weight``);
    otherwise it reads the sources' images itself."""
    if settings is None or not settings.online_method:
        return True
    return settings.centroid_sampling or settings.online.offline_weight > 0


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
        if label.audit:
            values["audit"] = [audit.model_dump() for audit in label.audit]
        config = _validated(LabelJobConfig, f"{spec_field}", values)
        self._add(name, "label", spec_field, "label", config, {"store": store})
        return store

    def evaluate(
        self,
        name: str,
        spec: RunSpec,
        loop: int,
        models: tuple[ModelRef, ModelRef | None, ModelRef],
        stores: list[str],
    ) -> None:
        """Plan a loop's evaluation stage: its teacher, the control and its student scored on
        the test sets, gated when the spec has a gate."""
        assert spec.evaluation is not None
        teacher, control, student = models
        student_train = spec.student.train
        values = spec.evaluation.model_dump(exclude_unset=True)
        values |= {
            "loop": loop,
            "teacher": teacher.model_dump(),
            "control": None if control is None else control.model_dump(),
            "student": student.model_dump(),
            "gate": None if spec.gate is None else spec.gate.model_dump(),
            "model_name": spec.model_name() if spec.gate is not None else None,
            "stores": list(stores),
            "labeled": None if student_train is None else student_train.labeled.model_dump(),
            "pool": [source.model_dump() for source in spec.label.sources],
            "report": str(self.output / EVALUATIONS_DIR / f"{name}.json"),
            "run_folder": str(self.output),
        }
        config = _validated(EvaluateJobConfig, "evaluation", values)
        self._add(name, "evaluate", "evaluation", "evaluate", config, {"report": values["report"]})

    def train(
        self,
        name: str,
        kind: StageKind,
        stage: TrainStage,
        pseudo: list[str] | None = None,
        init: str | None = None,
        teacher: str | None = None,
        unlabeled: list[DataSource] | None = None,
    ) -> ModelRef:
        """Plan a training stage (or take its given checkpoint); returns its model.

        ``teacher`` is the checkpoint of the model that labels for the student (an online
        student's EMA teacher may start from it), ``unlabeled`` the sources an online student
        reads itself."""
        if stage.checkpoint is not None:
            self.given(name, kind, kind, {"checkpoint": stage.checkpoint})
            return ModelRef(stage=name, checkpoint=stage.checkpoint)
        assert stage.train is not None  # TrainStage holds exactly one of the two
        values = stage.train.model_dump(exclude_unset=True)
        values |= {"run_name": name, "storage_path": str(self.output)}
        values["role"] = "teacher" if kind == "teacher" else "student"
        if pseudo:
            values["pseudo"] = list(pseudo)
        if init is not None:
            values["init_checkpoint"] = init
        if kind == "finetune":
            values["mode"] = "finetune"
        if unlabeled:
            values["unlabeled"] = [source.model_dump() for source in unlabeled]
        if stage.train.online_method and stage.train.online.teacher_start == "teacher":
            values["online_teacher"] = teacher
        if kind == "control":
            values |= _control_values(stage.train)
        spec_field = "student" if kind == "control" else kind
        config = _validated(TrainJobConfig, f"{spec_field}.train", values)
        checkpoint = str(RunFiles(self.output / name).best)
        self._add(name, kind, spec_field, "train", config, {"checkpoint": checkpoint})
        return ModelRef(stage=name, checkpoint=checkpoint)


def _control_values(student: TrainSettings) -> dict:
    """What makes a student's settings its labeled-only control: no pseudo labels; an online
    student's control also takes only its real samples (the same steps of the same real batch:
    an online step adds its unlabeled batch beside the real one)."""
    values: dict = {"pseudo_per_real": 0.0}
    if student.online_method:
        values |= {"method": "offline", "online_teacher": None, "unlabeled": []}
        if student.samples_per_epoch:
            real, _ = split_counts(student.samples_per_epoch, student.pseudo_per_real)
            values["samples_per_epoch"] = real
    return values


def _validated(cls: type[BaseModel], spec_field: str, values: dict) -> dict:
    """``values`` checked as ``cls`` (the job's config), as a JSON-able dict."""
    try:
        return cls.model_validate(values).model_dump(mode="json")
    except ValidationError as exc:
        problems = [(join_field(spec_field, *e["loc"]), e["msg"]) for e in exc.errors()]
        raise SpecError(problems) from exc


def job_config(stage: PlannedStage) -> TrainJobConfig | LabelJobConfig | EvaluateJobConfig:
    """The planned config of a job stage as the job's own config model."""
    if stage.config is None:
        raise ValueError(f"stage {stage.name} runs no job; its artifact is given")
    classes = {"label": LabelJobConfig, "evaluate": EvaluateJobConfig, "train": TrainJobConfig}
    return classes[stage.script or "train"].model_validate(stage.config)


def with_existing_inputs(stage: PlannedStage) -> PlannedStage:
    """The stage with its input checkpoints swapped for those that exist: a training stage that
    kept no ``best.pt`` leaves ``last.pt`` (core.runfiles.resolve_checkpoint)."""
    config = dict(stage.config or {})
    for key in ("teacher_checkpoint", "init_checkpoint"):
        if config.get(key):
            found = resolve_checkpoint(config[key])
            if found is not None:
                config[key] = str(found)
    return replace(stage, config=config if stage.config is not None else None)


def stage_loop(name: str) -> int:
    """The loop a planned stage belongs to, from its name (``loop2-student`` -> 2, ``student``
    -> 0)."""
    match = re.match(r"^loop(\d+)-", name)
    return int(match.group(1)) if match else 0


def previous_loop_stage(name: str) -> str | None:
    """The same stage one loop earlier (``loop2-label-0`` -> ``loop1-label-0``, ``loop1-label-0``
    -> ``label-0``); None in the first loop."""
    loop = stage_loop(name)
    if loop == 0:
        return None
    base = name.removeprefix(f"loop{loop}-")
    return base if loop == 1 else f"loop{loop - 1}-{base}"


def join_field(*parts: object) -> str:
    """A dotted field name, e.g. ``student.train.schedule.crop_sizes``."""
    return ".".join(str(p) for p in parts if p != "")


class SpecError(SelfTrainError, ValueError):
    """A run spec that cannot run; ``problems`` lists (dotted field, message) pairs (-> 422)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{name}: {message}" for name, message in problems))
