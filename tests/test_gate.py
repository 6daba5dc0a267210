"""The promotion gate's verdict (core.gate) on hand-made evaluations, and how a run spec plans its
evaluation stages (core.plan)."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.evaluation import Evaluation, HeldOutScore, ModelScores
from core.evaluation_run import EvaluateJobConfig
from core.gate import GateSpec, verdict
from core.plan import RunSpec, job_config, plan_stages


def scores(miou: float, road: float, car: float) -> HeldOutScore:
    return HeldOutScore(
        miou=miou, pixel_accuracy=0.9, per_class_iou={"road": road, "car": car}, n_images=4
    )


def evaluation(teacher: HeldOutScore, control: HeldOutScore, student: HeldOutScore) -> Evaluation:
    models = [
        ModelScores(role=role, stage=role, checkpoint=f"/runs/{role}/best.pt", tests={"held": s})
        for role, s in (("teacher", teacher), ("control", control), ("student", student))
    ]
    return Evaluation(loop=0, tests=["held"], models=models)


def test_a_student_that_beats_teacher_and_control_is_promoted():
    found = verdict(
        evaluation(scores(0.40, 0.6, 0.2), scores(0.42, 0.6, 0.24), scores(0.45, 0.62, 0.28)),
        GateSpec(min_gain=0.02, max_class_drop=0.05),
    )
    assert found.status == "promoted" and found.promoted
    (row,) = found.table
    assert row.gain_over_teacher == pytest.approx(0.05)
    assert row.gain_over_control == pytest.approx(0.03)
    assert row.passed and row.student == 0.45
    assert [c.drop for c in found.classes] == [pytest.approx(-0.02), pytest.approx(-0.08)]
    assert "+5.0 mIoU over the teacher and +3.0 over the control" in found.reasons[0]


def test_a_student_below_its_control_is_not_promoted_and_the_reason_has_the_numbers():
    found = verdict(
        evaluation(scores(0.40, 0.6, 0.2), scores(0.46, 0.6, 0.3), scores(0.45, 0.62, 0.28)),
        GateSpec(min_gain=0.0),
    )
    assert found.status == "not promoted"
    assert found.reasons == [
        "held: the student gains -1.0 mIoU over the labeled-only control (45.0 against 46.0), "
        "below the required +0.0"
    ]


def test_a_class_falling_more_than_allowed_fails_the_gate_by_name():
    found = verdict(
        evaluation(scores(0.40, 0.6, 0.5), scores(0.40, 0.6, 0.4), scores(0.50, 0.9, 0.44)),
        GateSpec(min_gain=0.01, max_class_drop=0.05),
    )
    assert not found.promoted
    (row,) = found.table
    assert (row.worst_class, row.worst_class_drop) == ("car", pytest.approx(0.06))
    assert found.reasons == [
        "held: class car falls 6.0 IoU below the teacher (44.0 against 50.0), more than the "
        "allowed 5.0"
    ]


def test_a_missing_control_fails_the_gate_rather_than_passing_it():
    data = evaluation(scores(0.4, 0.6, 0.2), scores(0.4, 0.6, 0.2), scores(0.5, 0.7, 0.3))
    data.models = [m for m in data.models if m.role != "control"]
    found = verdict(data, GateSpec())
    assert found.reasons == ["held: no labeled-only control to compare with"]


HELD = {"format": "cityscapes", "root": "/data/t", "split": "test"}
TRAIN = {
    "labeled": {"format": "cityscapes", "root": "/data/synth", "split": "train"},
    "epochs": 2,
    "samples_per_epoch": 16,
}


def spec(**extra) -> dict:
    return {
        "name": "street",
        "teacher": {"train": TRAIN},
        "label": {
            "sources": [{"format": "folder", "root": "/data/pool"}],
            "audit": [{"format": "cityscapes", "root": "/data/synth", "split": "val"}],
        },
        "student": {"train": TRAIN, "init_from_teacher": True},
        "control": True,
        "evaluation": {"tests": {"held": {**HELD}}},
        "gate": {"min_gain": 0.01},
        **extra,
    }


def test_every_loop_ends_with_an_evaluation_of_its_teacher_control_and_student():
    stages = plan_stages(RunSpec.model_validate(spec(loops=1)), Path("/runs/r1"))
    assert [s.name for s in stages] == [
        "teacher", "label-0", "control", "student", "evaluate",
        "loop1-label-0", "loop1-student", "loop1-evaluate",
    ]  # fmt: skip
    first, second = (job_config(s) for s in stages if s.kind == "evaluate")
    assert isinstance(first, EvaluateJobConfig)
    assert (first.teacher.stage, first.control.stage, first.student.stage) == (
        "teacher", "control", "student",
    )  # fmt: skip
    assert second.teacher.checkpoint == "/runs/r1/student/best.pt"
    assert second.control.checkpoint == "/runs/r1/control/best.pt"
    assert second.student.checkpoint == "/runs/r1/loop1-student/best.pt"
    assert second.stores == ["/runs/r1/stores/loop1-label-0.zarr"]
    assert second.report == "/runs/r1/evaluations/loop1-evaluate.json"
    assert (second.model_name, second.gate.min_gain) == ("street", 0.01)
    label = job_config(stages[1])
    assert [a.split for a in label.audit] == ["val"]


def test_a_gate_needs_a_control_test_sets_it_knows_and_a_name_a_registry_takes():
    with pytest.raises(ValidationError, match="set control: true"):
        RunSpec.model_validate(spec(control=False))
    with pytest.raises(ValidationError, match=r"\['other'\] are not in evaluation.tests"):
        RunSpec.model_validate(spec(gate={"tests": ["other"]}))
    with pytest.raises(ValidationError, match="gate.model_name: the run's name 'a/b'"):
        RunSpec.model_validate(spec(name="a/b"))
    RunSpec.model_validate(spec(name="a/b", gate={"model_name": "street-v2"}))


def test_scores_a_demo_has_already_make_an_evaluation_the_gate_reads():
    from core.evaluation import ModelRef, evaluation_of

    def result(miou: float) -> dict:
        return {"miou": miou, "pixel_accuracy": 0.9, "per_class_iou": {"road": miou}, "n_images": 3}

    scored = [
        (role, ModelRef(stage=role, checkpoint=f"/r/{role}.pt"), {"source": result(miou)})
        for role, miou in (("teacher", 0.30), ("control", 0.35), ("student", 0.33))
    ]
    found = verdict(evaluation_of(0, scored), GateSpec())
    assert found.status == "not promoted"
    assert found.table[0].gain_over_control == pytest.approx(-0.02)
