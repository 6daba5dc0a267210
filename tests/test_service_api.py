"""The REST API and the orchestrator against a job backend in memory (no Ray): auth, validation,
stage order, no double submission, failure, cancel, logs, events, body limits."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_support import (
    AUTH,
    FakeBackend,
    SucceedingBackend,
    fake_job_outputs,
    make_settings,
    small_run_spec,
    write_checkpoint,
    write_metrics,
    write_scenes,
)

from core.io import write_image
from core.labels import CAMVID
from core.runfiles import RunFiles
from core.store import LabelStore
from services.app import create_app
from services.orchestrator import Orchestrator


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("svc")
    data = root / "data"
    write_scenes(data / "labeled", n=2)
    write_scenes(data / "unlabeled", n=2, split="extra")
    return root


def _client(root: Path, backend, orchestrate: bool = False, **settings) -> TestClient:
    app = create_app(make_settings(root, **settings), backend, orchestrate=orchestrate)
    return TestClient(app)


def _spec(root: Path, **extra) -> dict:
    spec = small_run_spec(root / "data", **extra)
    spec["label"]["sources"][0]["root"] = str(root / "data" / "unlabeled" / "leftImg8bit")
    return spec


@pytest.fixture
def setup(data_root, tmp_path, database_url):
    # Each test gets its own database (SQLite and PostgreSQL) and workdir, sharing the
    # (read-only) scenes.
    backend = FakeBackend()
    work = {"workdir": tmp_path / "work", "database_url": database_url}
    with _client(data_root, backend, **work) as client:
        # Health says "starting" until the service has imported torch and the models (a minute
        # or more on a loaded 2-core machine, once per test process).
        assert client.app.state.service.ready.wait(300)
        yield client, backend, client.app.state.service


def test_health_is_open_and_everything_else_needs_the_token(setup):
    client, _, _ = setup
    health = client.get("/api/health").json()
    assert health == {"status": "ok", "database": "ok", "cluster": "ok", "reconciler": None}
    assert client.get("/api/runs").status_code == 401
    wrong = client.get("/api/runs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.post("/api/predict").status_code == 401
    assert client.get("/api/runs", headers=AUTH).json() == []


def test_a_run_moves_through_its_stages_and_each_is_submitted_once(setup, data_root):
    client, backend, service = setup
    created = client.post("/api/runs", json=_spec(data_root), headers=AUTH)
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    assert created.json()["stages"] == ["teacher", "label-0", "student"]

    step = service.orchestrator.step
    step()
    step()
    teacher_id = f"selftrain-{run_id}-0-teacher"
    assert backend.submits == [teacher_id]
    entrypoint = backend.jobs[teacher_id]["entrypoint"]
    assert entrypoint.startswith("python jobs/train.py --config ")
    assert entrypoint.endswith(f"/{run_id}/configs/00-teacher.yaml")

    # A restarted service (a new orchestrator on the same database) does not submit again.
    Orchestrator(service.db, backend, service.settings).step()
    assert backend.submits == [teacher_id]

    backend.set(teacher_id, "RUNNING", "Job is currently running.")
    step()
    run = client.get(f"/api/runs/{run_id}", headers=AUTH).json()
    assert run["status"] == "RUNNING"
    assert [s["status"] for s in run["stages"]] == ["RUNNING", "PENDING", "PENDING"]
    assert run["stages"][0]["submission_id"] == teacher_id

    fake_job_outputs(entrypoint)
    backend.set(teacher_id, "SUCCEEDED", "Job finished successfully.")
    step()
    label_id = f"selftrain-{run_id}-1-label-0"
    assert backend.submits == [teacher_id, label_id]
    run = client.get(f"/api/runs/{run_id}", headers=AUTH).json()
    teacher = run["stages"][0]
    assert teacher["status"] == "SUCCEEDED"
    assert teacher["progress"] == {"done": 2, "total": 2, "unit": "epochs", "fraction": 1.0}
    assert teacher["latest_metrics"]["val_miou"] == 0.2 and len(teacher["metrics"]) == 2
    label_config = run["stages"][1]["config"]
    assert label_config["teacher_checkpoint"] == teacher["outputs"]["checkpoint"]

    for sid in (label_id, f"selftrain-{run_id}-2-student"):
        fake_job_outputs(backend.jobs[sid]["entrypoint"])
        backend.set(sid, "SUCCEEDED", "Job finished successfully.")
        step()
    run = client.get(f"/api/runs/{run_id}", headers=AUTH).json()
    assert run["status"] == "SUCCEEDED" and run["ended_at"] is not None
    assert len(backend.submits) == 3
    label = run["stages"][1]
    assert label["progress"] == {
        "done": 2,
        "total": 2,
        "unit": "images",
        "fraction": 1.0,
        "images_per_s": 12.5,
    }
    assert label["summary"]["class_names"][0] == "road"
    # write_store labels half of each image road and half sky, the top row ignored.
    pixels = label["summary"]["pixels_per_class"]
    assert pixels["road"] == pixels["sky"] == 2 * 63 * 64
    assert Path(run["stages"][2]["outputs"]["checkpoint"]).is_file()


def test_a_failed_stage_fails_the_run_and_keeps_its_error_and_logs(setup, data_root):
    client, backend, service = setup
    run_id = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
    service.orchestrator.step()
    sid = f"selftrain-{run_id}-0-teacher"
    backend.set(
        sid, "FAILED", "Job entrypoint command failed with exit code 1", "Traceback: boom\n"
    )
    service.orchestrator.step()
    run = client.get(f"/api/runs/{run_id}", headers=AUTH).json()
    assert run["status"] == "FAILED"
    assert run["error"] == "stage teacher: Job entrypoint command failed with exit code 1"
    assert [s["status"] for s in run["stages"]] == ["FAILED", "PENDING", "PENDING"]
    logs = client.get(f"/api/runs/{run_id}/stages/teacher/logs", headers=AUTH)
    assert logs.status_code == 200 and logs.text.endswith("Traceback: boom\n")
    service.orchestrator.step()
    assert backend.submits == [sid]  # a failed run is not retried


def test_cancel_stops_the_ray_job(setup, data_root):
    client, backend, service = setup
    run_id = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
    service.orchestrator.step()
    sid = f"selftrain-{run_id}-0-teacher"
    backend.set(sid, "RUNNING")
    backend.down = True
    assert client.post(f"/api/runs/{run_id}/cancel", headers=AUTH).status_code == 503
    service.orchestrator.step()  # the cluster being down leaves the run as it is
    assert client.get(f"/api/runs/{run_id}", headers=AUTH).json()["status"] == "RUNNING"
    backend.down = False
    cancelled = client.post(f"/api/runs/{run_id}/cancel", headers=AUTH)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "STOPPED"
    assert cancelled.json()["stages"][0]["status"] == "STOPPED"
    assert backend.stops == [sid]
    service.orchestrator.step()
    assert backend.submits == [sid]
    assert client.post("/api/runs/nope/cancel", headers=AUTH).status_code == 404


def _problems(response) -> str:
    assert response.status_code == 422, response.text
    return " | ".join(d["msg"] for d in response.json()["detail"])


def test_bad_specs_get_422_naming_the_field(setup, data_root):
    client, _, _ = setup
    spec = _spec(data_root)
    data = data_root / "data"

    def post(change) -> str:
        body = json.loads(json.dumps(spec))
        change(body)
        return _problems(client.post("/api/runs", json=body, headers=AUTH))

    def model(b):
        b["teacher"]["train"]["model"] = "resnet9000"

    def ratio(b):
        b["student"]["train"]["pseudo_per_real"] = -1

    def missing(b):
        b["teacher"]["train"]["labeled"]["root"] = str(data / "nothing-here")

    def crop(b):
        b["student"]["train"]["schedule"]["crop_sizes"] = [32, 100]

    def outside(b):
        b["label"]["sources"][0]["root"] = "/etc"

    def dotdot(b):
        b["teacher"]["train"]["labeled"]["root"] = str(data / "labeled" / ".." / "labeled")

    assert "teacher.train.model: unknown model 'resnet9000'" in post(model)
    assert "student.train.pseudo_per_real: Input should be greater than or equal to 0" in post(
        ratio
    )
    assert "teacher.train.labeled.root: " in post(missing)
    assert "does not exist" in post(missing)
    assert "student.train.schedule.crop_sizes: crop 100 is larger than the images (64x128)" in (
        post(crop)
    )
    assert "label.sources.0.root: '/etc' is outside the allowed folders" in post(outside)
    assert "teacher.train.labeled.root: " in post(dotdot) and "'..'" in post(dotdot)
    assert client.get("/api/runs", headers=AUTH).json() == []


def test_oversized_json_body_is_413(data_root, tmp_path):
    with _client(data_root, FakeBackend(), workdir=tmp_path, max_json_bytes=1000) as client:
        big = {"name": "x" * 2000}
        assert client.post("/api/runs", json=big, headers=AUTH).status_code == 413
        # Without a Content-Length (chunked), the body is counted as it arrives.
        chunks = iter([b'{"name": "' + b"x" * 600, b"x" * 600 + b'"}'])
        headers = {**AUTH, "Content-Type": "application/json"}
        response = client.post("/api/runs", content=chunks, headers=headers)
        assert response.status_code == 413, response.text


def test_run_finishes_by_itself_and_the_event_stream_follows_it(data_root, tmp_path):
    # The poll loop runs; every job succeeds as soon as it is submitted.
    backend = SucceedingBackend()
    with _client(data_root, backend, orchestrate=True, workdir=tmp_path) as client:
        run_id = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
        events = []
        with client.stream("GET", f"/api/runs/{run_id}/events", headers=AUTH) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: ") :]))
        # The stream ends by itself once the run has ended.
        assert events[-1]["status"] == "SUCCEEDED"
        versions = [e["version"] for e in events]
        assert versions == sorted(set(versions))
        assert [s["status"] for s in events[-1]["stages"]] == ["SUCCEEDED"] * 3
        assert len(backend.submits) == 3

        samples = client.get(f"/api/runs/{run_id}/stages/label-0/pseudo-labels", headers=AUTH)
        assert samples.json()["n_done"] == 2 and samples.json()["indices"] == [0, 1]
        picture = client.get(f"/api/runs/{run_id}/stages/label-0/pseudo-labels/1", headers=AUTH)
        assert picture.headers["content-type"] == "image/png"
        from core.io import decode_image

        overlay = decode_image(picture.content)
        assert overlay.shape == (64, 128, 3)
        # Right half painted sky (70, 130, 180) at alpha 0.5 over the image: bluish.
        assert overlay[32, 100, 2] > overlay[32, 100, 0]
        missing = client.get(f"/api/runs/{run_id}/stages/teacher/pseudo-labels/0", headers=AUTH)
        assert missing.status_code == 404
        assert client.get("/api/runs/nope/events", headers=AUTH).status_code == 404


def test_a_damaged_metrics_line_is_skipped_and_named_and_the_run_goes_on(setup, data_root):
    client, backend, service = setup
    run_id = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
    service.orchestrator.step()
    backend.set(f"selftrain-{run_id}-0-teacher", "RUNNING")
    config = client.get(f"/api/runs/{run_id}", headers=AUTH).json()["stages"][0]["config"]
    path = write_metrics(RunFiles.of(config["storage_path"], config["run_name"]).directory, 2)
    with path.open("ab") as f:
        f.write(b'{"epoch": 2, "phase": "jo\xff\xfe"}\n')  # not UTF-8 (line 3)
    service.orchestrator.step()
    run = client.get(f"/api/runs/{run_id}", headers=AUTH).json()
    teacher = run["stages"][0]
    assert run["status"] == "RUNNING" and teacher["status"] == "RUNNING"
    assert [row["epoch"] for row in teacher["metrics"]] == [0, 1]
    assert teacher["progress"]["done"] == 2
    assert teacher["progress"]["warning"] == f"{path}: skipped line(s) 3: not a metrics row"


def test_a_broken_run_ends_alone_with_its_reason_and_the_others_go_on(setup, data_root, tmp_path):
    client, backend, service = setup
    first = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
    # The run's folder in the workdir swapped for a link after creation: its configs would be
    # written elsewhere, so its first pass fails it.
    folder = service.settings.workdir / first
    folder.rename(tmp_path / "moved")
    folder.symlink_to(tmp_path / "moved")
    second = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
    service.orchestrator.step()
    broken = client.get(f"/api/runs/{first}", headers=AUTH).json()
    assert broken["status"] == "FAILED"
    assert broken["error"].startswith("orchestration error: PathNotAllowedError: ")
    assert f"{folder} is a link (to {tmp_path / 'moved'}); refused at use" in broken["error"]
    assert not list((tmp_path / "moved").glob("configs/*"))  # nothing written there
    # The other run was not held up: its teacher went to the cluster in the same step.
    assert backend.submits == [f"selftrain-{second}-0-teacher"]
    service.orchestrator.step()
    assert client.get(f"/api/runs/{first}", headers=AUTH).json()["status"] == "FAILED"


def test_each_run_writes_only_into_a_folder_of_its_own(setup, data_root):
    client, backend, service = setup
    data = data_root / "data"
    out = data / "out"

    def create(output: Path):
        return client.post("/api/runs", json=_spec(data_root, output=str(output)), headers=AUTH)

    first = create(out)
    assert first.status_code == 201, first.text
    first_id = first.json()["id"]
    run = client.get(f"/api/runs/{first_id}", headers=AUTH).json()
    assert run["output"] == str(out / first_id)
    # Two runs given the same output write into two folders, each named by its run.
    second_id = create(out).json()["id"]
    assert client.get(f"/api/runs/{second_id}", headers=AUTH).json()["output"] == str(
        out / second_id
    )
    # A folder of another run, the service's own folder, a dataset or a folder holding one: 422.
    problems = {
        out / first_id: "is inside another run's folder",
        out / first_id / "student": "is inside another run's folder",
        service.settings.workdir: "overlaps the service's own folder",
        data / "labeled": "overlaps the dataset",
        data: "overlaps the dataset",
    }
    for output, message in problems.items():
        refused = create(output)
        assert refused.status_code == 422, output
        assert refused.json()["detail"][0]["loc"][-1] == "output"
        assert message in _problems(refused)


def test_every_response_carries_the_security_headers(setup):
    client, _, _ = setup
    for path in ("/", "/static/app.js", "/api/health", "/api/runs"):
        headers = client.get(path).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"


def test_logs_of_a_running_stage_on_a_lost_cluster_are_a_503_not_a_500(setup, data_root):
    client, backend, service = setup
    run_id = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
    service.orchestrator.step()
    backend.set(f"selftrain-{run_id}-0-teacher", "RUNNING")
    service.orchestrator.step()
    backend.down = True
    logs = client.get(f"/api/runs/{run_id}/stages/teacher/logs", headers=AUTH)
    assert logs.status_code == 503 and "fake cluster is down" in logs.text


def test_a_pseudo_label_picture_is_served_only_from_inside_the_data_roots(
    setup, data_root, tmp_path
):
    client, backend, service = setup
    run_id = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
    for stage in ("0-teacher", "1-label-0"):
        service.orchestrator.step()
        sid = f"selftrain-{run_id}-{stage}"
        fake_job_outputs(backend.jobs[sid]["entrypoint"])
        backend.set(sid, "SUCCEEDED", "Job finished successfully.")
    service.orchestrator.step()
    picture = f"/api/runs/{run_id}/stages/label-0/pseudo-labels/0?view=image"
    assert client.get(picture, headers=AUTH).status_code == 200
    # The same store pointed at a file outside the roots (as a store made elsewhere may be).
    run = client.get(f"/api/runs/{run_id}", headers=AUTH).json()
    store = LabelStore.open(run["stages"][1]["outputs"]["store"])
    outside = write_image(tmp_path / "secret.png", np.zeros((64, 64, 3), np.uint8))
    store.tables["paths"][0] = str(outside)
    refused = client.get(picture, headers=AUTH)
    assert refused.status_code == 404 and "outside the data roots" in refused.text


def test_job_logs_and_messages_lose_their_terminal_colours():
    from services.ray_jobs import strip_ansi

    line = "\x1b[36m(RayTrainWorker pid=7)\x1b[0m epoch 3 \x1b[1;31mERROR\x1b[0m \x1b]0;tab\x07ok\n"
    assert strip_ansi(line) == "(RayTrainWorker pid=7) epoch 3 ERROR ok\n"


def test_a_lost_cluster_shows_in_health_and_on_the_run_then_fails_it(setup, data_root):
    client, backend, service = setup
    run_id = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
    service.orchestrator.step()
    backend.set(f"selftrain-{run_id}-0-teacher", "RUNNING")
    backend.down = True
    health = client.get("/api/health").json()
    assert health["status"] == "degraded" and health["cluster"] == "fake cluster is down"
    # Waiting: the stage says why; the run is still RUNNING and picks up if the cluster returns.
    service.orchestrator.step()
    run = client.get(f"/api/runs/{run_id}", headers=AUTH).json()
    assert run["status"] == "RUNNING"
    assert run["stages"][0]["message"].startswith("waiting for the cluster (0 s): fake cluster")
    backend.down = False
    service.orchestrator.step()
    assert client.get(f"/api/runs/{run_id}", headers=AUTH).json()["status"] == "RUNNING"
    # Down for longer than cluster_lost_after_s: the run ends FAILED with the reason.
    backend.down = True
    service.settings.cluster_lost_after_s = 0.05
    service.orchestrator.step()
    time.sleep(0.1)
    service.orchestrator.step()
    run = client.get(f"/api/runs/{run_id}", headers=AUTH).json()
    assert run["status"] == "FAILED"
    # The seconds waited depend on how busy the machine is.
    assert re.match(r"cluster unreachable for \d+ s: fake cluster is down", run["error"])
    assert run["stages"][0]["status"] == "FAILED"


def test_a_run_created_while_the_cluster_is_unreachable_says_so(setup, data_root):
    client, backend, service = setup
    backend.down = True
    run_id = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
    service.orchestrator.step()
    run = client.get(f"/api/runs/{run_id}", headers=AUTH).json()
    assert run["status"] == "PENDING"
    assert "waiting for the cluster" in run["stages"][0]["message"]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("student.train.epochs", 10**9, "student.train.epochs: Input should be less than or equal"),
        ("student.train.epochs", "10", "student.train.epochs: Input should be a valid integer"),
        ("student.train.epochs", True, "student.train.epochs: Input should be a valid integer"),
        ("student.train.num_workers", 10**6, "num_workers: Input should be less than or equal"),
        ("label.options.num_actors", 10**6, "num_actors: Input should be less than or equal"),
        ("student.train.samples_per_epoch", 10**12, "samples_per_epoch: Input should be less"),
        ("student.train.lr", 1e300, "student.train.lr: Input should be less than or equal to 10"),
        ("student.train.pseudo_per_real", 1e308, "pseudo_per_real: Input should be less than"),
        ("student.train.schedule.crop_sizes", [32] * 100_000, "List should have at most 64"),
        ("student.train.model_options", {"depth": 9}, "model 'small' takes no option 'depth'"),
        ("label.stores", ["/s.zarr"] * 5000, "label.stores: List should have at most 256"),
    ],
)
def test_specs_that_would_fail_late_are_refused_at_once(setup, data_root, path, value, message):
    client, _, _ = setup
    body = _spec(data_root)
    *parents, last = path.split(".")
    node = body
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    start = time.perf_counter()
    response = client.post("/api/runs", json=body, headers=AUTH)
    assert time.perf_counter() - start < 5
    assert message in _problems(response)


def test_a_paired_source_beyond_one_byte_of_classes_is_a_422(setup, data_root):
    client, _, _ = setup
    body = _spec(data_root)
    paired = {"format": "paired", "root": str(data_root / "data"), "classes": ["c"] * 300}
    body["student"]["train"]["labeled"] = paired
    assert "List should have at most 255 items" in _problems(
        client.post("/api/runs", json=body, headers=AUTH)
    )
    paired.update(classes=["road", "sky"], id_map={"7": 0, "8": 999})
    assert "id_map: train ids must be classes 0..1 or 255, got [999]" in _problems(
        client.post("/api/runs", json=body, headers=AUTH)
    )


def test_a_teacher_checkpoint_with_other_classes_is_a_422(setup, data_root, tmp_path):
    client, _, _ = setup
    teacher = write_checkpoint(data_root / "data" / "models" / "camvid_teacher.pt", space=CAMVID)
    body = _spec(data_root)
    body["teacher"] = {"checkpoint": str(teacher)}
    problems = _problems(client.post("/api/runs", json=body, headers=AUTH))
    assert "teacher.checkpoint: " in problems and "predicts ['sky', 'building'" in problems
