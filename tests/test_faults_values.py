"""Issue 26 item 7, values checked where they enter: model options and the inputs a run's stages
need from each other are refused when the run, config or job is created (a 422 naming the field,
or one line and exit code 2), not after a teacher has trained."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_support import AUTH, FakeBackend, make_settings, small_run_spec, write_scenes

from core.configs import TrainJobConfig, load_config
from core.errors import ConfigError
from core.labels import CITYSCAPES
from core.store import LabelStore
from services.app import create_app

BAD_OPTIONS = [
    (
        "deeplabv3plus_resnet50",
        {"output_stride": 1},
        "model_options: output_stride: must be the number 8 or 16, got 1",
    ),
    (
        "deeplabv3plus_resnet50",
        {"output_stride": "16"},
        "model_options: output_stride: must be the number 8 or 16, got '16'",
    ),
    (
        "deeplabv3plus_resnet50",
        {"backbone_weights": "torchvision:resnet50.IMAGENET9K"},
        "model_options: backbone_weights: no torchvision weights "
        "'torchvision:resnet50.IMAGENET9K'; known: torchvision:resnet50.IMAGENET1K_V1",
    ),
    (
        "deeplabv3plus_resnet50",
        {"backbone_weights": "torchvision:resnet101.IMAGENET1K_V2"},
        "model_options: backbone_weights: 'torchvision:resnet101.IMAGENET1K_V2' are weights of "
        "a resnet101; the model's backbone is resnet50",
    ),
    (
        "pspnet_resnet101",
        {"backbone_weights": "timm:../../etc/passwd"},
        "model_options: backbone_weights: 'timm:../../etc/passwd': expected "
        "timm:<model>.<tag>, e.g. timm:resnet50.a1_in1k",
    ),
    (
        "small",
        {"depth": 9},
        "model_options: depth: model 'small' takes no option 'depth'; it takes: none",
    ),
    ("resnet9000", {}, "model: unknown model 'resnet9000'; known: deeplabv3plus_resnet101"),
]
SMP_OPTIONS = [
    ({"arch": "Unet3"}, "model_options: arch: smp has no architecture 'Unet3'; it has: DPT"),
    ({"encoder": "resnet9000"}, "model_options: encoder: smp has no encoder 'resnet9000'"),
    ({"encoder": "tu-nonet"}, "model_options: encoder: timm has no model 'nonet'"),
    (
        {"encoder": "tu-resnet50", "encoder_weights": "timm:resnet50.no_such_tag"},
        "model_options: encoder_weights: 'timm:resnet50.no_such_tag': timm publishes no such "
        "weights",
    ),
]


def job_config(tmp_path: Path, model: str, options: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        f"run_name: r\nstorage_path: {tmp_path}/runs\n"
        f"labeled: {{format: folder, root: {tmp_path}}}\n"
        f"model: {model}\nmodel_options: {options!r}\n".replace("'", '"')
    )
    return path


@pytest.mark.parametrize(("model", "options", "message"), BAD_OPTIONS)
def test_a_job_config_with_options_no_model_takes_is_refused_when_read(
    tmp_path, model, options, message
):
    path = job_config(tmp_path, model, options)
    with pytest.raises(ConfigError) as caught:
        load_config(path, TrainJobConfig)
    assert str(caught.value).startswith(f"{path}: {message}")


@pytest.mark.skipif(
    importlib.util.find_spec("segmentation_models_pytorch") is None, reason="the smp extra"
)
@pytest.mark.parametrize(("options", "message"), SMP_OPTIONS)
def test_smp_architectures_encoders_and_weights_that_do_not_exist_are_refused(
    tmp_path, options, message
):
    with pytest.raises(ConfigError) as caught:
        load_config(job_config(tmp_path, "smp", options), TrainJobConfig)
    assert message in str(caught.value)


def test_a_missing_extra_is_named_with_how_to_install_it(tmp_path, monkeypatch):
    real = importlib.util.find_spec

    def without(name, *args):
        return None if name in ("segmentation_models_pytorch", "timm") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without)
    with pytest.raises(ConfigError) as caught:
        load_config(job_config(tmp_path, "smp", {}), TrainJobConfig)
    assert str(caught.value).endswith(
        "model: 'smp' needs segmentation_models_pytorch, which is not installed: "
        "pip install -e '.[smp]'"
    )
    with pytest.raises(ConfigError, match=r"timm weights need timm, which is not installed"):
        options = {"backbone_weights": "timm:resnet50.a1_in1k"}
        load_config(job_config(tmp_path, "deeplabv3plus_resnet50", options), TrainJobConfig)


def test_the_train_job_refuses_a_bad_option_in_one_line_before_ray(tmp_path, capsys):
    import ray

    from jobs.ray_entry import exit_code
    from jobs.train import main as train_main

    path = job_config(tmp_path, "deeplabv3plus_resnet50", {"output_stride": 1})
    assert exit_code(lambda: train_main(["--config", str(path)]), "jobs/train.py") == 2
    assert capsys.readouterr().err.splitlines() == [
        f"jobs/train.py: error: {path}: model_options: output_stride: must be the number 8 or "
        "16, got 1"
    ]
    assert not ray.is_initialized()


@pytest.fixture
def client(tmp_path):
    write_scenes(tmp_path / "data" / "labeled", n=2)
    write_scenes(tmp_path / "data" / "unlabeled", n=2, split="extra")
    settings = make_settings(
        tmp_path, workdir=tmp_path / "work", database_url=f"sqlite:///{tmp_path}/db.sqlite"
    )
    with TestClient(create_app(settings, FakeBackend(), orchestrate=False)) as client:
        yield client


def problems(response) -> list[str]:
    assert response.status_code == 422, response.text
    return [detail["msg"] for detail in response.json()["detail"]]


def test_rest_refuses_bad_model_options_with_a_422_naming_the_field(client, tmp_path):
    for model, options, message in BAD_OPTIONS:
        spec = small_run_spec(tmp_path / "data")
        spec["student"]["train"] = {**spec["student"]["train"], "model": model}
        spec["student"]["train"]["model_options"] = options
        field = message.split(":")[0]
        found = problems(client.post("/api/runs", json=spec, headers=AUTH))
        assert any(m.startswith(f"student.train.{message}") for m in found), (field, found)


def store_without_centroids(path: Path, images: list[str]) -> Path:
    """A labeled store whose images have no centroids (labeled with a min_centroid_area larger
    than any region)."""
    settings = {"mode": "whole", "min_centroid_area": 100000}
    teacher = {"checkpoint": "ck.pt", "sha256": "0" * 64, "model_name": "small"}
    store = LabelStore.create(path, images, None, CITYSCAPES, teacher, settings)
    for index in range(len(images)):
        label = np.zeros((64, 128), np.uint8)
        store.write(index, label, np.full_like(label, 200), np.zeros((0, 4)))
    return path


def test_a_run_given_stores_without_centroids_for_centroid_sampling_is_a_422(client, tmp_path):
    images = sorted(str(p) for p in (tmp_path / "data" / "unlabeled").rglob("*.png"))
    store = store_without_centroids(tmp_path / "data" / "stores" / "flat.zarr", images)
    spec = small_run_spec(tmp_path / "data")
    spec["label"] = {"stores": [str(store)]}
    assert problems(client.post("/api/runs", json=spec, headers=AUTH)) == [
        f"label.stores.0: {store} holds no centroids (labeled with min_centroid_area 100000); "
        "student.train.centroid_sampling draws crops around them: set it to false, or label "
        "again with a smaller min_centroid_area"
    ]
    spec["student"]["train"]["centroid_sampling"] = False
    spec["student"]["train"].update(soft_labels=True, ohem=False)
    assert problems(client.post("/api/runs", json=spec, headers=AUTH)) == [
        f"label.stores.0: {store} keeps hard labels only; student.train.soft_labels reads class "
        "probabilities: label it with soft_labels: true"
    ]
    spec["student"]["train"]["soft_labels"] = False
    assert client.post("/api/runs", json=spec, headers=AUTH).status_code == 201
