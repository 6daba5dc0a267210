"""`selftrain export`: an ONNX file that ONNX Runtime runs like PyTorch, any height and width, or
nothing written at all."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from service_support import write_checkpoint

from core.checkpoint import load_model, save_checkpoint
from core.export import Deployable, ExportError, export_onnx
from core.labels import CAMVID
from core.models import build_model
from core.synth import generate_scene
from selftrain.cli import main

onnxruntime = pytest.importorskip("onnxruntime")


def scenes(sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [generate_scene(rng, size)[0] for size in sizes]


def test_export_runs_like_pytorch_at_a_size_it_was_not_checked_on(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "small.pt")
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--n", "3"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["argmax_agreement"] >= 0.999 and result["max_abs_logit_diff"] < 1e-3
    assert (result["images"], result["sizes"], result["opset"]) == (3, ["192x320", "256x512"], 18)
    assert result["output"] == "logits: float32 (N, 19, H, W)"
    # A size and batch the check never used: the same logits as PyTorch.
    images = np.stack(scenes([(70, 90), (70, 90)]))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": images})
    model, _, _ = load_model(checkpoint)
    with torch.inference_mode():
        expected = Deployable(model.eval())(torch.from_numpy(images)).numpy()
    assert logits.shape == (2, 19, 70, 90)
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_an_export_below_the_agreement_is_refused_and_nothing_is_written(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "small.pt")
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="agree with PyTorch's on 100.000 % of the pixels, below"):
        export_onnx(checkpoint, out, scenes([(64, 64)]), min_agreement=1.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.pt"]


def test_pyramid_pooling_needs_a_fixed_size(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model("fast_scnn", CAMVID.num_classes)
    checkpoint = save_checkpoint(tmp_path / "fast.pt", model, "fast_scnn", {}, CAMVID, epoch=1)
    out = tmp_path / "fast.onnx"
    args = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--n", "2"]
    assert main(args) == 2
    assert "export it for one input size" in capsys.readouterr().err
    assert not out.exists()
    assert main([*args, "--size", "96x128"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["input"] == "image: uint8 RGB (N, 96, 128, 3)"
    assert result["argmax_agreement"] >= 0.999 and out.is_file()
