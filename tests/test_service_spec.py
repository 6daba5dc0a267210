"""The run spec and its plan: which stages, in which order, connected by which paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.plan import RunSpec, SpecError, plan_stages
from services.spec_inputs import resolve_path

OUT = Path("/data/out")
LABELED = {"format": "cityscapes", "root": "/data/cs"}
TRAIN = {"labeled": LABELED, "epochs": 2, "schedule": {"crop_sizes": [32]}}


def _spec(**changes) -> RunSpec:
    values = {
        "name": "r",
        "teacher": {"train": TRAIN},
        "label": {"sources": [{"format": "folder", "root": "/data/a"}]},
        "student": {"train": TRAIN},
        **changes,
    }
    return RunSpec.model_validate(values)


def test_plain_run_is_teacher_label_student_connected_by_paths():
    stages = plan_stages(_spec(), OUT)
    assert [(s.name, s.kind, s.script) for s in stages] == [
        ("teacher", "teacher", "train"),
        ("label-0", "label", "label"),
        ("student", "student", "train"),
    ]
    teacher, label, student = stages
    assert teacher.config["run_name"] == "teacher" and teacher.config["role"] == "teacher"
    assert teacher.config["storage_path"] == "/data/out"
    assert teacher.outputs == {"checkpoint": "/data/out/teacher/best.pt"}
    assert label.config["teacher_checkpoint"] == "/data/out/teacher/best.pt"
    assert label.config["store"] == "/data/out/stores/label-0.zarr"
    assert student.config["pseudo"] == ["/data/out/stores/label-0.zarr"]
    assert student.config["confidence_threshold"] == 0.0
    assert student.config["role"] == "student" and student.config["mode"] == "joint"
    # A student starts from scratch unless it asks for the teacher's weights.
    assert student.config["init_checkpoint"] is None


def test_a_student_can_start_from_its_teacher_in_every_loop():
    stages = plan_stages(_spec(student={"train": TRAIN, "init_from_teacher": True}, loops=1), OUT)
    by_name = {s.name: s for s in stages}
    assert by_name["student"].config["init_checkpoint"] == "/data/out/teacher/best.pt"
    assert by_name["student"].config["mode"] == "joint"
    # In the next loop the student's teacher is the last student.
    assert by_name["loop1-student"].config["init_checkpoint"] == "/data/out/student/best.pt"


def test_given_artifacts_replace_stages_and_finetune_and_loops_chain_models():
    spec = _spec(
        teacher={"checkpoint": "/data/t.pt"},
        label={
            "sources": [{"format": "folder", "root": "/data/a"}],
            "stores": ["/data/old.zarr"],
        },
        student={"train": {**TRAIN, "confidence_threshold": 0.5}},
        finetune={"train": {**TRAIN, "labeled": {**LABELED, "n_shot": 2}}},
        loops=1,
    )
    stages = plan_stages(spec, OUT)
    assert [s.name for s in stages] == [
        "teacher",
        "store-0",
        "label-0",
        "student",
        "finetune",
        "loop1-label-0",
        "loop1-student",
        "loop1-finetune",
    ]
    by_name = {s.name: s for s in stages}
    assert by_name["teacher"].given and by_name["teacher"].config is None
    assert by_name["label-0"].config["teacher_checkpoint"] == "/data/t.pt"
    assert by_name["student"].config["pseudo"] == [
        "/data/old.zarr",
        "/data/out/stores/label-0.zarr",
    ]
    assert by_name["student"].config["confidence_threshold"] == 0.5
    assert by_name["finetune"].config["mode"] == "finetune"
    assert by_name["finetune"].config["init_checkpoint"] == "/data/out/student/best.pt"
    # The next round is labeled by the finetuned model and does not reuse the old stores.
    assert by_name["loop1-label-0"].config["teacher_checkpoint"] == "/data/out/finetune/best.pt"
    assert by_name["loop1-student"].config["pseudo"] == ["/data/out/stores/loop1-label-0.zarr"]
    assert by_name["loop1-finetune"].config["init_checkpoint"] == (
        "/data/out/loop1-student/best.pt"
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"teacher": {}}, "teacher"),
        ({"teacher": {"train": TRAIN, "checkpoint": "/x.pt"}}, "teacher"),
        ({"label": {}}, "label"),
        ({"student": {"train": {**TRAIN, "pseudo_per_real": -1}}}, "pseudo_per_real"),
        ({"student": {"train": {**TRAIN, "run_name": "x"}}}, "run_name"),
        ({"student": {"train": {**TRAIN, "pseudo": []}}}, "pseudo"),
        ({"label": {"sources": [LABELED], "options": {"store": "/s"}}}, "store"),
        ({"loops": 1, "label": {"stores": ["/s.zarr"]}}, "loops"),
        ({"finetune": {"train": {**TRAIN, "init_checkpoint": "/x.pt"}}}, "init_checkpoint"),
        ({"label": {"sources": [LABELED], "confidence_threshold": 0.5}}, "confidence_threshold"),
        ({"teacher": {"train": TRAIN, "init_from_teacher": True}}, "init_from_teacher"),
        ({"student": {"train": {**TRAIN, "soft_labels": True, "ohem": False}}}, "soft_labels"),
        ({"student": {"train": {**TRAIN, "soft_labels": True}}}, "OHEM"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(changes, field):
    with pytest.raises(ValidationError) as caught:
        _spec(**changes)
    assert field in str(caught.value)


def test_planned_config_errors_name_the_spec_field():
    # A teacher cannot finetune without a checkpoint to start from; only the planned config knows.
    spec = _spec(teacher={"train": {**TRAIN, "mode": "finetune"}})
    with pytest.raises(SpecError) as caught:
        plan_stages(spec, OUT)
    (field, message) = caught.value.problems[0]
    assert field == "teacher.train"
    assert "init_checkpoint" in message


def test_resolve_path_keeps_paths_inside_the_roots(tmp_path):
    root = tmp_path / "data"
    (root / "sets").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "link-out").symlink_to(tmp_path / "elsewhere")
    (root / "link-in").symlink_to(root / "sets")
    assert resolve_path("sets", [root], "f") == str(root / "sets")
    assert resolve_path(str(root / "link-in"), [root], "f") == str(root / "sets")
    for bad, problem in [
        ("sets/../sets", "must not contain '..'"),
        (str(tmp_path / "elsewhere"), "outside the allowed folders"),
        ("link-out/x.png", "outside the allowed folders"),
        ("/etc/passwd", "outside the allowed folders"),
    ]:
        with pytest.raises(SpecError) as caught:
            resolve_path(bad, [root], "teacher.train.labeled.root")
        (field, message) = caught.value.problems[0]
        assert field == "teacher.train.labeled.root" and problem in message, (bad, message)


def test_a_control_trains_the_student_settings_without_pseudo_labels_at_the_same_budget():
    student = {"train": {**TRAIN, "samples_per_epoch": 64}, "init_from_teacher": True}
    stages = plan_stages(_spec(student=student, control=True, loops=1), OUT)
    by_name = {s.name: s for s in stages}
    assert [s.name for s in stages] == [
        "teacher",
        "label-0",
        "control",
        "student",
        "loop1-label-0",
        "loop1-student",
    ]
    control, trained = by_name["control"].config, by_name["student"].config
    assert control["pseudo"] == [] and control["pseudo_per_real"] == 0.0
    assert control["samples_per_epoch"] == trained["samples_per_epoch"] == 64
    assert control["init_checkpoint"] == trained["init_checkpoint"] == "/data/out/teacher/best.pt"
    assert by_name["control"].outputs == {"checkpoint": "/data/out/control/best.pt"}
    # The next round's teacher is the student, not the control.
    assert by_name["loop1-label-0"].config["teacher_checkpoint"] == "/data/out/student/best.pt"
    with pytest.raises(ValidationError, match="samples_per_epoch"):
        _spec(control=True)


def test_a_soft_label_student_plans_with_soft_label_jobs():
    soft = {**TRAIN, "soft_labels": True, "ohem": False}
    spec = _spec(
        student={"train": soft},
        label={
            "sources": [{"format": "folder", "root": "/data/a"}],
            "options": {"soft_labels": True},
        },
    )
    by_name = {stage.name: stage for stage in plan_stages(spec, OUT)}
    assert by_name["label-0"].config["soft_labels"] is True
    assert by_name["student"].config["soft_labels"] is True


ONLINE = {
    **TRAIN,
    "method": "online",
    "centroid_sampling": False,
    "pseudo_per_real": 1.0,
    "samples_per_epoch": 40,
    "online": {"teacher_start": "teacher"},
}


def test_an_online_student_reads_the_sources_itself_and_its_control_the_same_real_steps():
    spec = _spec(student={"train": ONLINE, "init_from_teacher": True}, control=True, loops=1)
    stages = plan_stages(spec, OUT)
    # No label job: the online students read the unlabeled sources; each EMA teacher starts from
    # the model before it.
    assert [s.name for s in stages] == ["teacher", "control", "student", "loop1-student"]
    by_name = {s.name: s for s in stages}
    student = by_name["student"].config
    assert student["pseudo"] == [] and student["unlabeled"][0]["root"] == "/data/a"
    assert student["online_teacher"] == "/data/out/teacher/best.pt"
    assert by_name["loop1-student"].config["online_teacher"] == "/data/out/student/best.pt"
    # 40 samples at 1:1 are 20 real ones a student epoch: the control trains on those 20 real
    # samples an epoch (the same steps of the same batches), offline, from the same start.
    control = by_name["control"].config
    assert control["method"] == "offline" and control["pseudo_per_real"] == 0.0
    assert control["samples_per_epoch"] == 20 and control["unlabeled"] == []
    assert control["init_checkpoint"] == student["init_checkpoint"] == "/data/out/teacher/best.pt"


def test_an_online_student_with_centroid_crops_reads_label_stores():
    spec = _spec(student={"train": {**ONLINE, "centroid_sampling": True}})
    stages = plan_stages(spec, OUT)
    assert [s.name for s in stages] == ["teacher", "label-0", "student"]
    student = stages[-1].config
    assert student["pseudo"] == ["/data/out/stores/label-0.zarr"] and student["unlabeled"] == []
