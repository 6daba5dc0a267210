"""The demo: its pieces on hand-made inputs, and `selftrain demo --quick` end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.centroids import find_centroids
from core.configs import AugmentConfig, LabelJobConfig, ScheduleConfig, TrainJobConfig
from core.datasets import cityscapes
from core.gate import GateSpec
from core.labels import CITYSCAPES
from core.plan import job_config
from core.store import LabelStore
from selftrain.demo import (
    DemoConfig,
    DemoPaths,
    DemoScenes,
    audit_pseudo_labels,
    class_table,
    demo_results,
    format_table,
    plan_demo,
    pseudo_label_quality,
    write_demo_data,
    write_pseudo_label_picture,
)

# Ray Train's controller collects each epoch's report on its next poll (2 s by default); the quick
# demo's epochs are far shorter.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}


def test_class_table_lists_the_classes_any_model_has():
    teacher = {"per_class_iou": {"road": 0.5, "sky": None, "car": 0.25, "bus": None}}
    student = {"per_class_iou": {"road": 0.75, "sky": None, "car": None, "bus": 0.1}}
    rows = class_table({"teacher": teacher, "student": student})
    assert rows == [
        {"class": "road", "iou": {"teacher": 0.5, "student": 0.75}},
        {"class": "car", "iou": {"teacher": 0.25, "student": None}},
        {"class": "bus", "iou": {"teacher": None, "student": 0.1}},
    ]


def test_format_table_prints_percent_and_the_students_signed_differences():
    rows = [{"class": "road", "iou": {"teacher": 0.5, "control": 0.6, "student": 0.75}}]
    summary = [("mIoU", {"teacher": 0.4, "control": 0.3, "student": 0.35})]
    text = format_table(rows, summary, ["teacher", "control", "student"])
    lines = text.splitlines()
    assert lines[0].split() == ["class", "teacher", "control", "student", "s-t", "s-c"]
    assert lines[1].split() == ["road", "50.0", "60.0", "75.0", "+25.0", "+15.0"]
    assert lines[-1].split() == ["mIoU", "40.0", "30.0", "35.0", "-5.0", "+5.0"]


def test_the_demo_results_carry_the_gates_verdict_on_both_held_out_domains(tmp_path):
    def result(miou: float, car: float) -> dict:
        return {
            "miou": miou, "pixel_accuracy": 0.9, "per_class_iou": {"road": 0.8, "car": car},
            "n_images": 6,
        }  # fmt: skip

    # On the source scenes the student gains 3 over the teacher and 1 over the control; on the
    # target scenes it is 1 below the control.
    scores = {
        "teacher": {"source": result(0.30, 0.40), "target": result(0.20, 0.30)},
        "control": {"source": result(0.32, 0.40), "target": result(0.23, 0.30)},
        "student": {"source": result(0.33, 0.39), "target": result(0.22, 0.30)},
    }
    checkpoints = {name: f"runs/{name}/best.pt" for name in scores}
    config = DemoConfig.quick()
    found = demo_results(config, DemoPaths(tmp_path), scores, checkpoints, None, {})
    verdict = found["verdict"]
    assert (found["student_miou"], found["student_target_miou"]) == (0.33, 0.22)
    assert (verdict["status"], verdict["checkpoint"]) == ("not promoted", "runs/student/best.pt")
    assert [row["test"] for row in verdict["table"]] == ["source", "target"]
    assert [row["passed"] for row in verdict["table"]] == [True, False]
    assert verdict["reasons"] == [
        "target: the student gains -1.0 mIoU over the labeled-only control (22.0 against 23.0), "
        "below the required +0.0"
    ]
    json.dumps(found)  # results.json

    # A gate that lets a student be 2 points below the teacher and the control.
    lenient = config.model_copy(update={"gate": GateSpec(min_gain=-0.02)})
    found = demo_results(lenient, DemoPaths(tmp_path), scores, checkpoints, None, {})
    assert found["verdict"]["status"] == "promoted"


def test_pseudo_label_picture_puts_each_image_next_to_its_colored_label(tmp_path):
    images = []
    for i, color in enumerate([(255, 0, 0), (0, 0, 255)]):
        path = tmp_path / f"image{i}.png"
        cv2.imwrite(str(path), np.full((8, 16, 3), color[::-1], np.uint8))  # written as BGR
        images.append(str(path))
    store = LabelStore.create(tmp_path / "store", images, [(8, 16)] * 2, CITYSCAPES, {}, {})
    for i in range(2):
        label = np.full((8, 16), 13 if i == 0 else 0, np.uint8)  # car, road
        store.write(i, label, np.full((8, 16), 255, np.uint8), find_centroids(label))

    out = write_pseudo_label_picture(tmp_path / "store", tmp_path / "picture.png", rows=2, gap=4)

    picture = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert picture.shape == (8 + 4 + 8, 16 + 4 + 16, 3)
    palette = CITYSCAPES.palette()
    assert picture[0, 0].tolist() == [255, 0, 0]  # first image
    assert picture[0, 20].tolist() == palette[13].tolist()  # its label: car
    assert picture[8, 0].tolist() == [255, 255, 255]  # the gap between rows
    assert picture[12, 0].tolist() == [0, 0, 255]  # second image
    assert picture[12, 20].tolist() == palette[0].tolist()  # its label: road


def test_demo_data_has_no_labels_for_the_unlabeled_scenes(tmp_path):
    scenes = DemoScenes(
        height=32, width=64, n_labeled=3, n_unlabeled_source=2, n_unlabeled_target=1, n_test=2
    )
    paths = DemoPaths(tmp_path)
    counts = write_demo_data(paths, scenes)
    assert counts == {
        "source_train": 3,
        "source_test": 2,
        "target_test": 2,
        "source_unlabeled": 2,
        "target_unlabeled": 1,
    }
    assert len(cityscapes(paths.source, "train")) == 3
    assert len(cityscapes(paths.target, "test")) == 2
    assert len(list(paths.unlabeled.rglob("*.png"))) == 3
    assert not (paths.unlabeled / "gtFine").exists()
    # Their true labels lie outside every folder a stage reads, for scoring the pseudo labels.
    truth = sorted(p.name for p in paths.unlabeled_truth.rglob("*_labelTrainIds.png"))
    assert len(truth) == 3 and truth[0].startswith("synth_source_")


def test_pseudo_label_quality_scores_each_domain_against_the_set_aside_labels(tmp_path):
    scenes = DemoScenes(
        height=32, width=64, n_labeled=1, n_unlabeled_source=2, n_unlabeled_target=2, n_test=1
    )
    paths = DemoPaths(tmp_path)
    write_demo_data(paths, scenes)
    images = sorted(str(p) for p in paths.unlabeled.rglob("*.png"))
    store = LabelStore.create(tmp_path / "s.zarr", images, [(32, 64)] * 4, CITYSCAPES, {}, {})
    truths = [
        cv2.imread(
            str(
                paths.unlabeled_truth
                / Path(i).parent.name
                / Path(i).name.replace("_leftImg8bit", "_gtFine_labelTrainIds")
            ),
            cv2.IMREAD_UNCHANGED,
        )
        for i in images
    ]
    for index, truth in enumerate(truths):
        # Source scenes: the true labels; target scenes: everything "road" (class 0).
        label = truth if "synth_source" in images[index] else np.zeros_like(truth)
        store.write(index, label, np.full(label.shape, 200, np.uint8), find_centroids(label, 1))
    quality = pseudo_label_quality(tmp_path / "s.zarr", paths.unlabeled_truth)
    assert quality["source"] == {"miou": 1.0, "pixel_accuracy": 1.0}
    target = np.stack(truths[2:])
    road_share = (target == 0).sum() / (target != 255).sum()
    assert quality["target"]["pixel_accuracy"] == pytest.approx(road_share)

    # The same labels as the label job's audit: over both domains, every pixel in the bin of
    # confidence 200/255 = 0.78 (0.7..0.8), whose accuracy is the share right.
    audit = audit_pseudo_labels(tmp_path / "s.zarr", paths.unlabeled_truth)
    source = np.stack(truths[:2])
    counted = (source != 255).sum() + (target != 255).sum()
    right = (source != 255).sum() + (target == 0).sum()
    assert (audit.n_images, audit.n_failed, audit.n_pixels) == (4, 0, counted)
    assert audit.pixel_accuracy == pytest.approx(right / counted)
    assert [b.pixels for b in audit.bins] == [0] * 7 + [counted] + [0] * 2
    assert audit.ece == pytest.approx(abs(right / counted - 200 / 255))


# A new value for every setting the demo sets; a knob the demo adds without an entry here fails
# the test below, so each knob is shown to reach the job that uses it.
TRAIN_KNOBS = {
    "model": "fast_scnn",
    "schedule": ScheduleConfig(kind="constant", crop_sizes=[48], base_batch_size=2),
    "augment": AugmentConfig(scale_min=0.5, scale_max=2.0, blur=False),
    "lr": 0.01,
    "cpus_per_worker": 0.5,
    "max_failures": 1,
    "seed": 7,
    "epochs": 2,
    "samples_per_epoch": 5,
    "pseudo_per_real": 1.0,
    "centroid_sampling": False,
    "confidence_threshold": 0.7,
}
LABEL_KNOBS = {
    "mode": "slide",
    "batch_size": 2,
    "num_actors": 2,
    "cpus_per_actor": 0.5,
    "min_centroid_area": 9,
    "overwrite": False,
}


def _planned(tmp_path: Path, config: DemoConfig) -> dict:
    return {stage.name: job_config(stage) for stage in plan_demo(DemoPaths(tmp_path), config)}


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_every_training_knob_of_the_demo_reaches_its_job(tmp_path, quick, stage):
    config = DemoConfig.quick() if quick else DemoConfig.default()
    settings = getattr(config.run, stage).train
    for name in sorted(settings.model_fields_set - {"labeled"}):
        assert name in TRAIN_KNOBS, f"demo knob {stage}.train.{name} has no test value"
        changed = settings.model_copy(update={name: TRAIN_KNOBS[name]})
        run = config.run.model_copy(
            update={stage: getattr(config.run, stage).model_copy(update={"train": changed})}
        )
        job = _planned(tmp_path, config.model_copy(update={"run": run}))[stage]
        assert isinstance(job, TrainJobConfig)
        assert getattr(job, name) == TRAIN_KNOBS[name], name
        assert getattr(job, name) != getattr(settings, name), name
    # The labeled scenes are the ones the demo writes, under its work folder.
    job = _planned(tmp_path, config)[stage]
    assert job.labeled.root == str(DemoPaths(tmp_path).source)


@pytest.mark.parametrize("quick", [False, True])
def test_every_labeling_knob_of_the_demo_reaches_the_label_job(tmp_path, quick):
    config = DemoConfig.quick() if quick else DemoConfig.default()
    options = config.run.label.options
    for name in sorted(options.model_fields_set):
        assert name in LABEL_KNOBS, f"demo knob label.options.{name} has no test value"
        label = config.run.label.model_copy(
            update={"options": options.model_copy(update={name: LABEL_KNOBS[name]})}
        )
        run = config.run.model_copy(update={"label": label})
        job = _planned(tmp_path, config.model_copy(update={"run": run}))["label-0"]
        assert isinstance(job, LabelJobConfig)
        assert getattr(job, name) == LABEL_KNOBS[name], name
        assert getattr(job, name) != getattr(options, name), name
    # The knob that once stopped at the demo: the store's settings carry the demo's value.
    job = _planned(tmp_path, config)["label-0"]
    assert job.inference().identity()["min_centroid_area"] == options.min_centroid_area


def test_the_demo_student_starts_from_the_teacher_only_when_asked(tmp_path):
    config = DemoConfig.default()
    planned = _planned(tmp_path, config)
    runs = DemoPaths(tmp_path).runs
    assert planned["student"].init_checkpoint == str(runs / "teacher" / "best.pt")
    assert planned["student"].pseudo == [str(runs / "stores" / "label-0.zarr")]
    assert planned["label-0"].teacher_checkpoint == str(runs / "teacher" / "best.pt")
    student = config.run.student.model_copy(update={"init_from_teacher": False})
    scratch = config.model_copy(update={"run": config.run.model_copy(update={"student": student})})
    assert _planned(tmp_path, scratch)["student"].init_checkpoint is None


def test_the_demo_seed_sets_scenes_and_both_runs():
    config = DemoConfig.default(seed=5)
    assert config.scenes.seed == 5
    assert config.run.teacher.train.seed == 5 and config.run.student.train.seed == 5


@pytest.mark.slow
def test_quick_demo_command_runs_end_to_end(tmp_path):
    """`selftrain demo --quick --json` as a user runs it: its own in-process Ray, a table, and a
    last line of JSON."""
    workdir = tmp_path / "demo"
    env = {**os.environ, **RAY_ENV}
    command = [sys.executable, "-m", "selftrain.cli", "demo", "--quick", "--json"]
    done = subprocess.run(
        [*command, "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout.rstrip("\n")
    result = json.loads(printed.splitlines()[-1])

    assert {"teacher_miou", "student_miou", "control_miou", "workdir"} <= result.keys()
    for model in ("teacher", "control", "student"):
        for key in (f"{model}_miou", f"{model}_target_miou"):
            assert 0.0 <= result[key] <= 1.0, key
    assert result["workdir"] == str(workdir.resolve())
    artifacts = result["artifacts"]
    checkpoints = ("teacher_checkpoint", "control_checkpoint", "student_checkpoint")
    for key in (*checkpoints, "pseudo_label_picture", "results"):
        assert os.path.isfile(artifacts[key]), key
    scenes = DemoConfig.quick().scenes
    store = LabelStore.open(artifacts["label_store"], read_only=True)
    assert len(store.done_indices()) == scenes.n_unlabeled_source + scenes.n_unlabeled_target
    picture = cv2.imread(artifacts["pseudo_label_picture"])
    assert picture.shape[1] == 2 * scenes.width + 4
    assert json.loads(Path(artifacts["results"]).read_text()) == result

    # Every class of the held-out source scenes has a row, in the result and in the printed table.
    test_set = cityscapes(workdir / "data" / "source", "test")
    present = set()
    for i in range(len(test_set)):
        present |= {int(c) for c in np.unique(test_set.load_label(i)) if c != 255}
    listed = {row["class"] for row in result["per_class"]}
    assert {CITYSCAPES.names[c] for c in present} <= listed
    for name in listed:
        assert f"\n{name} " in printed
    assert "mIoU source" in printed
    quality = result["pseudo_label_quality"]
    assert set(quality) == {"source", "target"}
    assert all(0 <= q["miou"] <= 1 and 0 <= q["pixel_accuracy"] <= 1 for q in quality.values())
    assert "pseudo labels against the unlabeled scenes' true labels: source scenes" in printed
    assert "The student started from the teacher's weights and trained 3 epochs" in printed
    assert "the control trained the same way on the labeled scenes only" in printed
    # The label store's audit against the scenes' truth, and the gate's verdict on the scores.
    audit = result["audit"]
    assert (audit["n_images"], audit["n_failed"]) == (len(store.done_indices()), 0)
    assert "audit of the label store: " in printed
    verdict = result["verdict"]
    assert verdict["status"] in ("promoted", "not promoted") and verdict["reasons"]
    assert [row["test"] for row in verdict["table"]] == ["source", "target"]
    assert verdict["table"][0]["student"] == result["student_miou"]
    assert f"gate, loop 0: student {verdict['status'].upper()}" in printed
    check_tracked_runs(workdir, DemoConfig.quick())


def check_tracked_runs(workdir: Path, config: DemoConfig) -> None:
    """The demo's MLflow store, read back with MLflow's own client: one run for the demo, each
    stage nested under it, per-epoch metrics, the config as params, checkpoints as artifacts."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("selftrain")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"demo seed 0", "teacher", "label-0", "control", "student"}
    parent = runs.pop("demo seed 0")
    assert parent.info.status == "FINISHED"
    for name, run in runs.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id, name
        assert run.info.status == "FINISHED", name
    for name in ("teacher", "control", "student"):
        train = config.run.student.train if name != "teacher" else config.run.teacher.train
        losses = client.get_metric_history(runs[name].info.run_id, "loss")
        assert [m.step for m in sorted(losses, key=lambda m: m.step)] == list(range(train.epochs))
        params = runs[name].data.params
        assert params["model"] == "small" and params["epochs"] == str(train.epochs)
        artifacts = [a.path for a in client.list_artifacts(runs[name].info.run_id)]
        assert artifacts in (["best.pt"], ["last.pt"]), (name, artifacts)
    label = runs["label-0"].data
    n_unlabeled = config.scenes.n_unlabeled_source + config.scenes.n_unlabeled_target
    assert label.metrics["n_done"] == n_unlabeled
    label_artifacts = client.list_artifacts(runs["label-0"].info.run_id)
    assert "store_summary.json" in [a.path for a in label_artifacts]


def test_the_demo_trains_a_labeled_only_control_at_the_students_budget(tmp_path):
    config = DemoConfig.default()
    planned = _planned(tmp_path, config)
    control, student = planned["control"], planned["student"]
    assert control.pseudo == [] and control.pseudo_per_real == 0
    assert control.samples_per_epoch == student.samples_per_epoch
    assert control.epochs == student.epochs and control.init_checkpoint == student.init_checkpoint
    without = config.model_copy(update={"run": config.run.model_copy(update={"control": False})})
    assert "control" not in _planned(tmp_path, without)
