"""``selftrain serve``: the control plane under uvicorn.

With ``SELFTRAIN_RAY_ADDRESS`` it submits jobs to that cluster. Without it, it starts a Ray head of
its own on this machine (services/localray.py) and stops it again on exit, Ctrl-C and SIGTERM
included, so one command runs the dashboard and the jobs on one machine. Without
``SELFTRAIN_API_TOKEN`` it makes up a random token and prints the dashboard's address with it.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
from types import FrameType

from services.db import DatabaseStartError
from services.localray import LocalRayError, LocalRayHead
from services.settings import Settings

log = logging.getLogger(__name__)

# Seconds that requests in progress get to finish after SIGTERM or Ctrl-C. Runs need none: they
# are in the database and their jobs on the cluster, and the next service picks them up.
SHUTDOWN_GRACE_S = 3


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the service (REST API, dashboard, orchestrator) until interrupted.

    Settings come from ``SELFTRAIN_*`` environment variables (see services/settings.py).

    Raises:
        SystemExit: The settings in the environment are invalid, the local Ray head did not
            start, the database must not be served (it says how to recover), or the process got
            SIGTERM (after the head was stopped).
    """
    import uvicorn

    from services.app import create_app

    generated_token = None
    if not os.environ.get("SELFTRAIN_API_TOKEN"):
        generated_token = secrets.token_urlsafe(24)
    settings = read_settings(generated_token)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    head: LocalRayHead | None = None
    # SIGTERM becomes SystemExit, so the `finally` below stops the head; uvicorn puts this handler
    # back after its own graceful shutdown and raises the signal again.
    previous_handler = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if settings.ray_address is None:
            head = LocalRayHead(settings.local_ray_cpus, settings.workdir / "ray-head.log")
            settings = _use_local_head(head, settings)
        _announce(host, port, generated_token)
        try:
            app = create_app(settings)
        except DatabaseStartError as exc:
            raise SystemExit(f"selftrain serve: {exc}") from exc
        # One process: the orchestrator's lock and the model cache live in it.
        # Open event streams never end by themselves: give them SHUTDOWN_GRACE_S, then close.
        uvicorn.run(
            app, host=host, port=port, workers=1, timeout_graceful_shutdown=SHUTDOWN_GRACE_S
        )
    except KeyboardInterrupt:
        pass  # Ctrl-C: a normal way to stop the service
    finally:
        if head is not None:
            log.info("stopping the local Ray head")
            head.stop()
        signal.signal(signal.SIGTERM, previous_handler)


def _use_local_head(head: LocalRayHead, settings: Settings) -> Settings:
    """Start ``head`` and return ``settings`` that submit jobs to it.

    Raises:
        SystemExit: It did not start.
    """
    log.info("no SELFTRAIN_RAY_ADDRESS: starting a local Ray head (log: %s)", head.log_path)
    try:
        head.start()
    except LocalRayError as exc:
        raise SystemExit(f"selftrain serve: no local Ray head: {exc}") from exc
    log.info(
        "local Ray head: jobs at %s, GCS port %d, %d CPUs, pid %s",
        head.address,
        head.gcs_port,
        head.num_cpus,
        head.pid,
    )
    # This process submits the jobs: it needs the head's auth mode and token, set before Ray's
    # client reads its configuration.
    os.environ.update(head.client_env)
    return settings.model_copy(update={"ray_address": head.address})


def read_settings(api_token: str | None = None) -> Settings:
    """The settings from the environment, with ``api_token`` in place of a missing token.

    Raises:
        SystemExit: Missing or invalid settings, each named by its environment variable.
    """
    from pydantic import ValidationError

    try:
        if api_token is None:
            return Settings()  # type: ignore[call-arg]  # api_token comes from the environment
        return Settings(api_token=api_token)  # type: ignore[arg-type]  # str -> SecretStr
    except ValidationError as exc:
        problems = "; ".join(
            f"SELFTRAIN_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise SystemExit(f"selftrain serve: bad settings: {problems}") from exc


def dashboard_url(host: str, port: int, token: str | None = None) -> str:
    """The dashboard's address as a browser on this machine reaches it; with ``token``, signed in
    (the page takes ``#token=`` from the fragment, which never reaches a server or its logs)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    url = f"http://{shown}:{port}/"
    return f"{url}#token={token}" if token else url


def _announce(host: str, port: int, generated_token: str | None) -> None:
    # Printed, not logged: the one line a person starting the service looks for.
    url = dashboard_url(host, port, generated_token)
    if generated_token is None:
        print(f"selftrain: dashboard at {url} (token: SELFTRAIN_API_TOKEN)", flush=True)
        return
    print(
        f"selftrain: SELFTRAIN_API_TOKEN is not set; this run's API token is {generated_token}\n"
        f"selftrain: dashboard at {url}",
        flush=True,
    )


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # 128 + 15, what a shell reports for a process ended by SIGTERM.
    sys.exit(128 + signum)
