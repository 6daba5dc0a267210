"""What the REST API returns (the request body of a run is ``core.plan.RunSpec``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.audit import Audit
from core.drift import Drift
from core.evaluation import Evaluation
from core.gate import GateSpec, Verdict, VerdictStatus
from core.plan import StageKind, job_config
from core.registry import Registration
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
    verdict: VerdictStatus | None = Field(
        default=None, description="The promotion gate's verdict on the run's last gated student"
    )


class RunOut(RunSummary):
    """A run with its spec and stages."""

    output: str
    spec: dict[str, Any]
    stages: list[StageOut]


class LabelAudit(BaseModel):
    """A label stage's audit (its store's), the classes it teaches away, and its drift from the
    same source's label stage one loop earlier."""

    stage: str
    loop: int
    status: Status
    audit: Audit | None = Field(description="None: the stage has no audit sources, or no audit yet")
    taught_away: list[str] = Field(
        description="Classes whose pool pseudo share is below taught_away_below x labeled share"
    )
    drift: Drift | None = Field(description="None in the first loop")


class LoopResult(BaseModel):
    """One loop's evaluation stage: scores, verdict, registration."""

    loop: int
    stage: str
    status: Status
    evaluation: Evaluation | None = Field(description="None until the stage has finished")
    verdict: Verdict | None = Field(description="None without a gate, or until finished")
    registration: Registration | None = Field(description="Set when the student was promoted")


class RunResults(BaseModel):
    """What a run found out: its models on the test sets, the gate's verdicts, the audits of its
    pseudo labels and their drift between loops (``GET /api/runs/{id}/results``)."""

    run_id: str
    tests: list[str] = Field(description="The evaluation's test sets, in the spec's order")
    gate: GateSpec | None
    loops: list[LoopResult] = Field(description="One per evaluation stage, in loop order")
    verdict: Verdict | None = Field(description="The last gated loop's verdict")
    promoted: Registration | None = Field(description="The run's last promoted student")
    stopped_early: str | None = Field(
        description="Why later loops did not run (gate.stop_on_fail), if they did not"
    )
    audits: list[LabelAudit]


class RunCreated(BaseModel):
    id: str
    status: Status
    stages: list[str]


class ReconcilerHealth(BaseModel):
    """The reconciler that moves runs on (None in ``Health`` when the service runs none)."""

    last_pass_at: datetime | None = Field(
        description="When it last listed the runs in flight and started a pass over each"
    )
    last_pass_age_s: float | None = Field(description="Seconds since then")
    runs_in_flight: int
    stalled: dict[str, str] = Field(
        description="Runs whose pass overran its deadline, with what it was doing"
    )


class Health(BaseModel):
    status: Literal["starting", "ok", "degraded"] = Field(
        description="starting (503): not ready to answer runs yet; ok: database, cluster and "
        "reconciler answer; degraded: the database or the cluster does not, or the reconciler "
        "has not passed over the runs lately (the reason is in its field)"
    )
    database: str = Field(description="ok, or why the database cannot be read or written")
    cluster: str = Field(description="ok, or why the cluster cannot be reached")
    reconciler: ReconcilerHealth | None = None


class ClassShare(BaseModel):
    id: int
    name: str
    share: float = Field(description="Fraction of the image's pixels predicted as this class")


class PredictionShares(BaseModel):
    height: int
    width: int
    input_height: int = Field(description="The height the model read the image at")
    input_width: int = Field(description="The width the model read the image at")
    resized: bool = Field(description="Whether the model read the image scaled down to fit")
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
        "verdict": run_verdict(run),
    }


def run_verdict(run: Run) -> VerdictStatus | None:
    """The verdict of the run's last evaluation stage that has one (its report is the stage's
    summary)."""
    for stage in reversed(run.stages):
        found = ((stage.summary or {}).get("verdict") or {}) if stage.kind == "evaluate" else {}
        if found.get("status") in ("promoted", "not promoted"):
            return found["status"]
    return None
