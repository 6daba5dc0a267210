"""The FastAPI app: the REST API under ``/api``, the dashboard at ``/``, and the orchestrator's poll
loop in the background (started and stopped with the app)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from core.plan import SpecError, join_field
from services.db import DatabaseUnavailableError
from services.deadline import ClusterProbe, DeadlineBackend
from services.deps import Service, ServiceDep, require_token, require_token_or_basic
from services.docs import add_docs
from services.orchestrator import Orchestrator
from services.ray_jobs import JobBackend, RayJobBackend
from services.records import open_database
from services.routes_label_studio import router as label_studio_router
from services.routes_predict import router as predict_router
from services.routes_results import router as results_router
from services.routes_runs import router as runs_router
from services.schemas import Health, ReconcilerHealth
from services.settings import Settings, get_settings
from services.tracking import ServiceTracking

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
# Room for the multipart framing around an upload of max_upload_bytes.
MULTIPART_OVERHEAD = 64 * 1024
# How long a health check waits for the cluster's answer.
HEALTH_CLUSTER_WAIT_S = 2.0
# A reconciler whose last pass is older than this many poll intervals (and 30 s) is degraded.
RECONCILER_LATE_POLLS = 10


def create_app(
    settings: Settings | None = None,
    backend: JobBackend | None = None,
    orchestrate: bool = True,
) -> FastAPI:
    """The service.

    Args:
        settings: Default: read from the environment.
        backend: Where jobs run; default: the Ray cluster at ``settings.ray_address``.
        orchestrate: Run the poll loop that moves runs on (tests that step it by hand turn it off).
    """
    settings = settings or get_settings()
    settings.workdir.mkdir(parents=True, exist_ok=True)
    db = open_database(settings.database_url or "", settings.workdir)
    inner = backend or RayJobBackend(settings.ray_address, settings.repo_dir)
    backend = DeadlineBackend(inner, settings.cluster_timeout_s)
    tracking = ServiceTracking.configured(
        settings.tracking_uri, settings.tracking_ui, settings.workdir
    )
    service = Service(settings, db, backend, Orchestrator(db, backend, settings, tracking))
    service.cluster_probe = ClusterProbe(inner.check, HEALTH_CLUSTER_WAIT_S)
    service.orchestrating = orchestrate

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Health says "starting" until the modules a run's checks need are loaded and the runs
        # in flight when the last service stopped have had their first pass.
        task = asyncio.create_task(_start(service))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        db.dispose()

    app = FastAPI(
        title="selftrain",
        summary="Self-training runs for semantic segmentation on a Ray cluster",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(SpecError, _spec_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DatabaseUnavailableError, _database_unavailable)

    api = APIRouter(prefix="/api")
    api.add_api_route(
        "/health",
        _health,
        methods=["GET"],
        tags=["health"],
        response_model=Health,
        responses={503: {"model": Health, "description": "starting"}},
    )
    protected = APIRouter(
        dependencies=[Depends(require_token)],
        responses={401: {"description": "Missing or wrong bearer token"}},
    )
    protected.include_router(runs_router)
    protected.include_router(predict_router)
    protected.include_router(results_router)
    api.include_router(protected)
    # Label Studio speaks basic auth to ML backends.
    api.include_router(
        label_studio_router,
        dependencies=[Depends(require_token_or_basic)],
        responses={401: {"description": "Missing or wrong token"}},
    )
    app.include_router(api)

    add_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_api_route("/", _dashboard, methods=["GET"], include_in_schema=False)
    return app


async def _start(service: Service) -> None:
    """Warm up, say ready, then (when the service orchestrates) pass over the runs for good."""
    await asyncio.to_thread(warm_up)
    if service.orchestrating:
        try:
            await asyncio.to_thread(service.orchestrator.reconciler.step, False)
        except Exception:  # the loop below tries again; health shows the reconciler's age
            log.exception("the first pass over the runs failed")
    service.ready.set()
    if service.orchestrating:
        await service.orchestrator.run_forever()


def warm_up() -> None:
    """Import what creating a run needs (torch, the models, datasets, stores, checkpoints: some
    seconds on a small machine), so the first run is answered as fast as the next."""
    import core.checkpoint  # noqa: F401
    import core.datasets  # noqa: F401
    import core.io  # noqa: F401
    import core.store  # noqa: F401
    from core.models import list_models

    list_models()


def _health(service: ServiceDep) -> JSONResponse:
    """Liveness and readiness (no token needed): ``starting`` (503) until the service answers
    runs; else whether the database can be read and written (writes get 503 while it fails)
    and the cluster answers (``degraded`` with the reason when one does not: runs wait for the
    cluster, then fail after ``cluster_lost_after_s``), and the
    reconciler's last pass over the runs (``degraded`` when it is older than
    ``RECONCILER_LATE_POLLS`` poll intervals and 30 s) with the runs whose pass stalled.

    Every part answers within a few seconds, whatever a run or the cluster does."""
    database = service.db.health()
    cluster = service.cluster_probe()
    reconciler = _reconciler_health(service) if service.orchestrating else None
    status_ = "ok" if database == "ok" and cluster == "ok" else "degraded"
    late = max(30.0, RECONCILER_LATE_POLLS * service.settings.poll_interval_s)
    if reconciler is not None and (reconciler.last_pass_age_s or 0.0) > late:
        status_ = "degraded"
    if not service.ready.is_set():
        status_ = "starting"
    health = Health(status=status_, database=database, cluster=cluster, reconciler=reconciler)
    code = status.HTTP_503_SERVICE_UNAVAILABLE if status_ == "starting" else status.HTTP_200_OK
    return JSONResponse(health.model_dump(mode="json"), status_code=code)


def _reconciler_health(service: Service) -> ReconcilerHealth:
    state = service.orchestrator.reconciler.health()
    last = state.last_pass_at
    return ReconcilerHealth(
        last_pass_at=None if last is None else datetime.fromtimestamp(last, UTC),
        last_pass_age_s=None if last is None else round(time.time() - last, 3),
        runs_in_flight=state.runs_in_flight,
        stalled=state.stalled,
    )


def _dashboard() -> FileResponse:
    return FileResponse(STATIC / "index.html")


async def _spec_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SpecError)
    detail = [
        {"loc": ["body", *name.split(".")], "msg": f"{name}: {message}", "type": "value_error"}
        for name, message in exc.problems
    ]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # One line, no traceback: the database's state change was logged once already.
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's own shape, with the field also named in each message ("student.train.epochs: ...").
    assert isinstance(exc, RequestValidationError)
    detail = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        name = join_field(*loc[1:]) if loc[:1] in (["body"], ["query"], ["path"]) else ""
        name = name or join_field(*loc)
        detail.append({"loc": loc, "msg": f"{name}: {error['msg']}", "type": error["type"]})
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


# The dashboard loads its script, style and pictures from this service only (pictures fetched
# with the token arrive as blob: URLs); nothing may frame it.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
        b"form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """Add `SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Refuse request bodies over the limit with 413: uploads to ``/api/predict`` up to
    ``max_upload_bytes``, everything else up to ``max_json_bytes``.

    A declared Content-Length is checked before anything is read; a body without one is counted as
    it arrives, so an oversized upload is never read whole.
    """

    def __init__(self, app, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/api/predict":
            limit = self.settings.max_upload_bytes + MULTIPART_OVERHEAD
        else:
            limit = self.settings.max_json_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = JSONResponse(
                {"detail": f"request body over {limit} bytes"},
                status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                # FastAPI passes an HTTPException raised while reading the body on unchanged.
                raise HTTPException(
                    status.HTTP_413_CONTENT_TOO_LARGE, f"request body over {limit} bytes"
                )
            return message

        await self.app(scope, counting_receive, send)
