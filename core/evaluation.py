"""A run's models scored on named held-out test sets: what its evaluation stage writes and the
promotion gate (core.gate) reads.

Each loop of a run with ``evaluation`` has an evaluation stage after its student: it scores the
loop's teacher, the labeled-only control (when the run trains one) and the loop's student (its
finetuned model when the run finetunes) on every test set, with core.evaluate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from core.configs import MAX_CPUS, MAX_GPUS, DataSource, InferenceMode, StrictModel

ModelRole = Literal["teacher", "control", "student"]
ROLES: tuple[ModelRole, ...] = ("teacher", "control", "student")
# A test set's name: a key in JSON, a column on the dashboard, part of an MLflow metric name.
TestName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
MAX_TEST_SETS = 16


class EvaluationSettings(StrictModel):
    """How a run's models are scored (REST ``evaluation``).

    Attributes:
        tests: Named held-out labeled sets no stage trains on, e.g. ``{"heldout": {...}}``.
        mode: Inference mode (core.inference).
        gpus: GPUs of the evaluation task (0: CPU).
        cpus: Its CPUs.
    """

    tests: dict[TestName, DataSource] = Field(min_length=1, max_length=MAX_TEST_SETS)
    mode: InferenceMode = "whole"
    gpus: float = Field(default=0.0, ge=0, le=MAX_GPUS)
    cpus: float = Field(default=1.0, gt=0, le=MAX_CPUS)


class ModelRef(StrictModel):
    """A model of a run: the stage that made it and its checkpoint."""

    stage: str = Field(min_length=1, max_length=64)
    checkpoint: str = Field(min_length=1)


class HeldOutScore(BaseModel):
    """One model on one test set (core.evaluate.evaluate_checkpoint's numbers).

    Attributes:
        miou: Mean IoU over the classes with a defined IoU (0..1).
        pixel_accuracy: Share of pixels predicted right.
        per_class_iou: Class -> IoU (None: the class is neither in the set nor predicted).
        n_images: Images of the set.
    """

    miou: float | None
    pixel_accuracy: float | None
    per_class_iou: dict[str, float | None]
    n_images: int


class ModelScores(BaseModel):
    """One model's scores on every test set.

    Attributes:
        role: ``teacher``, ``control`` or ``student``.
        stage: The stage that trained it (or the spec field that gave it).
        checkpoint: The checkpoint scored.
        tests: Test set name -> its score.
    """

    role: ModelRole
    stage: str
    checkpoint: str
    tests: dict[str, HeldOutScore]


class Evaluation(BaseModel):
    """One loop's evaluation: its models on the run's test sets.

    Attributes:
        loop: The loop (0: the first).
        tests: The test sets' names, in the spec's order.
        models: Teacher, control (when trained) and student, in that order.
    """

    loop: int = Field(ge=0)
    tests: list[str]
    models: list[ModelScores]

    @model_validator(mode="after")
    def _one_per_role(self) -> Evaluation:
        roles = [m.role for m in self.models]
        if len(set(roles)) != len(roles):
            raise ValueError(f"each role once, got {roles}")
        return self

    def model(self, role: ModelRole) -> ModelScores | None:
        """The model of ``role``, if evaluated."""
        return next((m for m in self.models if m.role == role), None)


# Scores a checkpoint on a test set: (checkpoint, source) -> evaluate_checkpoint's result.
Scorer = Callable[[str, DataSource], dict]


def evaluate_models(
    loop: int,
    models: Sequence[tuple[ModelRole, ModelRef]],
    tests: dict[str, DataSource],
    score: Scorer,
) -> Evaluation:
    """Score every model on every test set.

    Args:
        loop: The loop the models belong to.
        models: ``(role, model)`` pairs.
        tests: Test set name -> labeled source.
        score: Scores one checkpoint on one source (e.g. core.evaluate.evaluate_checkpoint with
            the settings' mode and device).
    """
    scored = [
        (role, ref, {name: score(ref.checkpoint, source) for name, source in tests.items()})
        for role, ref in models
    ]
    return evaluation_of(loop, scored)


def evaluation_of(
    loop: int, scored: Sequence[tuple[ModelRole, ModelRef, dict[str, dict]]]
) -> Evaluation:
    """An `Evaluation` of scores a caller has already (a demo, a benchmark): per model its role,
    its stage and checkpoint, and ``{test set: core.evaluate.evaluate_checkpoint's result}``; the
    test sets are the first model's, in its order."""
    models = [
        ModelScores(
            role=role,
            stage=ref.stage,
            checkpoint=ref.checkpoint,
            tests={
                name: HeldOutScore(
                    miou=result["miou"],
                    pixel_accuracy=result["pixel_accuracy"],
                    per_class_iou=result["per_class_iou"],
                    n_images=result["n_images"],
                )
                for name, result in results.items()
            },
        )
        for role, ref, results in scored
    ]
    tests = list(scored[0][2]) if scored else []
    return Evaluation(loop=loop, tests=tests, models=models)
