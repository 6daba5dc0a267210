"""``selftrain serve``: the control plane under uvicorn."""

from __future__ import annotations

import logging


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the service (REST API, dashboard, orchestrator) until interrupted.

    Settings come from ``SELFTRAIN_*`` environment variables (see services/settings.py);
    ``SELFTRAIN_API_TOKEN`` is required.

    Raises:
        SystemExit: The settings in the environment are missing or invalid.
    """
    import uvicorn
    from pydantic import ValidationError

    from services.app import create_app
    from services.settings import get_settings

    try:
        get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"SELFTRAIN_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise SystemExit(f"selftrain serve: bad settings: {problems}") from exc
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One process: the orchestrator's lock and the model cache live in it.
    uvicorn.run(create_app(), host=host, port=port, workers=1)
