"""A Ray head of our own on this machine: ``selftrain serve`` without ``SELFTRAIN_RAY_ADDRESS``
starts one, and the end-to-end tests start one for their service.

``ray start --head --block`` runs as a child in a session of its own, so stopping it stops exactly
this head: ``ray stop`` would stop every Ray instance on the machine. Every port it listens on is
picked free here, because Ray's fixed defaults (GCS 6379, dashboard 8265, job agent 52365, client
server 10001, workers 10002-19999, ...) clash with any other Ray instance on the machine.

Authentication: Ray 2.60 turns token auth on for a new head when ``~/.ray/auth_token`` exists
(unless ``RAY_AUTH_MODE`` says otherwise), while a client without ``RAY_AUTH_MODE=token`` sends no
token, so a token file left by some other cluster makes job submission fail. The head therefore
gets ``RAY_AUTH_MODE=token`` and a fresh ``RAY_AUTH_TOKEN`` of its own, and ``client_env`` hands
the same to whoever talks to it (the jobs inherit them from the head).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# `ray start` options that name a port; each gets a free one.
PORT_OPTIONS = (
    "port",
    "dashboard-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "ray-client-server-port",
    "node-manager-port",
    "object-manager-port",
)
# Linux prctl option: a signal for the child when its parent dies.
PR_SET_PDEATHSIG = 1


class LocalRayError(RuntimeError):
    """The local Ray head could not be started; the message ends with the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` different TCP ports on 127.0.0.1 that nothing listens on right now."""
    # All bound at once: the system cannot hand out one port twice.
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def ray_command() -> Path:
    """The ``ray`` command installed next to this Python (so the head runs the same Ray).

    Raises:
        LocalRayError: There is none.
    """
    bin_dir = Path(sys.executable).parent
    found = shutil.which("ray", path=str(bin_dir)) or shutil.which("ray")
    if found is None:
        raise LocalRayError(f"no `ray` command in {bin_dir} or on PATH (install ray[default])")
    return Path(found)


class LocalRayHead:
    """``ray start --head --block`` as a child process, on free ports, with its own auth token.

    Args:
        num_cpus: CPUs the head offers to jobs; default: all of this machine's.
        log_path: Where the head's own output goes; default: a file in its temp dir.
        temp_dir: Ray's session folder; default: a new short folder under the system temp dir
            (Ray's unix socket paths below it must stay under 108 characters), removed on stop.

    Attributes:
        address: The dashboard (job server) URL, e.g. ``http://127.0.0.1:41234``.
        gcs_port: The port of the head's GCS (Ray's cluster address is ``<node ip>:<gcs_port>``).
        client_env: The environment variables a client of this head needs (its auth mode and
            token, its job API address); pass them to the processes that submit jobs.
        process: The ``ray start`` process, or None before ``start`` and after ``stop``.
    """

    def __init__(
        self,
        num_cpus: int | None = None,
        log_path: Path | None = None,
        temp_dir: Path | None = None,
    ) -> None:
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self._own_temp_dir = temp_dir is None
        self.temp_dir = temp_dir or Path(tempfile.mkdtemp(prefix="selftrain-ray-"))
        self.log_path = log_path or self.temp_dir / "head.log"
        self.ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS)), strict=True))
        self.gcs_port = self.ports["port"]
        self.address = f"http://127.0.0.1:{self.ports['dashboard-port']}"
        self.client_env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),
            # Ray's job and state clients prefer this (and then RAY_ADDRESS) to the address they
            # are given, and without either they look for "the" local cluster: Ray's own actors
            # (Ray Train's placement-group cleaner, ...) would find another Ray on the machine.
            "RAY_API_SERVER_ADDRESS": self.address,
        }
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        """The ``ray start`` command line."""
        return [
            str(ray_command()),
            "start",
            "--head",
            "--block",
            f"--num-cpus={self.num_cpus}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
            *(f"--{name}={port}" for name, port in self.ports.items()),
            # 0 and 0: workers bind random ports instead of Ray's shared 10002-19999 range.
            "--min-worker-port=0",
            "--max-worker-port=0",
        ]

    def start(self, timeout_s: float = 180.0) -> LocalRayHead:
        """Start the head and wait until its job API answers.

        Raises:
            LocalRayError: It exited or did not answer within ``timeout_s`` (it is stopped then).
        """
        # Not another cluster's address or token file: this head and its jobs use its own.
        dropped = ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        env.update(self.client_env)
        # On SIGTERM `ray start` first drains the node for up to 30 s (for Ray Serve); nothing
        # here needs that, and a stop should be quick.
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
        # Ray gives its dashboard 60 s to come up and then gives up on the head; a busy 2-core
        # machine can need longer (measured: missed at load 15), and we wait `timeout_s` anyway.
        env.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "180")
        # A job's `python ...` entry point is this environment's interpreter.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready(timeout_s)
        except LocalRayError:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        request = urllib.request.Request(
            f"{self.address}/api/jobs/",
            headers={"Authorization": f"Bearer {self.client_env['RAY_AUTH_TOKEN']}"},
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise LocalRayError(f"`ray start` exited; its log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(request, timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise LocalRayError(f"no job API at {self.address} after {timeout_s} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        """Whether the ``ray start`` process still runs."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the head's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    @property
    def pid(self) -> int | None:
        """The ``ray start`` process's id (also its process group's), while it runs."""
        return None if self.process is None else self.process.pid

    def stop(self, grace_s: float = 20.0) -> None:
        """Stop this head and every process in its session; safe to call twice.

        ``ray start`` shuts its daemons down in order on SIGTERM; what is left after that, or
        after ``grace_s`` (the dashboard and runtime-env agents outlive the raylet) gets SIGKILL.
        """
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=grace_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if self._own_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL this head's whole process group, as a crash of its machine would end it; a
        later ``start`` brings a fresh head up on the same ports with the same token."""
        process, self.process = self.process, None
        if process is not None:
            # Ray's workers (job drivers, actors) put themselves in process groups of their own:
            # left running, they would reconnect to the next head on the same ports and ask it
            # for what the lost one had (a failed runtime env it then caches for every job).
            # Frozen first, so that no worker starts (or loses its parent) while we look.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGSTOP)
            tree = descendants(process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> LocalRayHead:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    # In the child before exec: should the service die without stopping the head (SIGKILL, OOM),
    # the head gets SIGTERM and Ray's own fate sharing takes its daemons down with it.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from Linux's /proc; empty
    where there is no /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
