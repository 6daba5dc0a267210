"""What every job entry point shares: reading its config and connecting to Ray.

A job runs the same way in three places: `python jobs/x.py --config FILE` on a laptop (embedded
local Ray), `ray job submit --working-dir . -- python jobs/x.py --config FILE` (RAY_ADDRESS is set
by Ray), and from the control plane (which submits the same command through Ray's job API).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TypeVar

import ray
from pydantic import BaseModel

from core.configs import load_config

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def parse_config(description: str, cls: type[ConfigT], argv: list[str] | None = None) -> ConfigT:
    """Parse `--config FILE` (YAML or JSON) into ``cls``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, type=Path, help="YAML or JSON config file")
    args = parser.parse_args(argv)
    return load_config(args.config, cls)


def init_ray(address: str | None = None) -> None:
    """Connect to Ray: the given address, else RAY_ADDRESS (set under `ray job submit`), else
    start an embedded local instance. A no-op when Ray is already initialized in this process.

    A plain `ray.init()` would join any cluster that `ray start` left on this machine; a job run
    without an address means "here, in-process", so it asks for a fresh local instance.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Workers must import `core` and `jobs` like the driver does, also on a fresh embedded instance.
    repo_root = str(Path(__file__).resolve().parents[1])
    runtime_env = {"env_vars": {"PYTHONPATH": _pythonpath_with(repo_root)}}
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(
            address="local", runtime_env=runtime_env, include_dashboard=False, log_to_driver=True
        )


def _pythonpath_with(path: str) -> str:
    current = os.environ.get("PYTHONPATH", "")
    parts = [p for p in current.split(os.pathsep) if p]
    return os.pathsep.join([path, *[p for p in parts if p != path]])
