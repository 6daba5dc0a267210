"""The service's database on SQLite and on a real PostgreSQL server: migrations applied at
start-up (a database made by the schema from before migrations keeps its runs), each run's record
in its folder, a lost database rebuilt from the records (or a refusal to start that says how to
recover), and faults that fail closed: a deleted database file, a full or read-only database give
a degraded health with the reason, 503 with one line on writes, and one log line per change."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_support import AUTH, FakeBackend, make_settings, service_env, small_run_spec
from service_support import write_scenes as _write_scenes
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    text,
)

from services import migrations
from services.app import create_app
from services.db import Base, DatabaseStartError
from services.records import RECORD_NAME

# The schema as `create_all` made it before there were migrations (frozen: never import the
# models here, they move on).
V0 = MetaData()
Table(
    "runs",
    V0,
    Column("id", String(32), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("output", Text, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("error", Text),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("version", Integer, nullable=False),
)
Table(
    "stages",
    V0,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(32), ForeignKey("runs.id"), nullable=False, index=True),
    Column("index", Integer, nullable=False),
    Column("name", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("spec_field", String(64), nullable=False),
    Column("given", Boolean, nullable=False),
    Column("script", String(32)),
    Column("status", String(16), nullable=False),
    Column("submission_id", String(128)),
    Column("entrypoint", Text),
    Column("config", JSON),
    Column("outputs", JSON, nullable=False),
    Column("message", Text),
    Column("error", Text),
    Column("logs", Text),
    Column("metrics", JSON, nullable=False),
    Column("progress", JSON),
    Column("summary", JSON),
    Column("submitted_at", Float),
    Column("started_at", Float),
    Column("ended_at", Float),
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("db")
    _write_scenes(root / "data" / "labeled", n=2)
    _write_scenes(root / "data" / "unlabeled", n=2, split="extra")
    return root


def _spec(root: Path) -> dict:
    spec = small_run_spec(root / "data")
    spec["label"]["sources"][0]["root"] = str(root / "data" / "unlabeled" / "leftImg8bit")
    return spec


def _client(root: Path, work: Path, url: str, backend=None, orchestrate=False) -> TestClient:
    settings = make_settings(root, workdir=work, database_url=url, poll_interval_s=0.05)
    return TestClient(create_app(settings, backend or FakeBackend(), orchestrate=orchestrate))


def _write_v0_database(url: str) -> None:
    """Two runs as a service from before migrations left them: one finished, one running."""
    engine = create_engine(url)
    V0.create_all(engine)
    runs, stages = V0.tables["runs"], V0.tables["stages"]
    with engine.begin() as connection:
        for run_id, status in (("0123456789ab", "SUCCEEDED"), ("ba9876543210", "RUNNING")):
            connection.execute(
                runs.insert().values(
                    id=run_id,
                    name=f"old-{status.lower()}",
                    spec={"name": "old"},
                    output=f"/runs/{run_id}",
                    status=status,
                    created_at=1_700_000_000.0,
                    version=3,
                )
            )
            connection.execute(
                stages.insert().values(
                    run_id=run_id,
                    index=0,
                    name="teacher",
                    kind="teacher",
                    spec_field="teacher",
                    given=False,
                    script="train",
                    status=status,
                    submission_id=f"selftrain-{run_id}-0-teacher",
                    outputs={"checkpoint": f"/runs/{run_id}/teacher/best.pt"},
                    metrics=[],
                )
            )
    engine.dispose()


def test_a_database_from_before_migrations_is_upgraded_and_keeps_its_runs(
    database_url, data_root, tmp_path
):
    _write_v0_database(database_url)
    with _client(data_root, tmp_path / "work", database_url) as client:
        runs = client.get("/api/runs", headers=AUTH).json()
        assert sorted((r["id"], r["status"]) for r in runs) == [
            ("0123456789ab", "SUCCEEDED"),
            ("ba9876543210", "RUNNING"),
        ]
        run = client.get("/api/runs/ba9876543210", headers=AUTH).json()
        assert [s["name"] for s in run["stages"]] == ["teacher"]
        assert run["stages"][0]["outputs"] == {"checkpoint": "/runs/ba9876543210/teacher/best.pt"}
        db = client.app.state.service.db
        assert migrations.current(db.engine) == migrations.head() == "0002"
        assert "service_meta" in inspect(db.engine).get_table_names()
    # The upgrade gave every old run its record.
    record = json.loads((tmp_path / "work" / "ba9876543210" / RECORD_NAME).read_text())
    assert record["run"]["name"] == "old-running" and record["stages"][0]["status"] == "RUNNING"


def test_the_models_and_the_migrations_agree(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(database_url)
    migrations.upgrade(engine)
    migrations.upgrade(engine)  # a second start finds nothing to do
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def test_every_change_of_a_run_is_recorded_in_its_folder(database_url, data_root, tmp_path):
    backend = FakeBackend()
    with _client(data_root, tmp_path / "work", database_url, backend) as client:
        run_id = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
        record_path = tmp_path / "work" / run_id / RECORD_NAME
        record = json.loads(record_path.read_text())
        assert record["run"]["status"] == "PENDING" and record["run"]["version"] == 0
        assert [s["name"] for s in record["stages"]] == ["teacher", "label-0", "student"]

        service = client.app.state.service
        service.orchestrator.step()
        backend.set(f"selftrain-{run_id}-0-teacher", "RUNNING", "Job is currently running.")
        service.orchestrator.step()
        shown = client.get(f"/api/runs/{run_id}", headers=AUTH).json()
    record = json.loads(record_path.read_text())
    assert record["run"]["status"] == shown["status"] == "RUNNING"
    assert record["run"]["version"] == shown["version"] >= 2
    assert [s["status"] for s in record["stages"]] == ["RUNNING", "PENDING", "PENDING"]
    assert record["stages"][0]["submission_id"] == f"selftrain-{run_id}-0-teacher"


def _lose_database(url: str) -> None:
    """Delete the SQLite file, or every table of the PostgreSQL database."""
    if url.startswith("sqlite"):
        path = Path(url.split(":///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE stages, runs, service_meta, alembic_version"))
    engine.dispose()


def test_a_lost_database_is_rebuilt_from_the_run_records(database_url, data_root, tmp_path):
    backend = FakeBackend()
    teacher = None
    with _client(data_root, tmp_path / "work", database_url, backend) as client:
        run_id = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
        client.app.state.service.orchestrator.step()
        teacher = f"selftrain-{run_id}-0-teacher"
        backend.set(teacher, "RUNNING", "Job is currently running.")
        client.app.state.service.orchestrator.step()
        before = client.get(f"/api/runs/{run_id}", headers=AUTH).json()
    _lose_database(database_url)

    with _client(data_root, tmp_path / "work", database_url, backend) as client:
        after = client.get(f"/api/runs/{run_id}", headers=AUTH).json()
        assert after == before
        # The rebuilt run goes on where it was: its teacher is not submitted a second time.
        client.app.state.service.orchestrator.step()
        assert backend.submits == [teacher]
        assert client.get("/api/health").json()["database"] == "ok"


def test_an_empty_database_beside_unrecorded_run_folders_refuses_to_start(data_root, tmp_path):
    work = tmp_path / "work"
    (work / "0123456789ab" / "configs").mkdir(parents=True)
    url = f"sqlite:///{tmp_path}/service.db"
    settings = make_settings(data_root, workdir=work, database_url=url)
    with pytest.raises(DatabaseStartError, match="1 run folder.s. without a run record"):
        create_app(settings, FakeBackend(), orchestrate=False)

    # `selftrain serve` says so in one line and exits 1, before it serves anything.
    env = service_env(
        tmp_path,
        SELFTRAIN_API_TOKEN="t",
        SELFTRAIN_RAY_ADDRESS="http://127.0.0.1:9",
        SELFTRAIN_DATABASE_URL=url,
        SELFTRAIN_WORKDIR=str(work),
    )
    done = subprocess.run(
        [sys.executable, "-m", "selftrain.cli", "serve", "--port", "9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"selftrain serve: the database sqlite:///{tmp_path}/service.db has")
    assert "0123456789ab" in last and "move those folders out of" in last
    assert "Traceback" not in done.stderr


def test_a_database_file_deleted_while_serving_is_noticed(data_root, tmp_path):
    url = f"sqlite:///{tmp_path}/service.db"
    with _client(data_root, tmp_path / "work", url) as client:
        run_id = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
        _lose_database(url)
        health = client.get("/api/health").json()
        assert health["status"] == "degraded"
        assert health["database"].startswith(
            f"the database file {tmp_path}/service.db was deleted or replaced while the service"
        )
        refused = client.post("/api/runs", json=_spec(data_root), headers=AUTH)
        assert refused.status_code == 503
        assert refused.json() == {"detail": f"database unavailable: {health['database']}"}
        assert "\n" not in refused.json()["detail"]
    with _client(data_root, tmp_path / "work", url) as client:
        assert [r["id"] for r in client.get("/api/runs", headers=AUTH).json()] == [run_id]
        assert client.get("/api/health").json()["status"] == "ok"


def _on_every_connection(engine, statement: str):
    """Run ``statement`` on each new connection of ``engine`` from now on (pooled ones are
    dropped); returns the function that undoes it."""

    def apply(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute(statement)
        cursor.close()

    event.listen(engine, "connect", apply)
    engine.dispose()

    def undo() -> None:
        event.remove(engine, "connect", apply)
        engine.dispose()

    return undo


def test_a_full_sqlite_database_fails_closed(data_root, tmp_path):
    url = f"sqlite:///{tmp_path}/service.db"
    with _client(data_root, tmp_path / "work", url) as client:
        first = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
        engine = client.app.state.service.db.engine
        with engine.connect() as connection:
            pages = connection.execute(text("PRAGMA page_count")).scalar_one()
        # SQLite's own limit answers as a full disk does (SQLITE_FULL).
        undo = _on_every_connection(engine, f"PRAGMA max_page_count = {pages}")
        refused = client.post("/api/runs", json=_spec(data_root), headers=AUTH)
        full = "database unavailable: OperationalError: database or disk is full"
        assert (refused.status_code, refused.json()) == (503, {"detail": full})
        health = client.get("/api/health").json()
        assert health["status"] == "degraded"
        assert health["database"] == "OperationalError: database or disk is full"
        assert client.get("/api/runs", headers=AUTH).status_code == 200  # reads go on
        undo()
        assert client.get("/api/health").json()["status"] == "ok"  # the probe write succeeds
    with _client(data_root, tmp_path / "work", url) as client:
        assert [r["id"] for r in client.get("/api/runs", headers=AUTH).json()] == [first]


def _make_read_only(url: str, engine, request) -> tuple[str, object]:
    """Make the database read-only as its engine sees it; returns the error's one line and the
    function that makes it writable again."""
    if url.startswith("sqlite"):
        # As root, file permissions do not stop a write; SQLite's query_only answers as a
        # read-only file does (SQLITE_READONLY).
        undo = _on_every_connection(engine, "PRAGMA query_only = ON")
        return "OperationalError: attempt to write a readonly database", undo
    admin = create_engine(request.getfixturevalue("postgres_server"), isolation_level="AUTOCOMMIT")
    name = engine.url.database

    def set_read_only(on: bool) -> None:
        with admin.connect() as connection:
            value = "on" if on else "off"
            connection.execute(
                text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {value}')
            )
        engine.dispose()

    set_read_only(True)

    def undo() -> None:
        set_read_only(False)
        admin.dispose()

    reason = "ReadOnlySqlTransaction: cannot execute UPDATE in a read-only transaction"
    return reason, undo


def test_a_read_only_database_fails_closed_and_says_so_once(
    database_url, data_root, tmp_path, caplog, request
):
    backend = FakeBackend()
    caplog.set_level(logging.INFO)
    client = _client(data_root, tmp_path / "work", database_url, backend, orchestrate=True)
    with client:
        run_id = client.post("/api/runs", json=_spec(data_root), headers=AUTH).json()["id"]
        teacher = f"selftrain-{run_id}-0-teacher"
        _wait(lambda: teacher in backend.jobs)
        engine = client.app.state.service.db.engine
        reason, undo = _make_read_only(database_url, engine, request)
        caplog.clear()
        # Every poll (each 0.05 s) tries to record the running teacher and fails.
        backend.set(teacher, "RUNNING", "Job is currently running.")
        time.sleep(1.5)
        refused = client.post("/api/runs", json=_spec(data_root), headers=AUTH)
        assert refused.status_code == 503
        assert refused.json()["detail"].startswith("database unavailable: ")
        assert "\n" not in refused.json()["detail"]
        health = client.get("/api/health").json()
        assert health["status"] == "degraded" and health["database"].split(":")[0] in reason
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert [r.getMessage() for r in errors] == [f"database: {reason}"]
        assert not [r for r in caplog.records if r.exc_info]  # no traceback, ever

        undo()
        assert client.get("/api/health").json()["status"] == "ok"
        _wait(lambda: client.get(f"/api/runs/{run_id}", headers=AUTH).json()["status"] == "RUNNING")
        assert [r.getMessage() for r in caplog.records if r.name == "services.db"] == [
            f"database: {reason}",
            "database: works again",
        ]


def _wait(condition, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_database_that_cannot_be_reached_refuses_to_start(data_root, tmp_path):
    url = "postgresql+psycopg://selftrain:secret@127.0.0.1:9/none"
    settings = make_settings(data_root, workdir=tmp_path / "work", database_url=url)
    with pytest.raises(DatabaseStartError) as caught:
        create_app(settings, FakeBackend(), orchestrate=False)
    message = str(caught.value)
    assert message.startswith("database postgresql+psycopg://selftrain:***@127.0.0.1:9/none: ")
    assert "secret" not in message and "\n" not in message
