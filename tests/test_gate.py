"""The promotion gate's verdict (core.gate) on hand-made evaluations, and how a run spec plans its
evaluation stages (core.plan)."""

import json
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


def test_scores_a_demo_has_already_get_the_gates_verdict():
    from core.gate import verdict_of_scores

    def result(miou: float, car: float) -> dict:
        return {
            "miou": miou, "pixel_accuracy": 0.9, "per_class_iou": {"road": 0.8, "car": car},
            "n_images": 3,
        }  # fmt: skip

    # The demo's names: teacher, control and student; student below its control by 2 points.
    scores = {
        "teacher": {"source": result(0.30, 0.40)},
        "control": {"source": result(0.35, 0.45)},
        "student": {"source": result(0.33, 0.30)},
    }
    checkpoints = {name: f"/r/{name}/best.pt" for name in scores}
    found = verdict_of_scores(scores, checkpoints, GateSpec(max_class_drop=0.05))
    assert (found.status, found.student, found.checkpoint) == (
        "not promoted", "student", "/r/student/best.pt",
    )  # fmt: skip
    (row,) = found.table
    assert row.gain_over_teacher == pytest.approx(0.03)
    assert row.gain_over_control == pytest.approx(-0.02)
    assert (row.worst_class, row.worst_class_drop) == ("car", pytest.approx(0.10))
    assert len(found.reasons) == 2 and "class car falls 10.0 IoU" in found.reasons[1]
    # A benchmark's names: which model plays which role; roles in teacher, control, student order.
    renamed = {"student_cp": scores["teacher"], "control_cp": scores["teacher"]}
    renamed["teacher"] = scores["teacher"]
    roles = {"student": "student_cp", "control": "control_cp", "teacher": "teacher"}
    same = verdict_of_scores(renamed, {}, GateSpec(min_gain=0.0), models=roles)
    assert same.status == "promoted" and same.student == "student_cp"
    with pytest.raises(ValueError, match=r"no scores of \['online'\]"):
        verdict_of_scores(scores, checkpoints, GateSpec(), models={"student": "online"})


def test_selftrain_promoted_lists_the_promoted_models_newest_first_with_their_gate_tables(
    tmp_path, capsys
):
    from core.gate import GateRow
    from core.registry import Registration, record_path, write_record
    from selftrain.cli import main as cli

    def promote(run: str, name: str, loop: int, student: float, when: float) -> None:
        row = GateRow(
            test="held", teacher=0.40, control=0.42, student=student,
            gain_over_teacher=student - 0.40, gain_over_control=student - 0.42,
            worst_class="car", worst_class_drop=0.02, passed=True,
        )  # fmt: skip
        folder = tmp_path / "runs" / run
        write_record(
            Registration(
                name=name, uri=str(record_path(folder, loop)), checkpoint=f"{folder}/s.pt",
                run_folder=str(folder), loop=loop, student="student", teacher="t.pt",
                gate=[row], registered_at=when,
            )
        )  # fmt: skip

    promote("a", "street", 0, 0.45, when=1_700_000_000)
    promote("b", "street", 1, 0.47, when=1_700_003_600)
    promote("c", "night", 0, 0.43, when=1_700_007_200)
    broken = record_path(tmp_path / "runs" / "d", 0)
    broken.parent.mkdir(parents=True)
    broken.write_text("{")

    assert cli(["promoted", "--runs", str(tmp_path / "runs"), "--name", "street"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("street  ") and "2023-11-14 23:13 UTC  loop 1" in lines[0]
    assert lines[2].split() == ["held", "40.0", "42.0", "47.0", "+7.0", "+5.0", "car", "-2.0"]
    assert "loop 0" in lines[3] and lines[5].split()[3] == "45.0"
    assert len(lines) == 6 and "night" not in out
    assert "skipped" in err and "d/promoted/loop0.json: not JSON" in err

    assert cli(["promoted", "--runs", str(tmp_path / "runs"), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["loop"]) for r in listed] == [("night", 0), ("street", 1), ("street", 0)]
