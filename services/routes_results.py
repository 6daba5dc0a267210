"""``/api/runs/{id}/results`` (a run's evaluations, gate verdicts, audits and drift) and
``/api/models`` (the promoted models and their gate tables)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi import Path as PathParam

from core.registry import Registration
from services.deps import ServiceDep
from services.registry import promoted_models
from services.results import run_results
from services.routes_runs import NOT_FOUND, RunId, _run
from services.schemas import RunResults

router = APIRouter(tags=["results"])

ModelName = Annotated[str, PathParam(max_length=100, description="A registered model's name")]


@router.get("/runs/{run_id}/results", responses={404: NOT_FOUND})
def get_results(run_id: RunId, service: ServiceDep) -> RunResults:
    """The run's models on its test sets per loop, the promotion gate's verdicts (with their
    tables), the promoted student's registration, and every label stage's audit and drift."""
    with service.db.session() as session:
        return run_results(_run(session, run_id))


@router.get("/models", responses={503: {"description": "MLflow's registry does not answer"}})
def list_models(
    service: ServiceDep,
    name: Annotated[str | None, Query(max_length=100)] = None,
) -> list[Registration]:
    """Every promoted student (of ``name``), newest first, with its gate table and audit."""
    return promoted_models(service, name)


@router.get("/models/{name}/latest", responses={404: {"description": "Nothing promoted"}, 503: {}})
def latest_model(name: ModelName, service: ServiceDep) -> Registration:
    """The latest promoted model of ``name``."""
    found = promoted_models(service, name)
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no promoted model named {name!r}")
    return found[0]
