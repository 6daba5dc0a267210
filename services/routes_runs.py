"""``/api/runs``: create, list, show and cancel runs; a stage's logs and pseudo labels; the event
streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from fastapi import Path as PathParam
from fastapi.responses import PlainTextResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy import select

from core.plan import RunSpec, SpecError
from services.artifacts import encode_png, heat_map, overlay, shrink
from services.db import TERMINAL, Run, Stage
from services.deps import Service, ServiceDep
from services.ray_jobs import ClusterUnavailableError
from services.schemas import (
    PseudoLabelSamples,
    ReviewCandidates,
    RunCreated,
    RunOut,
    RunSummary,
    run_out,
    run_summary,
)
from services.spec_inputs import resolve_path

router = APIRouter(tags=["runs"])

RunId = Annotated[str, PathParam(max_length=32, description="The run's id")]
StageName = Annotated[str, PathParam(max_length=64, description="e.g. teacher, label-0, student")]
PNG = {"content": {"image/png": {}}, "description": "A PNG image"}
NOT_FOUND = {"description": "No such run or stage"}
# Overlays the dashboard shows per label stage.
SAMPLES_SHOWN = 4
# The review view ranks at most this many done images of a store (spread evenly over it), so a
# request reads a bounded number of confidence maps whatever the store's size.
REVIEW_SCAN = 2048


@router.post("/runs", status_code=status.HTTP_201_CREATED, responses={422: {}})
def create_run(spec: RunSpec, service: ServiceDep) -> RunCreated:
    """Check the spec, plan its stages and start the run (the first job is submitted within a
    poll interval)."""
    run_id = service.orchestrator.create_run(spec)
    with service.db.session() as session:
        run = _run(session, run_id)
        return RunCreated(id=run.id, status=run.status, stages=[s.name for s in run.stages])


@router.get("/runs")
def list_runs(
    service: ServiceDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[RunSummary]:
    """The newest runs first."""
    with service.db.session() as session:
        runs = session.scalars(select(Run).order_by(Run.created_at.desc()).limit(limit))
        return [run_summary(run) for run in runs]


@router.get("/runs/{run_id}", responses={404: NOT_FOUND})
def get_run(run_id: RunId, service: ServiceDep) -> RunOut:
    """The run with its spec and stages: status, Ray submission id, times, metrics, progress."""
    with service.db.session() as session:
        return run_out(_run(session, run_id), service.orchestrator.tracking)


@router.post("/runs/{run_id}/cancel", responses={404: NOT_FOUND, 503: {}})
def cancel_run(run_id: RunId, service: ServiceDep) -> RunOut:
    """Stop the run's Ray job and mark the run STOPPED (a finished run is left as it is)."""
    try:
        found = service.orchestrator.cancel_run(run_id)
    except ClusterUnavailableError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id!r}")
    return get_run(run_id, service)


@router.get(
    "/runs/{run_id}/stages/{stage_name}/logs",
    response_class=PlainTextResponse,
    responses={404: NOT_FOUND, 503: {}},
)
def stage_logs(run_id: RunId, stage_name: StageName, service: ServiceDep) -> str:
    """The Ray job's driver log: live while it runs, the kept tail once it ended."""
    with service.db.session() as session:
        stage = _stage(session, run_id, stage_name)
        kept, sid, ended = stage.logs, stage.submission_id, stage.status in TERMINAL
    if ended and kept is not None:
        return kept
    if sid is None:
        return kept or ""
    try:
        if service.backend.info(sid) is None:
            return kept or ""
        return service.backend.logs(sid)
    except ClusterUnavailableError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc


@router.get("/runs/{run_id}/stages/{stage_name}/pseudo-labels", responses={404: NOT_FOUND})
def pseudo_label_samples(
    run_id: RunId, stage_name: StageName, service: ServiceDep
) -> PseudoLabelSamples:
    """A few images of a label stage's store that have pseudo labels."""
    store = _open_store(service, run_id, stage_name)
    done = store.done_indices()
    picks = done[:: max(1, len(done) // SAMPLES_SHOWN)][:SAMPLES_SHOWN]
    return PseudoLabelSamples(
        store=str(store.path), n_done=len(done), indices=[int(i) for i in picks]
    )


@router.get("/runs/{run_id}/stages/{stage_name}/review", responses={404: NOT_FOUND})
def review_candidates(
    run_id: RunId,
    stage_name: StageName,
    service: ServiceDep,
    n: Annotated[int, Query(ge=1, le=64)] = 6,
) -> ReviewCandidates:
    """The store's images the teacher is least sure of (lowest mean confidence first, among up to
    REVIEW_SCAN done images spread over the store), and per-class confidence histograms of them."""
    from core.review import confidence_histograms, mean_confidences

    store = _open_store(service, run_id, stage_name)
    done = store.done_indices()
    scanned = done[:: max(1, -(-len(done) // REVIEW_SCAN))]
    means = mean_confidences(store, scanned)
    order = np.argsort(means, kind="stable")[:n]
    picks = [int(scanned[k]) for k in order]
    return ReviewCandidates(
        n_done=len(done),
        n_scanned=len(scanned),
        indices=picks,
        mean_confidence=[float(means[k]) for k in order],
        histograms=confidence_histograms(store, picks),
    )


@router.get(
    "/runs/{run_id}/stages/{stage_name}/pseudo-labels/{index}",
    response_class=Response,
    responses={200: PNG, 404: NOT_FOUND},
)
def pseudo_label_picture(
    run_id: RunId,
    stage_name: StageName,
    index: Annotated[int, PathParam(ge=0)],
    service: ServiceDep,
    view: Literal["overlay", "image", "label", "confidence"] = "overlay",
) -> Response:
    """Image ``index`` of the store, its colored pseudo label over it, the label alone, or the
    teacher's confidence as a heat map (blue: unsure, red: sure) (PNG, shrunk to the dashboard's
    width)."""
    from core.errors import DataError
    from core.io import read_image
    from core.store import ImageStatus

    store = _open_store(service, run_id, stage_name)
    if index >= store.n_images or store.status(index) != ImageStatus.DONE:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"image {index} has no pseudo label")
    space = store.label_space
    label = store.label(index)
    if view == "label":
        picture = space.colorize(label)
    elif view == "confidence":
        picture = heat_map(store.confidence(index))
    else:
        try:
            image = read_image(_servable(store.image_path(index), service.settings.allowed_roots))
        except DataError as exc:  # damaged since it was labeled
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        picture = image if view == "image" else overlay(image, label, space.palette())
    return Response(encode_png(shrink(picture)), media_type="image/png")


@router.get("/events", response_class=EventSourceResponse)
async def all_events(service: ServiceDep) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: a ``run`` event (a run summary) whenever a run changes, first one for
    every run; never ends."""
    seen: dict[str, int] = {}
    while True:
        for summary in await asyncio.to_thread(_changed_summaries, service, seen):
            yield ServerSentEvent(data=summary.model_dump(mode="json"), event="run")
        await asyncio.sleep(service.settings.poll_interval_s)


def _existing_run(run_id: RunId, service: ServiceDep) -> None:
    # A dependency: checked before the event stream starts, so an unknown run is a plain 404.
    with service.db.session() as session:
        _run(session, run_id)


@router.get(
    "/runs/{run_id}/events",
    response_class=EventSourceResponse,
    responses={404: NOT_FOUND},
    dependencies=[Depends(_existing_run)],
)
async def run_events(run_id: RunId, service: ServiceDep) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events of one run: a ``run`` event (the whole run, as ``GET /api/runs/{id}``)
    at once and on every change of status, progress or metrics; ends when the run has ended."""
    version = -1
    while True:
        run = await asyncio.to_thread(_run_if_newer, service, run_id, version)
        if run is not None:
            version = run.version
            yield ServerSentEvent(data=run.model_dump(mode="json"), event="run", id=str(version))
            if run.status in TERMINAL:
                return
        await asyncio.sleep(service.settings.poll_interval_s)


def _changed_summaries(service: Service, seen: dict[str, int]) -> list[RunSummary]:
    with service.db.session() as session:
        versions = session.execute(select(Run.id, Run.version)).all()
        changed = [run_id for run_id, version in versions if seen.get(run_id) != version]
        runs = session.scalars(select(Run).where(Run.id.in_(changed)).order_by(Run.created_at))
        summaries = [run_summary(run) for run in runs]
    seen.update({s.id: s.version for s in summaries})
    return summaries


def _run_if_newer(service: Service, run_id: str, version: int) -> RunOut | None:
    with service.db.session() as session:
        run = _run(session, run_id)
        return run_out(run, service.orchestrator.tracking) if run.version != version else None


def _run(session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id!r}")
    return run


def _stage(session, run_id: str, stage_name: str) -> Stage:
    stage = _run(session, run_id).stage(stage_name)
    if stage is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"run {run_id!r} has no stage {stage_name!r}"
        )
    return stage


def _servable(path: str, roots: list[Path]) -> Path:
    """``path`` when it lies inside the data roots now (symlinks resolved), else 404: a store
    records whatever paths its job was given, and the service serves files of its roots only."""
    try:
        real = Path(resolve_path(path, roots, "image"))
    except SpecError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{path} is outside the data roots") from exc
    if not real.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{path} is no longer there")
    return real


def _open_store(service: Service, run_id: str, stage_name: str):
    from core.errors import StoreError
    from core.store import LabelStore

    with service.db.session() as session:
        store = _stage(session, run_id, stage_name).outputs.get("store")
    if store is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"stage {stage_name!r} writes no label store"
        )
    if not Path(store).is_dir():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"the store {store} does not exist yet")
    try:
        return LabelStore.open(store, read_only=True)
    except StoreError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
