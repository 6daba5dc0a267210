"""The promoted models the service knows: MLflow's Model Registry when the service tracks its runs,
else the records in its runs' folders (core.registry)."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import HTTPException, status
from sqlalchemy import select

from core.registry import Registration, download_checkpoint, folder_records, mlflow_records
from services.db import Run
from services.deps import Service

log = logging.getLogger(__name__)


def promoted_models(service: Service, name: str | None = None) -> list[Registration]:
    """The promoted models (of ``name``), newest first.

    Raises:
        HTTPException: 503 when MLflow's registry does not answer.
    """
    tracking = service.orchestrator.tracking
    if tracking is not None:
        try:
            records = mlflow_records(tracking.settings.uri, name)
        except Exception as exc:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"MLflow's model registry at {tracking.settings.uri} does not answer: {exc}",
            ) from exc
    else:
        with service.db.session() as session:
            folders = [Path(output) for output in session.scalars(select(Run.output))]
        records, problems = folder_records(folders)
        for problem in problems:
            log.warning("promotion record skipped: %s", problem)
        if name is not None:
            records = [r for r in records if r.name == name]
    return sorted(records, key=lambda r: (r.registered_at, r.version or 0), reverse=True)


def latest_checkpoint(service: Service, name: str) -> Path:
    """The checkpoint of the latest promoted model of ``name`` on this machine (downloaded from
    MLflow's registry once per version when the service tracks its runs).

    Raises:
        HTTPException: 404 when nothing of that name was promoted; 503 when MLflow fails.
    """
    found = promoted_models(service, name)
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no promoted model named {name!r}")
    latest = found[0]
    tracking = service.orchestrator.tracking
    if tracking is None or latest.version is None:
        return Path(latest.checkpoint)
    try:
        cache = service.settings.workdir / "registry"
        return download_checkpoint(tracking.settings.uri, latest, cache)
    except Exception as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"cannot fetch {latest.uri} from MLflow: {type(exc).__name__}: {exc}",
        ) from exc
