"""Review by teacher–student disagreement (core.disagreement): against another store of the same
images, and against a student checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.centroids import find_centroids
from core.checkpoint import load_model, save_checkpoint
from core.inference import predict
from core.io import read_image, write_image
from core.labels import CAMVID
from core.models import build_model
from core.review import select_for_review
from core.store import LabelStore
from selftrain.cli import main as cli

SIZE = (12, 16)
N = 5


def make_store(path, images, changed: dict[int, int]) -> LabelStore:
    """Every image left half sky (0), right half building (1); in image k the first
    ``changed[k]`` of its 12 rows are building."""
    store = LabelStore.create(path, [str(p) for p in images], [SIZE] * len(images), CAMVID, {}, {})
    for k in range(len(images)):
        label = np.zeros(SIZE, np.uint8)
        label[:, 8:] = 1
        label[: changed.get(k, 0)] = 1
        store.write(k, label, np.full(SIZE, 200, np.uint8), find_centroids(label, 1))
    return store


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    return [
        write_image(tmp_path / "f" / f"{k}.png", rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8))
        for k in range(N)
    ]


def test_images_where_the_stores_differ_most_come_first(images, tmp_path):
    teacher = make_store(tmp_path / "t.zarr", images, {})
    # The student's store lists the images in another order and relabels rows of two of them:
    # image 3: 6 rows -> 6 x 8 of 192 pixels differ (0.25); image 1: 3 rows (0.125).
    student = make_store(tmp_path / "s.zarr", images[::-1], {4 - 3: 6, 4 - 1: 3})
    from core.disagreement import store_disagreement

    scores = store_disagreement(teacher, student, teacher.done_indices())
    assert scores.tolist() == [0.0, 0.125, 0.0, 0.25, 0.0]
    assert select_for_review(teacher, 2, "disagreement", against=str(tmp_path / "s.zarr")) == [3, 1]

    assert (
        cli(
            [
                "review",
                "export",
                "--store",
                str(tmp_path / "t.zarr"),
                "--n",
                "2",
                "--by",
                "disagreement",
                "--against",
                str(tmp_path / "s.zarr"),
                "--format",
                "label-studio",
                "--out",
                str(tmp_path / "review"),
            ]
        )  # fmt: skip
        == 0
    )
    tasks = json.loads((tmp_path / "review" / "tasks.json").read_text())
    assert [t["data"]["selftrain_name"] for t in tasks] == ["3", "1"]
    assert tasks[0]["predictions"][0]["model_version"] == "teacher (disagreement)"


def test_a_student_checkpoint_ranks_the_images_its_prediction_differs_on(images, tmp_path):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "s.pt", build_model("small", CAMVID.num_classes), "small", {}, CAMVID, epoch=1
    )
    model, _, _ = load_model(checkpoint)
    store = make_store(tmp_path / "t.zarr", images, {})
    # Image 2's pseudo label is the student's own prediction: it agrees everywhere.
    with torch.inference_mode():
        own, _ = predict(model.eval(), read_image(images[2]))
    store.write(2, own, np.full(SIZE, 200, np.uint8), find_centroids(own, 1))
    from core.disagreement import model_disagreement

    scores = model_disagreement(store, [0, 1, 2, 3, 4], str(checkpoint))
    assert scores[2] == 0.0
    ranked = select_for_review(store, N, "disagreement", student=str(checkpoint))
    assert ranked[-1] == 2


def test_disagreement_needs_exactly_one_other_model(images, tmp_path):
    store = make_store(tmp_path / "t.zarr", images, {})
    with pytest.raises(ValueError, match="give the other model as a store"):
        select_for_review(store, 2, "disagreement")
