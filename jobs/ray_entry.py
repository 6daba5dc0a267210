"""What every job entry point shares: reading its config and connecting to Ray.

A job runs the same way in three places: `python jobs/x.py --config FILE` on a laptop (embedded
local Ray), `ray job submit --working-dir . -- python jobs/x.py --config FILE` (RAY_ADDRESS is set
by Ray), and from the control plane (which submits the same command through Ray's job API).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import ray
from pydantic import BaseModel
from ray.autoscaler.sdk import request_resources

from core.configs import load_config
from core.errors import SelfTrainError, one_line, project_error

ConfigT = TypeVar("ConfigT", bound=BaseModel)
log = logging.getLogger(__name__)

# How long a job on a cluster waits for nodes that can hold its workers (a node that restarts, a
# pod being scheduled) before it fails with the reason; an embedded instance does not wait.
RESOURCE_WAIT_ENV = "SELFTRAIN_RESOURCE_WAIT_S"
DEFAULT_RESOURCE_WAIT_S = 120.0
RESOURCE_POLL_S = 2.0


class UnsatisfiableResourcesError(SelfTrainError):
    """No node of the cluster can hold one worker of the job, or all nodes together not all."""


def config_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the one option every job takes: ``--config FILE``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, type=Path, help="YAML or JSON config file")
    return parser


def exit_code(main: Callable[[], int], job: str) -> int:
    """Run a job's ``main``; a configuration or input error (a bad or missing config, a missing
    teacher, data that cannot be used, a store that cannot be written) prints one line,
    ``<job>: error: <what>``, and gives exit code 2 instead of a traceback, also when it was
    raised in a Ray worker and arrives wrapped in Ray's exceptions (`project_error`)."""
    try:
        return main()
    except Exception as exc:  # a project error, possibly inside Ray's wrappers; else re-raised
        error = project_error(exc)
        if error is None:
            raise
        print(f"{job}: error: {one_line(error)}", file=sys.stderr)
        return 2


def parse_config(
    description: str, cls: type[ConfigT], argv: Sequence[str] | None = None
) -> ConfigT:
    """Parse ``--config FILE`` (YAML or JSON) into ``cls``."""
    args = config_parser(description).parse_args(argv)
    return load_config(args.config, cls)


def init_ray(address: str | None = None, quiet: bool = False) -> None:
    """Connect to Ray: the given address, else RAY_ADDRESS (set under `ray job submit`), else
    start an embedded local instance. A no-op when Ray is already initialized in this process.

    A plain `ray.init()` would join any cluster that `ray start` left on this machine; a job run
    without an address means "here, in-process", so it asks for a fresh local instance.

    Args:
        address: The cluster's address.
        quiet: For an embedded instance run by a command that prints its own progress (the demo):
            workers' log lines stay in Ray's session folder instead of being copied to this
            process's output (errors still arrive as exceptions), and Ray Train's controller
            polls every 0.5 s instead of 2 s, so short epochs are not stretched by the wait.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    if quiet:
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # Workers must import `core` and `jobs` like the driver does, also on a fresh embedded instance.
    repo_root = str(Path(__file__).resolve().parents[1])
    ray.init(
        address="local",
        runtime_env={"env_vars": {"PYTHONPATH": _pythonpath_with(repo_root)}},
        include_dashboard=False,
        log_to_driver=not quiet,
        logging_level=logging.WARNING if quiet else logging.INFO,
    )
    if quiet:
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def _pythonpath_with(path: str) -> str:
    current = os.environ.get("PYTHONPATH", "")
    parts = [p for p in current.split(os.pathsep) if p]
    return os.pathsep.join([path, *[p for p in parts if p != path]])


def require_resources(
    bundle: dict[str, float], count: int, what: str, address: str | None = None
) -> None:
    """Return once the cluster's alive nodes can hold ``count`` workers of ``bundle`` each: one
    node offers a whole bundle, and all nodes together ``count`` of them (by their total
    resources: what other jobs hold now is only a wait, not a reason to fail).

    A cluster (``address``, else RAY_ADDRESS: see ``init_ray``) gets ``SELFTRAIN_RESOURCE_WAIT_S``
    (default 120) to get there; an embedded instance's nodes do not change, so it is asked once.
    Without the check a job would wait forever on a request that no node can meet (Ray only logs
    it). While it waits on a cluster it asks the autoscaler for the bundles (an autoscaling group
    that starts at 0 nodes sees no demand before the job schedules its workers).

    Raises:
        UnsatisfiableResourcesError: The nodes cannot hold them, after the wait.
    """
    on_cluster = bool(address or os.environ.get("RAY_ADDRESS"))
    wait_s = (
        float(os.environ.get(RESOURCE_WAIT_ENV, DEFAULT_RESOURCE_WAIT_S)) if on_cluster else 0.0
    )
    deadline = time.monotonic() + wait_s
    asked = False
    try:
        while True:
            nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
            problem = resource_problem(bundle, count, nodes, what)
            if problem is None:
                return
            if time.monotonic() >= deadline:
                waited = f" (waited {wait_s:.0f} s for nodes)" if wait_s else ""
                raise UnsatisfiableResourcesError(problem + waited)
            if on_cluster:
                # An autoscaling cluster grows only for demand it sees, and this check comes
                # before any: ask for the bundles (again each poll: the request is one per
                # cluster, and another job may have replaced it). Without an autoscaler, a no-op.
                _ask_autoscaler([dict(bundle)] * count)
                asked = True
            time.sleep(RESOURCE_POLL_S)
    finally:
        if asked:  # the job's own demand holds the nodes from here; let them scale down after
            _ask_autoscaler([])


def _ask_autoscaler(bundles: list[dict[str, float]]) -> None:
    """Ask the cluster's autoscaler to make room for ``bundles`` (replacing any earlier request).
    Best effort: without an answer the job still waits for its nodes and fails with the reason."""
    try:
        request_resources(bundles=bundles)
    except Exception as exc:  # an autoscaler API of another Ray version, a GCS hiccup
        log.warning("could not ask the autoscaler for %s: %s", bundles or "nothing", exc)


def resource_problem(
    bundle: dict[str, float], count: int, nodes: list[dict[str, float]], what: str
) -> str | None:
    """Why ``nodes`` (each node's total resources) cannot hold ``count`` bundles, or None."""
    asked = _describe(bundle)
    offered = "; ".join(_describe({k: n.get(k, 0.0) for k in bundle}) for n in nodes) or "none"
    if not any(all(n.get(k, 0.0) >= v for k, v in bundle.items()) for n in nodes):
        return (
            f"no node of the cluster can hold one {what} ({asked}); its alive nodes offer: "
            f"{offered}"
        )
    for key, value in bundle.items():
        total = sum(n.get(key, 0.0) for n in nodes)
        if total < count * value:
            return (
                f"{count} {what}s need {key} {count * value:g} ({asked} each), but the cluster's "
                f"alive nodes offer {key} {total:g} in all"
            )
    return None


def _describe(resources: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:g}" for key, value in resources.items())
