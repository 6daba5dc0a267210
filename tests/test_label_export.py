"""Label PNGs out of a model (``selftrain predict``) and out of a label store (``selftrain
store-export``): the Cityscapes format scores in cityscapesscripts' own evaluator exactly as
``selftrain evaluate`` scores the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.centroids import find_centroids
from core.checkpoint import save_checkpoint
from core.configs import DataSource
from core.datasets import cityscapes
from core.errors import ConfigError
from core.evaluate import evaluate_checkpoint
from core.io import read_label
from core.label_export import value_table
from core.labels import CAMVID, CITYSCAPES, CITYSCAPES_TRAIN_IDS
from core.models import build_model
from core.store import LabelStore
from core.synth import write_synthetic_dataset
from selftrain.cli import main as selftrain

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    write_synthetic_dataset(root / "city", 4, "source", (64, 128), seed=3, split="val")
    torch.manual_seed(0)  # an untrained model: its argmax spreads over a dozen classes
    model = build_model("small", 19)
    save_checkpoint(root / "model.pt", model, "small", {}, CITYSCAPES, epoch=1)
    return root


def test_the_cityscapes_table_writes_label_ids():
    table = value_table(CITYSCAPES, "cityscapes")
    # road 7, sidewalk 8, sky 23, car 26, bicycle 33; no class: unlabeled 0.
    assert [table[t] for t in (0, 1, 10, 13, 18, 255)] == [7, 8, 23, 26, 33, 0]
    assert (value_table(CAMVID, "png") == np.arange(256)).all()
    with pytest.raises(ConfigError, match="needs the 19 Cityscapes classes.*11 \\(camvid\\)"):
        value_table(CAMVID, "cityscapes")


def _cityscapes_scripts_scores(predictions: list[Path], truths: list[Path]) -> dict:
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as evaluator  # noqa: N813

    evaluator.args.quiet = True
    evaluator.args.JSONOutput = False
    evaluator.args.evalInstLevelScore = False  # the synthetic scenes have no instance ids
    return evaluator.evaluateImgLists(
        [str(p) for p in predictions], [str(t) for t in truths], evaluator.args
    )


def test_predict_in_cityscapes_format_scores_as_selftrain_evaluate(scenes, tmp_path):
    out = tmp_path / "predictions"
    args = ["predict", "--checkpoint", str(scenes / "model.pt"), "--source", str(scenes / "city")]
    code = selftrain([*args, "--source-format", "cityscapes", "--out", str(out), "--format",
                      "cityscapes"])  # fmt: skip
    assert code == 0
    truths = sorted((scenes / "city" / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    names = [t.name.replace("_gtFine_labelIds", "_leftImg8bit") for t in truths]
    predictions = [out / name for name in names]  # one city: its folder is the common root
    assert all(p.is_file() for p in predictions)
    theirs = _cityscapes_scripts_scores(predictions, truths)
    ours = evaluate_checkpoint(
        scenes / "model.pt", DataSource(format="cityscapes", root=str(scenes / "city"), split="val")
    )
    assert theirs["averageScoreClasses"] == pytest.approx(ours["miou"], abs=1e-12)
    for name, iou in ours["per_class_iou"].items():
        their = theirs["classScores"][name]
        assert (iou is None and np.isnan(their)) or their == pytest.approx(iou, abs=1e-12), name
    assert 0.01 < ours["miou"] < 0.5  # not a trivial case: several classes right and wrong


@pytest.mark.slow
def test_a_large_folder_goes_through_the_label_job_on_ray_and_gives_the_same_files(
    scenes, tmp_path
):
    direct, on_ray = tmp_path / "direct", tmp_path / "ray"
    base = [sys.executable, "-m", "selftrain.cli", "predict", "--checkpoint",
            str(scenes / "model.pt"), "--source", str(scenes / "city" / "leftImg8bit")]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": ""}
    for out, extra in ((direct, []), (on_ray, ["--ray-above", "0"])):
        done = subprocess.run(
            [*base, "--out", str(out), *extra], capture_output=True, text=True, env=env, cwd=REPO
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout.strip().splitlines()[-1])["images"] == 4
    files = sorted(p.relative_to(direct) for p in direct.rglob("*.png"))
    assert files == sorted(p.relative_to(on_ray) for p in on_ray.rglob("*.png"))
    for name in files:
        a, b = (read_label(d / name, CITYSCAPES_TRAIN_IDS) for d in (direct, on_ray))
        assert (a == b).mean() >= 0.999, name  # the same model; batching may flip a near tie


def test_store_export_writes_each_done_image_with_its_pseudo_label(scenes, tmp_path):
    data = cityscapes(scenes / "city", "val")
    store = LabelStore.create(
        tmp_path / "s.zarr", data.image_paths(), [(64, 128)] * 4, CITYSCAPES, {}, {}
    )
    for index in (0, 2):  # two of four images labeled
        label = data.load_label(index)
        store.write(index, label, np.full(label.shape, 200, np.uint8), find_centroids(label, 4))
    out = tmp_path / "exported"
    assert selftrain(["store-export", "--store", str(tmp_path / "s.zarr"), "--out", str(out)]) == 0
    written = sorted(out.rglob("*.png"))
    assert [p.name for p in written] == [Path(data.image_paths()[i]).name for i in (0, 2)]
    for path, index in zip(written, (0, 2), strict=True):
        np.testing.assert_array_equal(
            read_label(path, CITYSCAPES_TRAIN_IDS), data.load_label(index)
        )
