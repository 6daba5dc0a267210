"""The service's MLflow tracking (services/tracking.py) with a real MLflow store and a job backend
in memory: each run a parent MLflow run that ends with the run, each stage's job pointed at it,
the API's links to the stages' runs, and a tracker that does not answer costing nothing but logs.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_support import (
    AUTH,
    SucceedingBackend,
    fake_job_outputs,
    make_settings,
    small_run_spec,
    write_scenes,
)

from core.configs import LabelJobConfig, TrainJobConfig, load_config
from core.runfiles import MetricsRow
from core.tracking import stage_tracker
from services.app import create_app

mlflow = pytest.importorskip("mlflow")

UI = "http://mlflow.test:5000"


class TrackingJobs(SucceedingBackend):
    """Every job writes its outputs and, as the real jobs do, logs its MLflow run where its config
    says: params, one epoch of metrics, and the end."""

    def _run(self, submission_id: str, entrypoint: str) -> None:
        argv = shlex.split(entrypoint)
        path = Path(argv[argv.index("--config") + 1])
        cls = LabelJobConfig if argv[1].endswith("label.py") else TrainJobConfig
        tracker = stage_tracker(load_config(path, cls))
        if tracker is not None:
            tracker.log_params({"job": argv[1]})
            row = MetricsRow(
                epoch=0,
                phase="joint",
                loss=1.5,
                lr=0.01,
                crop_size=32,
                batch_size=4,
                n_real=8,
                n_pseudo=0,
                images_per_s=10.0,
                seconds=0.8,
                cpu_seconds=0.8,
            )
            tracker.log_epoch(row)
            tracker.finish()
        fake_job_outputs(entrypoint)
        self.set(submission_id, "SUCCEEDED", "Job finished successfully.", logs="done\n")


@pytest.fixture
def root(tmp_path) -> Path:
    write_scenes(tmp_path / "data" / "labeled", n=2)
    write_scenes(tmp_path / "data" / "unlabeled", n=2, split="extra")
    return tmp_path


def _spec(root: Path) -> dict:
    spec = small_run_spec(root / "data")
    spec["label"]["sources"][0]["root"] = str(root / "data" / "unlabeled" / "leftImg8bit")
    return spec


def _finish(client: TestClient, run_id: str) -> dict:
    for _ in range(10):
        client.app.state.service.orchestrator.step()
    return client.get(f"/api/runs/{run_id}", headers=AUTH).json()


def test_a_run_is_a_parent_mlflow_run_and_the_api_links_each_stage(root) -> None:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    settings = make_settings(root, tracking_uri=uri, tracking_ui=UI)
    with TestClient(create_app(settings, TrackingJobs(), orchestrate=False)) as client:
        run_id = client.post("/api/runs", json=_spec(root), headers=AUTH).json()["id"]
        run = _finish(client, run_id)
    assert run["status"] == "SUCCEEDED"

    mlflow_client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    stages = {s["name"]: s for s in run["stages"]}
    tracked = {name: mlflow_client.get_run(s["tracking"]["run_id"]) for name, s in stages.items()}
    parent_id = stages["teacher"]["config"]["tracking"]["parent_run_id"]
    parent = mlflow_client.get_run(parent_id)
    assert parent.info.run_name == f"tiny ({run_id})" and parent.info.status == "FINISHED"
    for name, mlflow_run in tracked.items():
        assert mlflow_run.data.tags["mlflow.parentRunId"] == parent_id, name
        experiment = mlflow_run.info.experiment_id
        url = f"{UI}/#/experiments/{experiment}/runs/{mlflow_run.info.run_id}"
        assert stages[name]["tracking"]["url"] == url
    assert mlflow_client.get_metric_history(tracked["student"].info.run_id, "loss")[0].value == 1.5


def test_a_failed_run_ends_its_parent_failed(root) -> None:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    settings = make_settings(root, tracking_uri=uri)
    backend = TrackingJobs()
    backend.on_submit = lambda submission_id, _: backend.set(submission_id, "FAILED", "boom")
    with TestClient(create_app(settings, backend, orchestrate=False)) as client:
        run_id = client.post("/api/runs", json=_spec(root), headers=AUTH).json()["id"]
        run = _finish(client, run_id)
    assert run["status"] == "FAILED"
    parent_id = run["stages"][0]["config"]["tracking"]["parent_run_id"]
    parent = mlflow.tracking.MlflowClient(tracking_uri=uri).get_run(parent_id)
    assert parent.info.status == "FAILED"
    assert run["stages"][0]["tracking"] is None  # the job never opened its run


def test_an_mlflow_server_that_does_not_answer_leaves_the_run_untracked(
    root, monkeypatch, caplog
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    settings = make_settings(root, tracking_uri="http://127.0.0.1:9")  # nothing listens there
    with TestClient(create_app(settings, TrackingJobs(), orchestrate=False)) as client:
        run_id = client.post("/api/runs", json=_spec(root), headers=AUTH).json()["id"]
        run = _finish(client, run_id)
    assert run["status"] == "SUCCEEDED"
    assert all(not s["config"].get("tracking") and s["tracking"] is None for s in run["stages"])
    assert f"run {run_id}: not tracked, MLflow at http://127.0.0.1:9" in caplog.text
