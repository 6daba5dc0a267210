"""``GET /api/runs/{id}/results`` and ``/api/models`` against a job backend in memory: a run with
an evaluation and a gate ends with a verdict; a promoted student is recorded and listed; a gate
with ``stop_on_fail`` ends a multi-loop run at the first student that fails."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_support import AUTH, SucceedingBackend, make_settings, small_run_spec, write_scenes

from core.registry import read_record, record_path
from services.app import create_app


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    write_scenes(root / "data" / "labeled", n=2)
    write_scenes(root / "data" / "unlabeled", n=2, split="extra")
    write_scenes(root / "data" / "held", n=2, split="test")
    return root


def gated_spec(root: Path, **extra) -> dict:
    spec = small_run_spec(root / "data", **extra)
    spec["label"]["sources"][0]["root"] = str(root / "data" / "unlabeled" / "leftImg8bit")
    spec["student"]["train"]["samples_per_epoch"] = 8
    spec["control"] = True
    held = {"format": "cityscapes", "root": str(root / "data" / "held"), "split": "test"}
    spec["evaluation"] = {"tests": {"held": held}}
    return spec


def finish(client: TestClient, run_id: str) -> dict:
    service = client.app.state.service
    for _ in range(200):
        service.orchestrator.step()
        run = client.get(f"/api/runs/{run_id}", headers=AUTH).json()
        if run["status"] not in ("PENDING", "RUNNING"):
            return run
        time.sleep(0.01)
    raise AssertionError(f"run {run_id} did not end: {run}")


@pytest.fixture
def client(data_root, tmp_path):
    work = {"workdir": tmp_path / "work", "database_url": f"sqlite:///{tmp_path}/db.sqlite"}
    app = create_app(make_settings(data_root, **work), SucceedingBackend(), orchestrate=False)
    with TestClient(app) as client:
        yield client


@pytest.mark.slow
def test_a_gated_run_ends_with_its_verdict_and_the_promoted_student_is_listed(client, data_root):
    # Teacher, control and student are the same untrained model: no gain, no class drop, so a
    # gate asking for no loss (min_gain 0) promotes the student.
    spec = gated_spec(data_root, gate={"min_gain": 0.0, "model_name": "street"})
    created = client.post("/api/runs", json=spec, headers=AUTH).json()
    assert created["stages"] == ["teacher", "label-0", "control", "student", "evaluate"]
    run = finish(client, created["id"])
    assert (run["status"], run["verdict"]) == ("SUCCEEDED", "promoted")

    results = client.get(f"/api/runs/{created['id']}/results", headers=AUTH).json()
    assert results["tests"] == ["held"] and results["gate"]["min_gain"] == 0.0
    (loop,) = results["loops"]
    roles = [m["role"] for m in loop["evaluation"]["models"]]
    assert roles == ["teacher", "control", "student"]
    (row,) = loop["verdict"]["table"]
    assert (row["gain_over_teacher"], row["gain_over_control"], row["passed"]) == (0.0, 0.0, True)
    assert results["verdict"]["status"] == "promoted"
    registration = results["promoted"]
    assert (registration["name"], registration["registry"]) == ("street", "run folder")
    record = read_record(record_path(run["output"], 0))
    assert record.checkpoint == str(Path(run["output"]) / "student" / "best.pt")
    # The export extra is installed here: the promoted model comes with its ONNX file.
    assert record.onnx == str(record_path(run["output"], 0).with_suffix(".onnx"))
    assert Path(record.onnx).stat().st_size > 0 and record.notes == []
    assert [a["stage"] for a in results["audits"]] == ["label-0"]

    listed = client.get("/api/models", headers=AUTH, params={"name": "street"}).json()
    assert [(m["name"], m["loop"]) for m in listed] == [("street", 0)]
    latest = client.get("/api/models/street/latest", headers=AUTH).json()
    assert latest["checkpoint"] == record.checkpoint and latest["gate"][0]["test"] == "held"
    assert client.get("/api/models/other/latest", headers=AUTH).status_code == 404


@pytest.mark.slow
def test_stop_on_fail_ends_a_multi_loop_run_at_the_first_student_that_fails(client, data_root):
    # The same models again: a gain of 0 is below 1 point, so loop 0's student fails.
    spec = gated_spec(data_root, loops=1, gate={"min_gain": 0.01, "stop_on_fail": True})
    created = client.post("/api/runs", json=spec, headers=AUTH).json()
    run = finish(client, created["id"])
    assert (run["status"], run["verdict"]) == ("SUCCEEDED", "not promoted")
    later = {s["name"]: s for s in run["stages"] if s["name"].startswith("loop1-")}
    assert {s["status"] for s in later.values()} == {"STOPPED"}
    assert later["loop1-student"]["message"].startswith("not run (gate.stop_on_fail): loop 0's")
    results = client.get(f"/api/runs/{created['id']}/results", headers=AUTH).json()
    assert results["verdict"]["reasons"][0].startswith(
        "held: the student gains +0.0 mIoU over its teacher"
    )
    assert results["promoted"] is None and results["stopped_early"].startswith("not run")
    assert not record_path(run["output"], 0).exists()


def test_the_results_name_the_class_a_later_loop_taught_away():
    # Two loops' label stages of one source (their store summaries, as the database keeps them):
    # the sign's share of the pool's pseudo labels halves from loop 0 to loop 1.
    from test_audit import store_summary

    from services.db import Run, Stage
    from services.results import run_results

    labeled = {"road": 0.5, "car": 0.3, "sign": 0.2}
    summaries = {
        "label-0": store_summary({"road": 500, "car": 300, "sign": 200}, labeled, 0.6),
        "loop1-label-0": store_summary({"road": 600, "car": 300, "sign": 100}, labeled, 0.5),
    }
    run = Run(id="r", name="n", spec={"label": {"taught_away_below": 0.75}}, output="/o")
    for index, (name, summary) in enumerate(summaries.items()):
        run.stages.append(
            Stage(index=index, name=name, kind="label", spec_field="label.sources.0",
                  status="SUCCEEDED", summary=summary)
        )  # fmt: skip
    first, second = run_results(run).audits
    assert (first.loop, first.drift, first.taught_away) == (0, None, [])
    assert (second.loop, second.taught_away) == (1, ["sign"])
    assert second.drift.previous == "label-0" and second.drift.taught_away == ["sign"]
    assert second.audit.confident_share == 0.5
