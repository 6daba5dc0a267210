"""The promotion gate: what a student must show on held-out test sets before it is promoted.

On each gated test set the student must gain at least ``min_gain`` mIoU over its teacher and over
the labeled-only control, and no class may fall more than ``max_class_drop`` IoU below the
teacher's. Both are in IoU units, 0..1 (0.01 is one mIoU point). `verdict` reads a loop's
evaluation (core.evaluation) and says ``promoted`` or ``not promoted`` and why, with the table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from core.configs import StrictModel
from core.evaluation import ROLES, Evaluation, HeldOutScore, ModelRef, ModelRole, evaluation_of

VerdictStatus = Literal["promoted", "not promoted"]
# How a stage that a failed gate kept from running says so (gate.stop_on_fail).
GATE_STOPPED = "not run (gate.stop_on_fail)"
# A registered model's name (MLflow's registry and the run folder's records).
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,99}$"


class GateSpec(StrictModel):
    """What a student must show before it is promoted (REST ``gate``).

    Attributes:
        min_gain: mIoU (0..1) the student must gain over its teacher and over the labeled-only
            control on every gated test set; 0.01 is one point, 0 means "not worse".
        max_class_drop: IoU (0..1) a class may lose against the teacher on a gated test set.
        tests: The test sets (names in ``evaluation.tests``) the gate reads; default: all.
        stop_on_fail: In a multi-loop run, stop at the first loop whose student fails.
        model_name: The name a promoted student is registered under (default: the run's name).
    """

    min_gain: float = Field(default=0.0, ge=-1, le=1)
    max_class_drop: float = Field(default=0.05, ge=0, le=1)
    tests: list[str] = Field(default_factory=list, max_length=16)
    stop_on_fail: bool = False
    model_name: str | None = Field(default=None, pattern=MODEL_NAME_PATTERN)


class GateRow(BaseModel):
    """The gate on one test set (mIoU and gains in 0..1)."""

    test: str
    teacher: float | None
    control: float | None
    student: float | None
    gain_over_teacher: float | None
    gain_over_control: float | None
    worst_class: str | None = Field(description="The class that lost most against the teacher")
    worst_class_drop: float | None = Field(description="Its IoU loss (teacher - student)")
    passed: bool


class ClassRow(BaseModel):
    """One class on one test set: IoU of each model, and the student's drop below the teacher."""

    test: str
    name: str
    teacher: float | None
    control: float | None
    student: float | None
    drop: float | None
    passed: bool


class Verdict(BaseModel):
    """A loop's student at the gate.

    Attributes:
        loop: The loop.
        student: The student's stage (its finetune's, when the run finetunes).
        checkpoint: Its checkpoint.
        status: ``promoted`` or ``not promoted``.
        reasons: Why (each failed rule with its numbers; for a promoted student, what it showed).
        gate: The gate applied.
        table: One row per gated test set.
        classes: Per class and gated test set.
    """

    loop: int
    student: str
    checkpoint: str
    status: VerdictStatus
    reasons: list[str]
    gate: GateSpec
    table: list[GateRow]
    classes: list[ClassRow]

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _gain(student: float | None, other: float | None) -> float | None:
    return None if student is None or other is None else student - other


def _classes(test: str, scores: dict[str, HeldOutScore | None], gate: GateSpec) -> list[ClassRow]:
    teacher, student = scores["teacher"], scores["student"]
    assert teacher is not None and student is not None
    control = scores.get("control")
    rows = []
    for name, t in teacher.per_class_iou.items():
        s = student.per_class_iou.get(name)
        c = None if control is None else control.per_class_iou.get(name)
        drop = None if t is None or s is None else t - s
        passed = drop is None or drop <= gate.max_class_drop
        rows.append(
            ClassRow(
                test=test, name=name, teacher=t, control=c, student=s, drop=drop, passed=passed
            )
        )
    return rows


def _row(test: str, scores: dict[str, HeldOutScore | None], gate: GateSpec) -> tuple:
    """The gate on one test set: its row, its class rows and the reasons it fails."""
    teacher, control, student = (scores.get(r) for r in ("teacher", "control", "student"))
    miou = {r: None if s is None else s.miou for r, s in scores.items()}
    over_teacher = _gain(miou["student"], miou["teacher"])
    over_control = _gain(miou["student"], miou.get("control"))
    reasons = []
    if teacher is None or student is None or over_teacher is None:
        reasons.append(f"{test}: no mIoU of the student and its teacher to compare")
    elif over_teacher < gate.min_gain:
        reasons.append(
            f"{test}: the student gains {_points(over_teacher)} mIoU over its teacher "
            f"({100 * miou['student']:.1f} against {100 * miou['teacher']:.1f}), below the "
            f"required {_points(gate.min_gain)}"
        )
    if control is None or over_control is None:
        reasons.append(f"{test}: no labeled-only control to compare with")
    elif over_control < gate.min_gain:
        reasons.append(
            f"{test}: the student gains {_points(over_control)} mIoU over the labeled-only "
            f"control ({100 * miou['student']:.1f} against {100 * miou['control']:.1f}), below "
            f"the required {_points(gate.min_gain)}"
        )
    classes = _classes(test, scores, gate) if teacher and student else []
    drops = [c for c in classes if c.drop is not None]
    worst = max(drops, key=lambda c: c.drop or 0.0) if drops else None
    for c in classes:
        if not c.passed:
            reasons.append(
                f"{test}: class {c.name} falls {100 * (c.drop or 0):.1f} IoU below the teacher "
                f"({100 * (c.student or 0):.1f} against {100 * (c.teacher or 0):.1f}), more than "
                f"the allowed {100 * gate.max_class_drop:.1f}"
            )
    row = GateRow(
        test=test,
        teacher=miou["teacher"],
        control=miou.get("control"),
        student=miou["student"],
        gain_over_teacher=over_teacher,
        gain_over_control=over_control,
        worst_class=None if worst is None else worst.name,
        worst_class_drop=None if worst is None else worst.drop,
        passed=not reasons,
    )
    return row, classes, reasons


def verdict(evaluation: Evaluation, gate: GateSpec) -> Verdict:
    """The gate's verdict on ``evaluation``'s student.

    Raises:
        ValueError: The evaluation has no student, or a gated test set was not evaluated.
    """
    student = evaluation.model("student")
    if student is None:
        raise ValueError(f"loop {evaluation.loop}: the evaluation has no student to gate")
    tests = gate.tests or evaluation.tests
    missing = [t for t in tests if t not in evaluation.tests]
    if missing:
        raise ValueError(f"gate.tests: {missing} were not evaluated (have {evaluation.tests})")
    table, classes, reasons = [], [], []
    for test in tests:
        scores = {m.role: m.tests.get(test) for m in evaluation.models}
        row, rows, why = _row(test, scores, gate)
        table.append(row)
        classes.extend(rows)
        reasons.extend(why)
    if not reasons:
        reasons = [
            f"{r.test}: gains {_points(r.gain_over_teacher or 0)} mIoU over the teacher and "
            f"{_points(r.gain_over_control or 0)} over the control (at least "
            f"{_points(gate.min_gain)} required); no class falls more than "
            f"{100 * gate.max_class_drop:.1f} IoU below the teacher"
            for r in table
        ]
        status: VerdictStatus = "promoted"
    else:
        status = "not promoted"
    return Verdict(
        loop=evaluation.loop,
        student=student.stage,
        checkpoint=student.checkpoint,
        status=status,
        reasons=reasons,
        gate=gate,
        table=table,
        classes=classes,
    )


def verdict_of_scores(
    scores: dict[str, dict[str, dict]],
    checkpoints: dict[str, str],
    gate: GateSpec,
    models: dict[ModelRole, str] | None = None,
    loop: int = 0,
) -> Verdict:
    """The gate on scores a demo or a benchmark has already (no evaluation stage).

    Args:
        scores: ``{model: {test set: core.evaluate.evaluate_checkpoint's result}}``.
        checkpoints: ``{model: checkpoint}`` (``?`` in the verdict for a model not in it).
        gate: The gate.
        models: Which model is the teacher, the control and the student (``{role: model}``);
            default: the models named ``teacher``, ``control`` and ``student``, where present.
        loop: The loop the student belongs to.

    Raises:
        ValueError: A named model has no scores, or there is no student.
    """
    models = models or {role: role for role in ROLES if role in scores}
    missing = [name for name in models.values() if name not in scores]
    if missing:
        raise ValueError(f"no scores of {missing} (have {sorted(scores)})")
    scored = [
        (role, ModelRef(stage=name, checkpoint=checkpoints.get(name, "?")), scores[name])
        for role, name in sorted(models.items(), key=lambda item: ROLES.index(item[0]))
    ]
    return verdict(evaluation_of(loop, scored), gate)


def stops_run(gate: GateSpec | None, found: Verdict | None) -> str | None:
    """Why the rest of a run does not run after this verdict (``gate.stop_on_fail`` and a student
    that was not promoted), or None."""
    if gate is None or not gate.stop_on_fail or found is None or found.promoted:
        return None
    return f"{GATE_STOPPED}: loop {found.loop}'s student {found.student} was not promoted"


def table_lines(table: list[GateRow]) -> list[str]:
    """The gate table as text: mIoU in %, the student's gains, the class that lost most."""

    def pct(value: float | None) -> str:
        return "     n/a" if value is None else f"{100 * value:8.1f}"

    def gain(value: float | None) -> str:
        return "    n/a" if value is None else f"{100 * value:+7.1f}"

    lines = [
        f"  {'test':12s} {'teacher':>8s} {'control':>8s} {'student':>8s} {'vs t':>7s} "
        f"{'vs c':>7s}  worst class"
    ]
    for row in table:
        worst = "" if row.worst_class is None else f"{row.worst_class} "
        if row.worst_class_drop is not None:
            worst += gain(-row.worst_class_drop).strip()
        lines.append(
            f"  {row.test:12s} {pct(row.teacher)} {pct(row.control)} {pct(row.student)} "
            f"{gain(row.gain_over_teacher)} {gain(row.gain_over_control)}  {worst}"
        )
    return lines


def describe(found: Verdict) -> list[str]:
    """The verdict as lines of text: the status, the table, and the reasons."""
    lines = [f"gate, loop {found.loop}: {found.student} {found.status.upper()}"]
    lines += table_lines(found.table)
    lines += [f"  - {reason}" for reason in found.reasons]
    return lines
