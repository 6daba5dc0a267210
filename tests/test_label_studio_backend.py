"""The control plane as a Label Studio ML backend: a request in Label Studio's own task format gets
brush pre-annotations of the latest promoted model, which label-studio-sdk decodes back to that
model's prediction; and ``/api/predict`` takes the same model by name."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image
from service_support import AUTH, TOKEN, FakeBackend, make_settings, write_checkpoint

from core.checkpoint import load_model
from core.inference import predict
from core.io import read_image, write_image
from core.label_studio import labeling_config
from core.labels import CITYSCAPES
from core.registry import Registration, write_record
from core.synth import generate_scene
from services.app import create_app
from services.db import Run

BASIC = {"Authorization": "Basic " + base64.b64encode(f"label-studio:{TOKEN}".encode()).decode()}


@pytest.fixture
def setup(tmp_path):
    app = create_app(make_settings(tmp_path), FakeBackend(), orchestrate=False)
    with TestClient(app) as client:
        yield client, app.state.service, tmp_path


def student(path: Path, seed: int) -> Path:
    """A checkpoint whose classifier has large random weights: an untrained model that predicts
    many classes."""
    checkpoint = write_checkpoint(path)
    state = torch.load(checkpoint, weights_only=False)
    generator = torch.Generator().manual_seed(seed)
    weight = state["model"]["classifier.weight"]
    weight.copy_(torch.randn(weight.shape, generator=generator) * 5)
    state["model"]["classifier.bias"].zero_()
    torch.save(state, checkpoint)
    return checkpoint


def promote(service, root, name: str, loop: int, seed: int) -> str:
    """A run (in the database) whose folder records a promoted student of ``name``."""
    folder = root / "data" / "runs" / f"r{seed}"
    checkpoint = student(folder / "student" / "best.pt", seed)
    with service.db.session() as session:
        session.add(Run(id=f"r{seed}", name=name, spec={}, output=str(folder)))
    write_record(
        Registration(
            name=name, uri="", checkpoint=str(checkpoint), run_folder=str(folder), loop=loop,
            student="student", teacher="t.pt", gate=[], registered_at=time.time() + seed,
        )
    )  # fmt: skip
    return str(checkpoint)


def street(root) -> np.ndarray:
    image = generate_scene(np.random.default_rng(3), (96, 160))[0]
    write_image(root / "data" / "ls" / "street.png", image)
    return read_image(root / "data" / "ls" / "street.png")


def decoded(regions: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """The label map Label Studio's own decoder gives for brush regions (255: no region)."""
    label = np.full(shape, 255, np.uint8)
    for region in regions:
        alpha = decode_rle(region["value"]["rle"]).reshape(*shape, 4)[..., 3]
        label[alpha > 127] = CITYSCAPES.names.index(region["value"]["brushlabels"][0])
    return label


def test_a_label_studio_task_gets_masks_that_decode_to_the_models_prediction(setup):
    client, service, root = setup
    promote(service, root, "street", loop=0, seed=0)
    latest = promote(service, root, "street", loop=1, seed=1)  # registered later: the latest
    image = street(root)
    task = {
        "id": 42,
        "data": {"image": "/data/local-files/?d=ls/street.png"},
        "annotations": [],
        "predictions": [],
        "project": 3,
    }
    body = {
        "tasks": [task],
        "model_version": "",
        "project": "3.1764750000",
        "label_config": labeling_config(CITYSCAPES),
        "params": {"login": None, "password": None, "context": None},
    }
    answer = client.post("/api/label-studio/street/predict", json=body, headers=BASIC)
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["results"]
    assert prediction["model_version"].startswith("street loop1")

    model, space, _ = load_model(latest)
    with torch.inference_mode():
        expected, confidence = predict(model.eval(), image)
    assert len(np.unique(expected)) >= 2  # a prediction worth checking: more than one class
    regions = prediction["result"]
    assert {r["from_name"] for r in regions} == {"label"} and {r["to_name"] for r in regions} == {
        "image"
    }
    assert all(r["type"] == "brushlabels" for r in regions)
    np.testing.assert_array_equal(decoded(regions, image.shape[:2]), expected)
    assert prediction["score"] == pytest.approx(float(confidence.mean()), rel=1e-5)

    # /api/predict takes the same model by name: its label PNG is the same prediction.
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    files = {"image": ("street.png", png.getvalue(), "image/png")}
    label = client.post("/api/predict", files=files, data={"model": "street"}, headers=AUTH)
    assert label.status_code == 200, label.text
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(label.content))), expected)


def test_only_the_projects_labels_are_sent_and_only_its_files_are_read(setup):
    client, service, root = setup
    promote(service, root, "street", loop=0, seed=1)
    street(root)
    config = (
        '<View><Image name="img" value="$photo"/><BrushLabels name="paint" toName="img">'
        '<Label value="road"/><Label value="sky"/></BrushLabels></View>'
    )
    tasks = [
        {"id": 1, "data": {"photo": "/data/local-files/?d=ls/street.png"}},
        {"id": 2, "data": {"photo": "http://elsewhere.example/street.png"}},
        {"id": 3, "data": {"photo": "/data/local-files/?d=../../etc/passwd"}},
    ]
    body = {"tasks": tasks, "label_config": config, "project": "3.1"}
    results = client.post("/api/label-studio/street/predict", json=body, headers=BASIC).json()
    first, outside, escaping = results["results"]
    assert {r["value"]["brushlabels"][0] for r in first["result"]} <= {"road", "sky"}
    assert first["result"] and {r["from_name"] for r in first["result"]} == {"paint"}
    assert outside["result"] == [] and escaping["result"] == []


def test_health_setup_and_auth_speak_label_studios_protocol(setup):
    client, service, root = setup
    health = client.get("/api/label-studio/street/health", headers=BASIC).json()
    assert health == {"status": "UP", "model_class": "selftrain", "model_version": None}
    setup_body = {"project": "3.1", "schema": labeling_config(CITYSCAPES), "hostname": "x"}
    nothing = client.post("/api/label-studio/street/setup", json=setup_body, headers=BASIC)
    assert nothing.status_code == 404 and "no promoted model named 'street'" in nothing.text
    promote(service, root, "street", loop=0, seed=0)
    answer = client.post("/api/label-studio/street/setup", json=setup_body, headers=BASIC)
    assert answer.json()["model_version"] == "street loop0 r0"
    wrong = {"schema": '<View><Image name="i" value="$i"/><BrushLabels name="b" toName="i">'
             '<Label value="tree"/></BrushLabels></View>'}  # fmt: skip
    refused = client.post("/api/label-studio/street/setup", json=wrong, headers=BASIC)
    assert refused.status_code == 422 and "none of the model's classes" in refused.text
    bad = {"Authorization": "Basic " + base64.b64encode(b"label-studio:nope").decode()}
    assert client.get("/api/label-studio/street/health", headers=bad).status_code == 401
    assert client.get("/api/label-studio/street/health").status_code == 401
    assert client.post("/api/label-studio/street/webhook", json={}, headers=AUTH).status_code == 200


@pytest.mark.slow
def test_with_tracking_the_latest_promoted_model_comes_from_mlflows_registry(tmp_path):
    from mlflow.tracking import MlflowClient

    from core.registry import register_in_mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("r", artifact_location=(tmp_path / "art").as_uri())
    for seed in (0, 1):  # version 2 (seed 1) is the latest
        checkpoint = student(tmp_path / f"s{seed}" / "best.pt", seed)
        run_id = client.create_run(experiment).info.run_id
        client.log_artifact(run_id, str(checkpoint), "model")
        draft = Registration(
            name="street", uri="", checkpoint=str(checkpoint), run_folder=str(tmp_path),
            loop=seed, student="student", teacher="t.pt", gate=[], registered_at=time.time(),
        )  # fmt: skip
        register_in_mlflow(uri, run_id, draft)
    expected_model, _, _ = load_model(checkpoint)
    for seed in (0, 1):  # only MLflow's artifact store has them now
        (tmp_path / f"s{seed}" / "best.pt").unlink()

    app = create_app(make_settings(tmp_path, tracking_uri=uri), FakeBackend(), orchestrate=False)
    with TestClient(app) as service:
        listed = service.get("/api/models", params={"name": "street"}, headers=AUTH).json()
        assert [(m["registry"], m["version"], m["uri"]) for m in listed] == [
            ("mlflow", 2, "models:/street/2"), ("mlflow", 1, "models:/street/1"),
        ]  # fmt: skip
        image = street(tmp_path)
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        files = {"image": ("street.png", png.getvalue(), "image/png")}
        label = service.post("/api/predict", files=files, data={"model": "street"}, headers=AUTH)
        assert label.status_code == 200, label.text
    with torch.inference_mode():
        expected, _ = predict(expected_model.eval(), image)
    assert len(np.unique(expected)) >= 2
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(label.content))), expected)
    assert (tmp_path / "work" / "registry" / "street-v2" / "model" / "best.pt").is_file()
