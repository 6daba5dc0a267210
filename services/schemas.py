"""What the REST API returns (the request body of a run is ``core.plan.RunSpec``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.plan import StageKind, job_config
from core.runfiles import MetricsRow
from services.db import Run, Stage
from services.orchestrator import planned_stage
from services.tracking import ServiceTracking

Status = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED"]


class TrackedRun(BaseModel):
    """A stage's MLflow run."""

    run_id: str
    url: str | None = Field(description="The run in the MLflow UI (None: no UI configured)")


class StageOut(BaseModel):
    """One stage of a run.

    Attributes:
        submission_id: The Ray job's submission id (None for a given artifact).
        progress: ``done`` of ``total`` ``unit`` (epochs or images), ``fraction``, maybe
            ``images_per_s``.
        latest_metrics: The last epoch record of a training stage.
        metrics: Every epoch record so far (core.runfiles.MetricsRow).
        summary: A label stage's store summary (pixels and centroids per class, class names).
        outputs: ``checkpoint`` or ``store`` path.
        tracking: The stage's MLflow run, once its job has opened it (None: untracked, or not
            started yet).
    """

    index: int
    name: str
    kind: StageKind
    given: bool
    status: Status
    submission_id: str | None
    entrypoint: str | None
    message: str | None
    error: str | None
    submitted_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    progress: dict[str, Any] | None
    latest_metrics: MetricsRow | None
    metrics: list[MetricsRow]
    summary: dict[str, Any] | None
    outputs: dict[str, str]
    config: dict[str, Any] | None
    tracking: TrackedRun | None = None


class RunSummary(BaseModel):
    """A run in the list of runs."""

    id: str
    name: str
    status: Status
    error: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    current_stage: str | None = Field(description="The first stage that has not succeeded")
    stages_done: int
    stages_total: int
    version: int


class RunOut(RunSummary):
    """A run with its spec and stages."""

    output: str
    spec: dict[str, Any]
    stages: list[StageOut]


class RunCreated(BaseModel):
    id: str
    status: Status
    stages: list[str]


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field(
        description="ok: database and cluster answer; degraded: the cluster does not"
    )
    database: Literal["ok"]
    cluster: str = Field(description="ok, or why the cluster cannot be reached")


class ClassShare(BaseModel):
    id: int
    name: str
    share: float = Field(description="Fraction of the image's pixels predicted as this class")


class PredictionShares(BaseModel):
    height: int
    width: int
    checkpoint: str
    classes: list[ClassShare]


class PseudoLabelSamples(BaseModel):
    """Images of a label store that have pseudo labels, for the dashboard's overlays."""

    store: str
    n_done: int
    indices: list[int]


class ReviewCandidates(BaseModel):
    """The images of a store to review first, and how sure the teacher is of each class there."""

    n_done: int
    n_scanned: int = Field(description="Done images ranked (spread evenly over the store)")
    indices: list[int] = Field(description="Lowest mean confidence first")
    mean_confidence: list[float]
    histograms: dict[str, list[int]] = Field(
        description="Per class: pixels of these images in 10 confidence bins from 0 to 1"
    )


def when(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def stage_out(stage: Stage, tracking: ServiceTracking | None = None) -> StageOut:
    metrics = list(stage.metrics or [])
    link = None
    if tracking is not None and (stage.config or {}).get("tracking"):
        link = tracking.link(job_config(planned_stage(stage)))
    return StageOut(
        index=stage.index,
        name=stage.name,
        kind=stage.kind,  # type: ignore[arg-type]
        given=stage.given,
        status=stage.status,  # type: ignore[arg-type]
        submission_id=stage.submission_id,
        entrypoint=stage.entrypoint,
        message=stage.message,
        error=stage.error,
        submitted_at=when(stage.submitted_at),
        started_at=when(stage.started_at),
        ended_at=when(stage.ended_at),
        progress=stage.progress,
        latest_metrics=metrics[-1] if metrics else None,
        metrics=metrics,
        summary=stage.summary,
        outputs=dict(stage.outputs or {}),
        config=stage.config,
        tracking=TrackedRun(**link) if link else None,
    )


def run_summary(run: Run) -> RunSummary:
    return RunSummary(**_summary_fields(run))


def run_out(run: Run, tracking: ServiceTracking | None = None) -> RunOut:
    """The run with its stages (and their MLflow runs when ``tracking`` is given)."""
    return RunOut(
        **_summary_fields(run),
        output=run.output,
        spec=run.spec,
        stages=[stage_out(s, tracking) for s in run.stages],
    )


def _summary_fields(run: Run) -> dict[str, Any]:
    current = next((s.name for s in run.stages if s.status != "SUCCEEDED"), None)
    return {
        "id": run.id,
        "name": run.name,
        "status": run.status,
        "error": run.error,
        "created_at": when(run.created_at),
        "started_at": when(run.started_at),
        "ended_at": when(run.ended_at),
        "current_stage": current,
        "stages_done": sum(s.status == "SUCCEEDED" for s in run.stages),
        "stages_total": len(run.stages),
        "version": run.version,
    }
