"""``selftrain serve`` on one machine with one command: no SELFTRAIN_RAY_ADDRESS (it starts a Ray
head of its own) and no SELFTRAIN_API_TOKEN (it makes one up and prints the dashboard's address
with it). It serves the dashboard, runs a submitted run, and on SIGTERM stops its Ray head: every
process of the head has exited and its ports are closed. Plus the pieces of that, without Ray.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from service_support import (
    STAGE_TIMEOUT_S,
    ServiceProcess,
    live_run_spec,
    service_env,
    succeeded,
    write_checkpoint,
    write_live_data,
)

from services.localray import (
    PORT_OPTIONS,
    LocalRayError,
    LocalRayHead,
    descendants,
    port_open,
    ray_command,
)
from services.serve import dashboard_url, read_settings

HEAD_LINE = re.compile(r"local Ray head: jobs at http://127.0.0.1:(\d+), GCS port (\d+)")
PID_LINE = re.compile(r"local Ray head: .* pid (\d+)")
URL_LINE = re.compile(r"dashboard at (http://127\.0\.0\.1:\d+/)#token=(\S+)")


def _process_tree(root_pid: int) -> set[int]:
    """``root_pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def local_service(tmp_path):
    try:
        ray_command()
    except LocalRayError as exc:
        pytest.skip(str(exc))
    if not Path("/proc/self/stat").exists():
        pytest.skip("reads the process tree from /proc")
    write_live_data(tmp_path / "data")
    write_checkpoint(tmp_path / "data" / "teacher.pt")
    write_checkpoint(tmp_path / "data" / "student.pt")
    env = service_env(tmp_path, SELFTRAIN_LOCAL_RAY_CPUS="2")
    service = ServiceProcess(tmp_path, env, token=None)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No SELFTRAIN_ variables but a workdir in ``tmp_path``."""
    for name in [n for n in os.environ if n.startswith("SELFTRAIN_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SELFTRAIN_WORKDIR", str(tmp_path / "work"))


def test_dashboard_url_signs_in_through_the_fragment():
    assert dashboard_url("127.0.0.1", 8000) == "http://127.0.0.1:8000/"
    assert dashboard_url("0.0.0.0", 8000, "t0k") == "http://127.0.0.1:8000/#token=t0k"
    assert dashboard_url("example.org", 80, "t0k") == "http://example.org:80/#token=t0k"


def test_a_made_up_token_stands_in_only_for_a_missing_one(clean_env, monkeypatch):
    with pytest.raises(SystemExit, match="SELFTRAIN_API_TOKEN"):
        read_settings()
    assert read_settings("made-up").api_token.get_secret_value() == "made-up"
    monkeypatch.setenv("SELFTRAIN_API_TOKEN", "from-env")
    assert read_settings().api_token.get_secret_value() == "from-env"


def test_no_or_empty_ray_address_means_a_local_head(clean_env, monkeypatch):
    assert read_settings("t").ray_address is None
    monkeypatch.setenv("SELFTRAIN_RAY_ADDRESS", "")
    assert read_settings("t").ray_address is None
    monkeypatch.setenv("SELFTRAIN_RAY_ADDRESS", "http://head:8265")
    assert read_settings("t").ray_address == "http://head:8265"
    monkeypatch.setenv("SELFTRAIN_LOCAL_RAY_CPUS", "0")
    with pytest.raises(SystemExit, match="SELFTRAIN_LOCAL_RAY_CPUS"):
        read_settings("t")


def test_a_local_head_listens_on_ports_of_its_own_with_a_token_of_its_own(tmp_path):
    try:
        ray_command()
    except LocalRayError as exc:
        pytest.skip(str(exc))
    head, other = LocalRayHead(3, temp_dir=tmp_path), LocalRayHead(3, temp_dir=tmp_path)
    command = head.command()
    options = dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)
    ports = [int(options[name]) for name in PORT_OPTIONS]
    assert len(set(ports)) == len(PORT_OPTIONS) == 9
    assert head.address == f"http://127.0.0.1:{options['dashboard-port']}"
    assert head.gcs_port == int(options["port"])
    assert options["num-cpus"] == "3" and options["temp-dir"] == str(tmp_path)
    assert options["min-worker-port"] == options["max-worker-port"] == "0"
    assert head.client_env["RAY_AUTH_MODE"] == "token"
    assert head.client_env["RAY_API_SERVER_ADDRESS"] == head.address
    assert len(head.client_env["RAY_AUTH_TOKEN"]) == 32
    assert head.client_env["RAY_AUTH_TOKEN"] != other.client_env["RAY_AUTH_TOKEN"]
    head.stop()  # never started: nothing to stop, and a temp dir it was given stays
    assert tmp_path.is_dir() and head.pid is None


@pytest.mark.slow
def test_serve_without_ray_address_runs_a_run_and_stops_its_head(local_service):
    service = local_service
    service.start()
    log = service.log()
    url, token = URL_LINE.search(log).groups()
    assert url == f"{service.url}/"
    service.token = token
    jobs_port, gcs_port = (int(p) for p in HEAD_LINE.search(log).groups())
    head_pid = int(PID_LINE.search(log).group(1))
    assert port_open(gcs_port) and port_open(jobs_port)

    status, page, kind = service.request("GET", "/")
    assert status == 200 and kind.startswith("text/html") and b"selftrain" in page
    service.token = "wrong"
    assert service.request("GET", "/api/runs")[0] == 401
    service.token = token

    # Teacher and student are given, so the run is one job (labeling) on the local head: training
    # jobs on such a head are test_service_e2e's.
    data = service.root / "data"
    spec = live_run_spec(data, "local", teacher={"checkpoint": str(data / "teacher.pt")})
    spec["student"] = {"checkpoint": str(data / "student.pt")}
    run_id = service.json("POST", "/api/runs", spec)["id"]
    run = service.wait_until(run_id, succeeded, STAGE_TIMEOUT_S)
    assert [s["status"] for s in run["stages"]] == ["SUCCEEDED"] * 3
    assert [s["submission_id"] is not None for s in run["stages"]] == [False, True, False]
    assert run["stages"][1]["summary"]["n_done"] == 8

    head_processes = _process_tree(head_pid)
    assert len(head_processes) > 3  # `ray start`, the GCS, the raylet, the dashboard, ...
    assert service.stop() == 128 + signal.SIGTERM
    assert "stopping the local Ray head" in service.log()
    deadline = time.monotonic() + 10  # orphaned children are reaped by init a moment later
    while any(_running(pid) for pid in head_processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in head_processes if _running(pid)] == []
    assert not port_open(gcs_port) and not port_open(jobs_port)


def test_the_processes_below_a_process_are_its_children_and_theirs():
    # bash -> (sleep in a session of its own, bash -> sleep): three processes below the first.
    script = "setsid sleep 30 & bash -c 'sleep 30 & wait' & wait"
    top = subprocess.Popen(["bash", "-c", script])
    try:
        deadline = time.monotonic() + 10
        while True:
            names = sorted(_command_name(pid) for pid in descendants(top.pid))
            if names.count("sleep") == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        # setsid execs sleep in place (or forks it first): one to two processes for it.
        assert names.count("sleep") == 2 and names.count("bash") == 1, names
    finally:
        for pid in descendants(top.pid):
            os.kill(pid, signal.SIGKILL)
        top.kill()
        top.wait()


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "ended"


def test_a_killed_head_takes_a_process_of_another_session_below_it_along():
    # A Ray worker leaves the head's process group; a kill of that group alone left it running.
    head = LocalRayHead(num_cpus=1)
    head.process = subprocess.Popen(
        ["bash", "-c", "setsid sleep 30 & wait"], start_new_session=True
    )
    deadline = time.monotonic() + 10
    while not (apart := _outside_group(head.process.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(apart) == 1
    head.kill()
    while _running(apart[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(apart[0])


def _outside_group(pid: int) -> list[int]:
    """The processes below ``pid`` that left its process group."""
    apart = []
    for child in descendants(pid):
        try:
            if os.getpgid(child) != pid:
                apart.append(child)
        except ProcessLookupError:
            pass
    return apart
