"""segmentation_models_pytorch students (core/models/smp.py): the model contract, encoder weights
from a file and by name, and a Unet student that goes through every path a built-in model does:
jobs/student.py with centroid sampling, the label job, ``selftrain evaluate``, ``selftrain export``
and ``/api/predict``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from service_support import AUTH, FakeBackend, make_settings

from core.centroids import find_centroids
from core.checkpoint import load_checkpoint
from core.configs import (
    AugmentConfig,
    DataSource,
    LabelJobConfig,
    ScheduleConfig,
    TrainJobConfig,
    save_config,
)
from core.datasets import cityscapes
from core.errors import CheckpointError, ConfigError
from core.labels import CITYSCAPES
from core.models import build_model, reset_head
from core.store import LabelStore
from core.synth import write_synthetic_dataset
from core.weights import CACHE_ENV
from services.app import create_app
from services.artifacts import encode_png

pytest.importorskip("segmentation_models_pytorch")
torchvision = pytest.importorskip("torchvision")

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 128)
UNET = {"arch": "Unet", "encoder": "resnet18"}


def test_an_smp_model_keeps_the_contract_at_any_size() -> None:
    torch.manual_seed(0)
    model = build_model("smp", 5, arch="FPN", encoder="resnet18").eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 65, 97))  # not a multiple of the encoder's stride 32
        reset_head(model, 3)
        reset = model(torch.randn(1, 3, 64, 64))
    assert logits.shape == (2, 5, 65, 97) and reset.shape == (1, 3, 64, 64)
    assert model.classifier.kernel_size == (1, 1)


def test_unknown_architecture_and_encoder_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="no architecture 'UNet3000'.*DeepLabV3Plus"):
        build_model("smp", 5, arch="UNet3000")
    with pytest.raises(ConfigError, match="no encoder 'resnet7'"):
        build_model("smp", 5, encoder="resnet7")


def test_encoder_weights_from_a_file_equal_it_tensor_by_tensor(tmp_path) -> None:
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()  # torchvision's layout, fc included
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = build_model("smp", 4, **UNET, encoder_weights=str(path))
    loaded = model.net.encoder.state_dict()
    for name, tensor in state.items():
        if not name.startswith("fc."):
            assert torch.equal(loaded[name], tensor), name


def test_named_encoder_weights_come_from_the_cache_folder(tmp_path, monkeypatch) -> None:
    torch.manual_seed(2)
    state = torchvision.models.resnet50().state_dict()
    # torchvision's own file name for resnet50.IMAGENET1K_V2, with its hash prefix.
    torch.save(state, tmp_path / "resnet50-11ad3fa6.pth")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    model = build_model(
        "smp",
        4,
        arch="DeepLabV3Plus",
        encoder="resnet50",
        encoder_weights="torchvision:resnet50.IMAGENET1K_V2",
    )
    assert torch.equal(model.net.encoder.conv1.weight, state["conv1.weight"])
    assert torch.equal(
        model.net.encoder.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"]
    )


def test_encoder_weights_of_another_layout_are_refused_with_the_missing_keys(tmp_path) -> None:
    state = torchvision.models.resnet18().state_dict()
    del state["layer4.1.conv2.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(layer4.1.conv2.weight\)"):
        build_model("smp", 4, **UNET, encoder_weights=str(path))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Source scenes to train and validate on; target scenes in a store with their true labels
    as pseudo labels (what a perfect teacher would give)."""
    root = tmp_path_factory.mktemp("smp")
    write_synthetic_dataset(root / "data" / "source", 12, "source", SIZE, seed=0, split="train")
    write_synthetic_dataset(root / "data" / "source", 4, "source", SIZE, seed=1, split="val")
    write_synthetic_dataset(root / "data" / "target", 8, "target", SIZE, seed=2, split="train")
    target = cityscapes(root / "data" / "target", "train")
    store = LabelStore.create(
        root / "pseudo.zarr", target.image_paths(), [SIZE] * len(target), CITYSCAPES, {}, {}
    )
    for i in range(len(target)):
        label = target.load_label(i)
        store.write(i, label, np.full(SIZE, 230, np.uint8), find_centroids(label, min_area=4))
    return root


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_an_smp_student_trains_labels_evaluates_exports_and_predicts(scenes, tmp_path) -> None:
    source = DataSource(format="cityscapes", root=str(scenes / "data" / "source"), split="train")
    student = TrainJobConfig(
        role="student",
        run_name="unet",
        storage_path=str(tmp_path / "runs"),
        model="smp",
        model_options=UNET,
        labeled=source,
        pseudo=[str(scenes / "pseudo.zarr")],
        pseudo_per_real=1.0,
        centroid_sampling=True,
        samples_per_epoch=16,
        epochs=1,
        schedule=ScheduleConfig(kind="constant", crop_sizes=[64], base_batch_size=4),
        augment=AugmentConfig(scale_min=1.0, scale_max=1.0),
        ohem=False,
        cpus_per_worker=1,
        max_failures=0,
    )
    config_path = save_config(student, tmp_path / "student.yaml")
    trained = _run("jobs/student.py", "--config", str(config_path))
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint = tmp_path / "runs" / "unet" / "last.pt"
    state = load_checkpoint(checkpoint)
    assert (state["model_name"], state["model_options"]) == ("smp", UNET)
    metrics = [json.loads(line) for line in (checkpoint.parent / "metrics.jsonl").open()]
    assert [(m["n_real"], m["n_pseudo"]) for m in metrics] == [(8, 8)]  # 1:1, centroid sampled

    label = LabelJobConfig(
        teacher_checkpoint=str(checkpoint),
        source=DataSource(format="folder", root=str(scenes / "data" / "target" / "leftImg8bit")),
        store=str(tmp_path / "relabeled.zarr"),
        num_actors=1,
        cpus_per_actor=0.5,
    )
    labeled = _run("jobs/label.py", "--config", str(save_config(label, tmp_path / "label.yaml")))
    assert labeled.returncode == 0, labeled.stderr[-3000:]
    store = LabelStore.open(tmp_path / "relabeled.zarr")
    assert store.summary()["n_done"] == 8

    evaluated = _run(
        "-m",
        "selftrain.cli",
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--format",
        "cityscapes",
        "--root",
        str(scenes / "data" / "source"),
        "--split",
        "val",
        "--json",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert 0 <= result["miou"] <= 1 and result["n_images"] == 4

    exported = _run(
        "-m",
        "selftrain.cli",
        "export",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(tmp_path / "unet.onnx"),
        "--n",
        "2",
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    check = json.loads(exported.stdout.strip().splitlines()[-1])
    assert check["argmax_agreement"] >= 0.999 and (tmp_path / "unet.onnx").is_file()

    image = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    settings = make_settings(tmp_path, data_roots=[tmp_path])
    with TestClient(create_app(settings, FakeBackend(), orchestrate=False)) as client:
        response = client.post(
            "/api/predict",
            files={"image": ("x.png", encode_png(image))},
            data={"checkpoint": str(checkpoint), "output": "shares"},
            headers=AUTH,
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["height"], body["width"]) == (37, 53)
    assert abs(sum(c["share"] for c in body["classes"]) - 1) < 1e-6


def _timm_state(name: str, path: Path) -> dict[str, torch.Tensor]:
    """timm's own model ``name`` (no download) saved as the hub's model.safetensors."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(4)
    state = {k: v.contiguous() for k, v in timm.create_model(name).state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return state


def test_timm_weights_by_name_load_into_a_timm_encoder(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("SELFTRAIN_HF_URL", "http://127.0.0.1:9")  # offline: the cache must do
    state = _timm_state("resnet18", tmp_path / "timm" / "resnet18.a1_in1k" / "model.safetensors")
    model = build_model(
        "smp", 4, arch="FPN", encoder="tu-resnet18", encoder_weights="timm:resnet18.a1_in1k"
    )
    loaded = model.net.encoder.model.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_timm_weights_download_is_checked_against_the_hubs_sha256(tmp_path, monkeypatch):
    import functools
    import hashlib
    import http.server
    import threading

    from core.weights import resolve_weights

    served = tmp_path / "hub"
    file = served / "timm" / "resnet18.a1_in1k" / "resolve" / "main" / "model.safetensors"
    _timm_state("resnet18", file)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    etags = {"value": digest}

    class Hub(http.server.SimpleHTTPRequestHandler):
        def end_headers(self) -> None:  # the hub names an LFS file's SHA-256 in this header
            self.send_header("X-Linked-Etag", f'"{etags["value"]}"')
            super().end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Hub, directory=str(served))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("SELFTRAIN_HF_URL", f"http://127.0.0.1:{server.server_port}")
    try:
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / "wrong"))
        etags["value"] = "0" * 64
        with pytest.raises(CheckpointError, match="invalid hash value"):
            resolve_weights("timm:resnet18.a1_in1k")
        assert not (tmp_path / "wrong" / "timm" / "resnet18.a1_in1k" / "model.safetensors").exists()
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
        etags["value"] = digest
        path = resolve_weights("timm:resnet18.a1_in1k")
    finally:
        server.shutdown()
    assert path == tmp_path / "cache" / "timm" / "resnet18.a1_in1k" / "model.safetensors"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
