"""A run's results for the API, built from its stages' summaries (a label stage's store summary
holds its audit; an evaluation stage's summary is its report): nothing is read from disk here."""

from __future__ import annotations

from pydantic import ValidationError

from core.drift import TAUGHT_AWAY_BELOW, audit_of, drift, taught_away
from core.evaluation_run import EvaluationReport
from core.gate import GATE_STOPPED, GateSpec
from core.plan import previous_loop_stage, stage_loop
from services.db import SUCCEEDED, Run, Stage
from services.schemas import LabelAudit, LoopResult, RunResults


def run_results(run: Run) -> RunResults:
    """The run's evaluations, verdicts, registrations, audits and drift."""
    spec = run.spec or {}
    gate = spec.get("gate")
    loops = [_loop_result(stage) for stage in run.stages if stage.kind == "evaluate"]
    verdicts = [loop.verdict for loop in loops if loop.verdict is not None]
    registrations = [loop.registration for loop in loops if loop.registration is not None]
    skipped = [s for s in run.stages if (s.message or "").startswith(GATE_STOPPED)]
    return RunResults(
        run_id=run.id,
        tests=list((spec.get("evaluation") or {}).get("tests") or {}),
        gate=None if gate is None else GateSpec.model_validate(gate, strict=False),
        loops=loops,
        verdict=verdicts[-1] if verdicts else None,
        promoted=registrations[-1] if registrations else None,
        stopped_early=skipped[0].message if skipped else None,
        audits=_audits(run),
    )


def _report(stage: Stage) -> EvaluationReport | None:
    if stage.status != SUCCEEDED or not stage.summary:
        return None
    try:
        return EvaluationReport.model_validate(stage.summary)
    except ValidationError:
        return None  # a report this version cannot read: shown as missing, not as a 500


def _loop_result(stage: Stage) -> LoopResult:
    report = _report(stage)
    return LoopResult(
        loop=stage_loop(stage.name),
        stage=stage.name,
        status=stage.status,  # type: ignore[arg-type]
        evaluation=None if report is None else report.evaluation,
        verdict=None if report is None else report.verdict,
        registration=None if report is None else report.registration,
    )


def _audits(run: Run) -> list[LabelAudit]:
    fraction = ((run.spec or {}).get("label") or {}).get("taught_away_below", TAUGHT_AWAY_BELOW)
    label_stages = {s.name: s for s in run.stages if s.kind == "label"}
    audits = []
    for stage in label_stages.values():
        summary = stage.summary or {}
        previous = label_stages.get(previous_loop_stage(stage.name) or "")
        found = None
        if previous is not None and previous.summary and summary:
            found = drift(previous.summary, summary, stage.name, previous.name, fraction)
        audits.append(
            LabelAudit(
                stage=stage.name,
                loop=stage_loop(stage.name),
                status=stage.status,  # type: ignore[arg-type]
                audit=_audit(summary),
                taught_away=taught_away(summary, fraction) if summary else [],
                drift=found,
            )
        )
    return audits


def _audit(summary: dict):
    try:
        return audit_of(summary)
    except ValidationError:
        return None
