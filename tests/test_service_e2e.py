"""End to end on a real local Ray head (services/localray.py) with the service as its own process
(``selftrain serve``), talking REST only:

- a run over tiny synthetic scenes (teacher -> label -> student, "small" model) ends with every
  stage SUCCEEDED and a student checkpoint, and ``/api/predict`` with the run answers a PNG of the
  image's size;
- the service killed (SIGKILL) and started again in the middle of a run finishes that run, and Ray
  never saw a stage submitted twice;
- cancelling a run stops its Ray job.

The head, the service and the finished run are tests/conftest.py's session fixtures, shared with
tests/test_dashboard.py.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from service_support import (
    LIVE_EPOCHS,
    MLFLOW_UI,
    STAGE_TIMEOUT_S,
    live_run_spec,
    succeeded,
)

from core.io import decode_image
from core.labels import CITYSCAPES
from services.artifacts import encode_png

pytestmark = pytest.mark.slow


def _jobs(head):
    from ray.job_submission import JobSubmissionClient

    token = head.client_env["RAY_AUTH_TOKEN"]
    return JobSubmissionClient(head.address, headers={"Authorization": f"Bearer {token}"})


def _multipart(fields: dict[str, str], file_name: str, file_data: bytes) -> tuple[bytes, str]:
    boundary = "selftrain-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="{file_name}"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + file_data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def test_run_over_rest_succeeds_and_predicts(live_service, finished_run, ray_head):
    run = finished_run
    assert [(s["name"], s["status"]) for s in run["stages"]] == [
        ("teacher", "SUCCEEDED"),
        ("label-0", "SUCCEEDED"),
        ("student", "SUCCEEDED"),
    ]
    jobs = _jobs(ray_head)
    for stage in run["stages"]:
        assert stage["submission_id"] == f"selftrain-{run['id']}-{stage['index']}-{stage['name']}"
        assert jobs.get_job_status(stage["submission_id"]).value == "SUCCEEDED"
        assert stage["started_at"] and stage["ended_at"]
    student = run["stages"][2]
    assert student["outputs"]["checkpoint"].endswith("/student/best.pt")
    assert student["progress"]["fraction"] == 1.0
    assert [m["epoch"] for m in student["metrics"]] == list(range(LIVE_EPOCHS))
    assert student["latest_metrics"]["epoch"] == LIVE_EPOCHS - 1
    assert student["latest_metrics"]["loss"] > 0
    assert 0 <= student["latest_metrics"]["val_miou"] <= 1
    # The student trained online: each epoch says how much of the unlabeled crops counted.
    assert 0 <= student["latest_metrics"]["unlabeled_confident_share"] <= 1
    assert set(student["latest_metrics"]["class_thresholds"]) == set(CITYSCAPES.names)
    label = run["stages"][1]
    assert label["summary"]["n_done"] == 8 and label["progress"]["done"] == 8

    status, logs, _ = live_service.request("GET", f"/api/runs/{run['id']}/stages/teacher/logs")
    assert status == 200 and b"Running entrypoint for job selftrain-" in logs

    rgb = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    body, content_type = _multipart({"run_id": run["id"]}, "street.png", encode_png(rgb))
    status, data, kind = live_service.request(
        "POST", "/api/predict", body, {"Content-Type": content_type}
    )
    assert (status, kind) == (200, "image/png"), data[:500]
    assert decode_image(data).shape[:2] == (37, 53)


def test_the_run_and_its_stages_are_tracked_in_mlflow(live_service, finished_run):
    """The run is a parent MLflow run, FINISHED; each stage a run nested under it that the API
    links to, with the job's config as params, per-epoch metrics, the checkpoint as an artifact."""
    from mlflow.tracking import MlflowClient

    run = finished_run
    client = MlflowClient(tracking_uri=f"sqlite:///{live_service.root / 'work' / 'mlflow.db'}")
    tracked = {s["name"]: client.get_run(s["tracking"]["run_id"]) for s in run["stages"]}
    parents = {t.data.tags["mlflow.parentRunId"] for t in tracked.values()}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.info.run_name == f"synthetic-demo ({run['id']})"
    assert parent.info.status == "FINISHED"
    for stage in run["stages"]:
        mlflow_run = tracked[stage["name"]]
        assert mlflow_run.info.status == "FINISHED", stage["name"]
        experiment, run_id = mlflow_run.info.experiment_id, mlflow_run.info.run_id
        assert stage["tracking"]["url"] == f"{MLFLOW_UI}/#/experiments/{experiment}/runs/{run_id}"
    student = tracked["student"]
    assert student.data.params["pseudo_per_real"] == "1.0"
    losses = client.get_metric_history(student.info.run_id, "loss")
    api_losses = [m["loss"] for m in run["stages"][2]["metrics"]]
    assert [m.step for m in losses] == list(range(LIVE_EPOCHS))
    assert [m.value for m in losses] == pytest.approx(api_losses)
    assert "best.pt" in {a.path for a in client.list_artifacts(student.info.run_id)}
    label = tracked["label-0"]
    assert "store_summary.json" in {a.path for a in client.list_artifacts(label.info.run_id)}


def test_service_killed_mid_run_picks_the_run_up_after_a_restart(
    live_service, finished_run, ray_head
):
    # Start from the finished run's teacher, to keep this test shorter.
    teacher = {"checkpoint": finished_run["stages"][0]["outputs"]["checkpoint"]}
    spec = live_run_spec(live_service.root / "data", "restart", teacher, epochs=1)
    run_id = live_service.json("POST", "/api/runs", spec)["id"]

    def label_running(run: dict) -> bool:
        label = next(s for s in run["stages"] if s["name"] == "label-0")
        return label["status"] in ("RUNNING", "SUCCEEDED")

    in_flight = live_service.wait_until(run_id, label_running, STAGE_TIMEOUT_S)
    assert in_flight["status"] == "RUNNING"
    live_service.kill()
    live_service.start()
    run = live_service.wait_until(run_id, succeeded, 2 * STAGE_TIMEOUT_S)
    assert all(s["status"] == "SUCCEEDED" for s in run["stages"])
    submitted = [s["submission_id"] for s in run["stages"] if s["submission_id"]]
    assert len(submitted) == 2  # the teacher was given
    ray_ids = [job.submission_id for job in _jobs(ray_head).list_jobs()]
    for submission_id in submitted:
        assert ray_ids.count(submission_id) == 1, submission_id


def test_cancel_stops_the_running_ray_job(live_service, ray_head):
    from ray.job_submission import JobStatus

    spec = live_run_spec(live_service.root / "data", "cancel", epochs=1)
    run_id = live_service.json("POST", "/api/runs", spec)["id"]

    def teacher_running(run: dict) -> bool:
        return run["stages"][0]["status"] == "RUNNING"

    live_service.wait_until(run_id, teacher_running, STAGE_TIMEOUT_S)
    cancelled = live_service.json("POST", f"/api/runs/{run_id}/cancel")
    assert cancelled["status"] == "STOPPED"
    assert [s["status"] for s in cancelled["stages"]] == ["STOPPED", "PENDING", "PENDING"]
    jobs = _jobs(ray_head)
    submission_id = cancelled["stages"][0]["submission_id"]
    deadline = time.monotonic() + 60
    while jobs.get_job_status(submission_id) != JobStatus.STOPPED:
        assert time.monotonic() < deadline, jobs.get_job_status(submission_id)
        time.sleep(0.5)
    time.sleep(2)  # a few polls later, nothing else was submitted
    ray_ids = [job.submission_id for job in jobs.list_jobs()]
    assert not any(i.startswith(f"selftrain-{run_id}-1") for i in ray_ids)
