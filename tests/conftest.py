"""Fixtures shared across test files.

The live ones are session fixtures: one Ray head, ``selftrain serve`` on it, and one run finished
there, set up once for tests/test_service_e2e.py and tests/test_dashboard.py. Their helpers are in
tests/service_support.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from service_support import (
    MLFLOW_UI,
    STAGE_TIMEOUT_S,
    TOKEN,
    ServiceProcess,
    fresh_postgres_database,
    live_run_spec,
    postgres_installed,
    service_env,
    start_postgres,
    stop_postgres,
    succeeded,
    write_live_data,
)
from xdist.scheduler import LoadScopeScheduling

from services.localray import LocalRayError, LocalRayHead, ray_command

# The live fixtures are session-scoped so that test_service_e2e.py and test_dashboard.py share one
# run. Pytest keeps a session fixture until the whole suite ends, which would leave the service and
# its Ray head (over a gigabyte of memory) running beside unrelated tests; the two hooks below
# stop them after the last test that uses them.
_LAST_LIVE_TEST = pytest.StashKey["pytest.Item | None"]()
_live_cleanups: list[Callable[[], object]] = []
LIVE_FIXTURES = {"live_service", "finished_run"}


# The slowest test files and the seconds each took on the 2-core machine (two xdist workers, load
# 5-7, 2026-12). Tests run file by file on two pytest-xdist workers, the longest files first, so
# that a long one does not start last and leave the other worker idle at the end.
SLOW_FILES = {
    "test_gate_run.py": 358,
    "test_two_nodes.py": 443,
    "test_local_run.py": 374,
    "test_train_job.py": 370,
    "test_chaos.py": 311,
    "test_service_e2e.py": 300,
    "test_dashboard.py": 250,
    "test_dashboard_actions.py": 250,
    "test_gpu_bench.py": 251,
    "test_label_job.py": 250,
    "test_label_job_kill.py": 240,
    "test_demo.py": 205,
    "test_smp.py": 136,
    "test_label_job_submit.py": 86,
    "test_train_job_submit.py": 78,
    "test_serve_local.py": 65,
    "test_cli.py": 57,
    "test_job_errors.py": 40,
    "test_label_export.py": 38,
}
# The files whose tests use the live service run on one worker, one after another, so that the
# service and its run start once.
LIVE_FILES = ("test_dashboard.py", "test_dashboard_actions.py", "test_service_e2e.py")


def work_unit(path: str) -> str:
    """What one worker runs in one go: a test file, or all of LIVE_FILES."""
    return "live service" if Path(path).name in LIVE_FILES else path


class FileScheduling(LoadScopeScheduling):
    """pytest-xdist's scheduling by scope, with work_unit as the scope (its ``loadgroup`` cannot
    be used: it renames test ids, which pytest 9 no longer allows)."""

    def _split_scope(self, nodeid: str) -> str:
        return work_unit(nodeid.split("::", 1)[0])


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> FileScheduling:
    return FileScheduling(config, log)


def uses_live_service(item: pytest.Item) -> bool:
    # Not "ray_head" alone: a test file may name a fixture of its own so.
    return bool(LIVE_FIXTURES & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    strays = sorted({item.path.name for item in items if uses_live_service(item)} - set(LIVE_FILES))
    if strays:
        raise pytest.UsageError(f"tests/conftest.py: add {strays} to LIVE_FILES")
    seconds: dict[str, int] = {}
    for path in {item.path for item in items}:
        unit = work_unit(path.name)
        seconds[unit] = seconds.get(unit, 0) + SLOW_FILES.get(path.name, 0)
    # Longest units first (xdist keeps this order: --no-loadscope-reorder); a file keeps its order.
    items.sort(key=lambda item: -seconds[work_unit(item.path.name)])
    users = [item for item in items if uses_live_service(item)]
    config.stash[_LAST_LIVE_TEST] = users[-1] if users else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    result = yield
    if item is item.config.stash.get(_LAST_LIVE_TEST, None):
        while _live_cleanups:
            _live_cleanups.pop()()
    return result


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory) -> Iterator[LocalRayHead]:
    """A Ray head with 2 CPUs on free ports; a start that times out on a busy machine is tried
    once more."""
    try:
        ray_command()
    except LocalRayError as exc:
        pytest.skip(str(exc))
    folder = tmp_path_factory.mktemp("ray")
    for attempt in range(2):
        head = LocalRayHead(num_cpus=2, log_path=folder / f"head-{attempt}.log")
        try:
            head.start(timeout_s=180)
            break
        except LocalRayError as exc:
            error = exc
    else:
        pytest.fail(f"the Ray head did not start: {error}")
    _live_cleanups.append(head.stop)
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="session")
def live_service(ray_head: LocalRayHead, tmp_path_factory) -> Iterator[ServiceProcess]:
    """``selftrain serve`` on ``ray_head`` over ``write_live_data``'s scenes in ``root/data``."""
    root = tmp_path_factory.mktemp("live")
    write_live_data(root / "data")
    env = service_env(
        root,
        SELFTRAIN_API_TOKEN=TOKEN,
        SELFTRAIN_RAY_ADDRESS=ray_head.address,
        # Tracked in MLflow's default store, <workdir>/mlflow.db; links name this UI address.
        SELFTRAIN_TRACKING_URI="",
        SELFTRAIN_TRACKING_UI=MLFLOW_UI,
        **ray_head.client_env,
    )
    service = ServiceProcess(root, env, head=ray_head)
    _live_cleanups.append(service.stop)
    try:
        service.start()
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def finished_run(live_service: ServiceProcess) -> dict:
    """One run (teacher -> label -> student) finished on ``live_service``, as the API shows it."""
    spec = live_run_spec(live_service.root / "data", "synthetic-demo")
    created = live_service.json("POST", "/api/runs", spec)
    return live_service.wait_until(created["id"], succeeded, 3 * STAGE_TIMEOUT_S)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server's URL: the one ``.ci/run`` started (its URL in
    ``SELFTRAIN_TEST_POSTGRES_URL``), else one started here with Debian's package (.ci/postgres);
    skipped where neither is there."""
    given = os.environ.get("SELFTRAIN_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    if not postgres_installed():
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    # Not under pytest's tmp_path: the server runs as the `postgres` user when we are root, and
    # pytest's folders are private to us.
    folder = Path(tempfile.mkdtemp(prefix="selftrain-pg-"))
    try:
        yield start_postgres(folder)
    finally:
        stop_postgres(folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> Iterator[str]:
    """An empty database for one test: a SQLite file in ``tmp_path``, or a new database on the
    PostgreSQL server (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/service.db"
        return
    url, drop = fresh_postgres_database(request.getfixturevalue("postgres_server"))
    try:
        yield url
    finally:
        drop()
