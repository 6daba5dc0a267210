"""The label job and a two-worker student on a two-node Ray cluster on this machine
(ray.cluster_utils.Cluster, one CPU per node): the teacher actors and the training workers land on
both nodes, and the store and the student equal those of a one-node run with two CPUs.

The work reports the node it runs on through files (the actors and workers are other processes);
the recorders are closures defined here, so that Ray ships them by value.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from ray.cluster_utils import Cluster

from core.checkpoint import load_checkpoint, save_checkpoint
from core.configs import DataSource, LabelJobConfig, TrainJobConfig
from core.labeling import TeacherPredictor
from core.labels import CITYSCAPES
from core.models import build_model
from core.runfiles import RunFiles
from core.store import LabelStore
from core.synth import write_synthetic_dataset
from jobs.label import ModelStep
from jobs.label import run as run_label_job
from jobs.train import run_training

pytestmark = pytest.mark.slow

SIZE = (64, 128)
N_TARGET = 8
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """Synthetic source scenes (8 to train on, 4 to validate on), 8 target scenes to label, and a
    teacher (the small model, seeded)."""
    root = tmp_path_factory.mktemp("two_nodes")
    write_synthetic_dataset(root / "source", 8, "source", SIZE, seed=0, split="train")
    write_synthetic_dataset(root / "source", 4, "source", SIZE, seed=1, split="val")
    write_synthetic_dataset(root / "target", N_TARGET, "target", SIZE, seed=2, split="train")
    torch.manual_seed(0)
    model = build_model("small", CITYSCAPES.num_classes)
    teacher = save_checkpoint(root / "teacher.pt", model, "small", {}, CITYSCAPES, epoch=1)
    return root, teacher


@pytest.fixture
def ray_env():
    saved = {key: os.environ.get(key) for key in RAY_ENV}
    os.environ.update(RAY_ENV)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def label_and_train(root: Path, teacher: Path, out: Path) -> tuple[set[str], set[str]]:
    """The label job (two teacher actors of one CPU) and a student (two workers of one CPU) on
    the Ray instance this process is connected to; returns the nodes each ran on."""
    out.mkdir()
    label_config = LabelJobConfig(
        teacher_checkpoint=str(teacher),
        source=DataSource(format="cityscapes", root=str(root / "target"), split="train"),
        store=str(out / "labels.zarr"),
        layout="fused",
        num_actors=2,
        cpus_per_actor=1.0,
        batch_size=2,
        min_centroid_area=4,
        images_per_shard=4,
    )
    actor_nodes = out / "actor_nodes.txt"
    settings = label_config.inference()

    def recording_teacher():
        import ray

        with open(actor_nodes, "a") as f:
            f.write(ray.get_runtime_context().get_node_id() + "\n")
        return TeacherPredictor(teacher, settings)

    result = run_label_job(label_config, progress_bar=False, step=ModelStep(recording_teacher))
    assert result["n_done"] == N_TARGET

    train_config = TrainJobConfig(
        role="student",
        run_name="student",
        storage_path=str(out / "runs"),
        model="small",
        labeled=DataSource(format="cityscapes", root=str(root / "source"), split="train"),
        pseudo=[label_config.store],
        pseudo_per_real=1.0,
        epochs=2,
        samples_per_epoch=16,
        ohem=False,
        num_workers=2,
        cpus_per_worker=1,
        max_failures=0,
        seed=3,
    )
    worker_nodes = out / "worker_nodes.txt"

    def record_node(event):
        import ray

        with open(worker_nodes, "a") as f:
            f.write(ray.get_runtime_context().get_node_id() + "\n")

    run_training(train_config, epoch_hook=record_node)
    return set(actor_nodes.read_text().split()), set(worker_nodes.read_text().split())


def test_label_job_and_student_use_both_nodes_and_equal_a_one_node_run(data, ray_env, tmp_path):
    root, teacher = data
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        one_node = ray.nodes()[0]["NodeID"]
        actors, workers = label_and_train(root, teacher, tmp_path / "one")
        assert actors == workers == {one_node}
    finally:
        ray.shutdown()

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        assert len(nodes) == 2
        actors, workers = label_and_train(root, teacher, tmp_path / "two")
        # One CPU per node and two actors (workers) of one CPU each: one on each node.
        assert actors == nodes and workers == nodes
    finally:
        ray.shutdown()
        cluster.shutdown()

    one = LabelStore.open(tmp_path / "one" / "labels.zarr")
    two = LabelStore.open(tmp_path / "two" / "labels.zarr")
    assert one.image_paths() == two.image_paths()
    for index in range(N_TARGET):
        np.testing.assert_array_equal(one.label(index), two.label(index))
        np.testing.assert_array_equal(one.confidence(index), two.confidence(index))
    np.testing.assert_array_equal(one.centroids(), two.centroids())

    runs = [RunFiles.of(tmp_path / name / "runs", "student") for name in ("one", "two")]
    losses = [[row.loss for row in files.read_metrics()] for files in runs]
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    weights = [load_checkpoint(files.last)["model"] for files in runs]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
