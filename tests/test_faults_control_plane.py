"""Faults of the control plane (issue 26 items 1, 2, 3 and 8), each with its exact outcome: a run
whose pass hangs holds up no other run, cancel or health check; a folder swapped for a link after
creation is refused by the job and by prediction; an image is bounded by what it costs; stage
messages are the stage's own and /docs is allowed by the CSP."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_support import (
    AUTH,
    FakeBackend,
    SucceedingBackend,
    make_settings,
    small_run_spec,
    write_checkpoint,
    write_scenes,
)

from core.configs import LabelJobConfig, TrainJobConfig, load_config
from core.confine import PathNotAllowedError
from services.app import create_app


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    write_scenes(root / "data" / "labeled", n=2)
    write_scenes(root / "data" / "unlabeled", n=2, split="extra")
    return root


def _spec(root: Path, **extra) -> dict:
    spec = small_run_spec(root / "data", **extra)
    spec["label"]["sources"][0]["root"] = str(root / "data" / "unlabeled" / "leftImg8bit")
    return spec


def _client(root: Path, tmp_path: Path, backend, **settings) -> TestClient:
    work = {"workdir": tmp_path / "work", "database_url": f"sqlite:///{tmp_path}/db.sqlite"}
    return TestClient(create_app(make_settings(root, **work, **settings), backend, False))


class HangingBackend(FakeBackend):
    """A cluster whose answers about one job never come (a head stopped but not gone)."""

    def __init__(self) -> None:
        super().__init__()
        self.hang: str | None = None
        self.release = threading.Event()

    def info(self, submission_id: str):
        if submission_id == self.hang:
            self.release.wait(30)
        return super().info(submission_id)


def test_item1_a_hung_run_holds_up_no_other_run_cancel_or_health(data_root, tmp_path):
    backend = HangingBackend()
    with _client(data_root, tmp_path, backend, reconcile_deadline_s=0.5) as client:
        service = client.app.state.service
        assert service.ready.wait(300)
        first = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
        service.orchestrator.step()
        backend.hang = f"selftrain-{first}-0-teacher"
        second = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
        started = time.monotonic()
        service.orchestrator.step()
        assert time.monotonic() - started < 5  # waited for the hung pass up to its deadline only
        assert f"selftrain-{second}-0-teacher" in backend.submits
        stage = client.get(f"/api/runs/{first}", headers=AUTH).json()["stages"][0]
        assert stage["message"] == (
            f"stalled: asking the cluster about job selftrain-{first}-0-teacher for over 0.5 s"
        )
        for request in (
            lambda: client.post(f"/api/runs/{second}/cancel", headers=AUTH),
            lambda: client.get("/api/health"),
        ):
            started = time.monotonic()
            assert request().status_code == 200
            assert time.monotonic() - started < 1.0
        assert client.get(f"/api/runs/{second}", headers=AUTH).json()["status"] == "STOPPED"
        backend.release.set()


def test_item2_paths_are_confined_at_creation_and_refused_at_use(data_root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "weights.pt").write_bytes(b"not weights")
    backend = FakeBackend()  # the jobs are run here, by hand
    with _client(data_root, tmp_path, backend) as client:
        spec = _spec(data_root)
        options = {"arch": "Unet", "encoder": "resnet18"}
        spec["student"]["train"] = {**spec["student"]["train"], "model": "smp"}
        spec["student"]["train"]["model_options"] = options
        options["encoder_weights"] = str(outside / "weights.pt")
        refused = client.post("/api/runs", json=spec, headers=AUTH)
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["msg"].startswith(
            "student.train.model_options.encoder_weights: "
            f"'{outside / 'weights.pt'}' is outside the allowed folders"
        )

        spec = _spec(data_root, output=str(data_root / "data" / "out"))
        run_id = client.post("/api/runs", json=spec, headers=AUTH).json()["id"]
        folder = data_root / "data" / "out" / run_id
        assert folder.is_dir()  # created by the run, empty
        folder.rmdir()
        folder.symlink_to(outside)  # swapped for a link after creation
        service = client.app.state.service
        service.orchestrator.step()  # the teacher's config is written and its job submitted
        config_path = service.settings.workdir / run_id / "configs" / "00-teacher.yaml"
        config = load_config(config_path, TrainJobConfig)
        from jobs.train import run_training

        with pytest.raises(PathNotAllowedError) as error:
            run_training(config)
        assert str(error.value) == (
            f"{folder}/teacher: (storage_path) {folder} is a link (to {outside}); refused at use"
        )
        label = LabelJobConfig.model_validate(
            {**service.orchestrator._load(run_id).stages[1].config, "allowed_roots": None}
        ).model_copy(update={"allowed_roots": config.allowed_roots})
        from jobs.label import run as run_label

        with pytest.raises(PathNotAllowedError, match=r"\(teacher_checkpoint\) .* is a link"):
            run_label(label, progress_bar=False)
        assert sorted(p.name for p in outside.iterdir()) == ["weights.pt"]  # nothing written


def test_item2_predict_by_run_id_refuses_a_model_swapped_for_a_link(data_root, tmp_path):
    backend = SucceedingBackend()
    with _client(data_root, tmp_path, backend) as client:
        run_id = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
        for _ in range(4):
            client.app.state.service.orchestrator.step()
        run = client.get(f"/api/runs/{run_id}", headers=AUTH).json()
        assert run["status"] == "SUCCEEDED"
        model = Path(run["stages"][-1]["outputs"]["checkpoint"])
        secret = write_checkpoint(tmp_path / "secret.pt")
        model.unlink()
        model.symlink_to(secret)
        image = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))[1].tobytes()
        answer = client.post(
            "/api/predict", files={"image": ("x.png", image)}, data={"run_id": run_id}, headers=AUTH
        )
        assert answer.status_code == 409
        assert answer.json()["detail"] == (
            f"run {run_id!r}: its model is refused: {model}: {model} is a link (to {secret}); "
            "refused at use"
        )


def test_item3_an_image_is_bounded_by_what_it_costs(data_root, tmp_path):
    checkpoint = write_checkpoint(data_root / "data" / "small.pt")
    with _client(data_root, tmp_path, FakeBackend(), predict_max_side=256) as client:

        def png(array: np.ndarray) -> bytes:
            return cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()

        def predict(data: bytes, name: str):
            form = {"checkpoint": str(checkpoint), "output": "shares"}
            return client.post(
                "/api/predict", files={"image": (name, data)}, data=form, headers=AUTH
            )

        assert predict(png(np.zeros((64, 64, 3), np.uint8)), "small.png").status_code == 200
        # 40 x 1,000,000 zeros: a 38 KB PNG, 40 megapixels (the took 147 s and 7.1 GB).
        thin = png(np.zeros((40, 1_000_000), np.uint8))
        started = time.monotonic()
        answer = predict(thin, "thin.png")
        assert len(thin) < 40_000 and answer.status_code == 413
        assert time.monotonic() - started < 1.0  # decided from the header, the model loaded
        assert answer.json()["detail"] == (
            "thin.png: 40x1000000 would be read at 1x256 to fit the model's limits (longest side "
            "256, 2097152 pixels, 1.00 GiB), under 8 pixels across: its aspect ratio is too extreme"
        )
        # Longer than the longest side: read at 128 x 256, answered at its own size.
        answer = predict(png(np.zeros((300, 600, 3), np.uint8)), "wide.png")
        assert answer.status_code == 200 and answer.headers["x-model-input"] == "128x256"
        shares = answer.json()
        assert (shares["height"], shares["width"]) == (300, 600)
        assert (shares["input_height"], shares["input_width"], shares["resized"]) == (
            128,
            256,
            True,
        )


def test_item8_stage_messages_are_the_stages_own(data_root, tmp_path):
    backend = FakeBackend()
    with _client(data_root, tmp_path, backend) as client:
        service = client.app.state.service
        run_id = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
        service.orchestrator.step()
        sid = f"selftrain-{run_id}-0-teacher"
        tail = "\n".join(f"log line {i}" for i in range(2000))
        message = (
            "Job entrypoint command failed with exit code 2, last available logs (truncated to "
            f"20,000 chars):\n{tail}\njobs/train.py: error: data/x.png: not a readable image\n"
        )
        backend.set(sid, "FAILED", message)
        service.orchestrator.step()
        stage = client.get(f"/api/runs/{run_id}", headers=AUTH).json()["stages"][0]
        assert stage["message"] == (
            "Job entrypoint command failed with exit code 2, last available logs (truncated to "
            "20,000 chars):"
        )
        assert stage["error"] == (
            f"{stage['message']}: jobs/train.py: error: data/x.png: not a readable image"
        )
        # A stage the service ends itself says so, not "Job is currently running".
        other = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
        service.orchestrator.step()
        backend.set(f"selftrain-{other}-0-teacher", "RUNNING", "Job is currently running.")
        service.orchestrator.step()
        service.orchestrator.fail_run(other, "cluster unreachable for 600 s: gone")
        stage = client.get(f"/api/runs/{other}", headers=AUTH).json()["stages"][0]
        assert (stage["status"], stage["message"]) == ("FAILED", "ended by the service (see error)")
        assert stage["error"] == "cluster unreachable for 600 s: gone"
        # /docs loads Swagger UI from this service with no inline script, so the CSP allows it.
        page = client.get("/docs").text
        assert '<script src="/docs-assets/swagger-ui-bundle.js"></script>' in page
        assert "cdn" not in page and "<script>" not in page
        assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
        assert "SwaggerUIBundle(" in client.get("/docs/start.js").text
