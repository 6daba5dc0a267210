"""Runs move through their stages here: create, submit each stage as a job, follow it, go on or
fail.

All state is in the database. ``step()`` reads every run in flight, asks the cluster about its
current stage and moves it on; a restarted service simply keeps calling ``step()``. Submission ids
are deterministic (``selftrain-<run>-<index>-<stage>``) and a stage is only submitted when the
cluster does not know its id yet, so neither a retry nor a restart starts a stage twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import select

from core.configs import save_config
from core.gate import GateSpec, Verdict, stops_run
from core.plan import PlannedStage, RunSpec, job_config, plan_stages, with_existing_inputs
from core.runfiles import RunFiles, resolve_checkpoint
from services.artifacts import (
    evaluation_summary,
    store_progress,
    store_summary,
    train_progress,
)
from services.db import (
    FAILED,
    IN_FLIGHT,
    PENDING,
    RUNNING,
    STOPPED,
    SUCCEEDED,
    TERMINAL,
    Database,
    DatabaseUnavailableError,
    Run,
    Stage,
)
from services.ray_jobs import ClusterUnavailableError, JobBackend, JobInfo
from services.settings import Settings
from services.spec_inputs import check_spec_data, resolve_spec_paths, run_folder
from services.tracking import ServiceTracking

log = logging.getLogger(__name__)

# Logs kept in the database per stage (the tail; Ray keeps the whole file).
LOG_TAIL_CHARS = 64 * 1024
# How often a running label job's class distribution is recomputed (it reads every labeled
# image's class counts; the progress counter is read on every poll).
SUMMARY_INTERVAL_S = 30.0


def submission_id(run_id: str, index: int, stage_name: str) -> str:
    """The Ray submission id of a stage; the same for every attempt to submit it."""
    return f"selftrain-{run_id}-{index}-{stage_name}"


class Orchestrator:
    """Creates runs and drives them through their stages on a ``JobBackend``.

    Args:
        db: Where runs and stages are kept.
        backend: Where the stage jobs run.
        settings: Data roots, workdir, the jobs' interpreter and the poll interval.
        tracking: Where the stages log their MLflow runs (None: untracked).
    """

    def __init__(
        self,
        db: Database,
        backend: JobBackend,
        settings: Settings,
        tracking: ServiceTracking | None = None,
    ) -> None:
        self.db = db
        self.backend = backend
        self.settings = settings
        self.tracking = tracking
        # One writer per run at a time: the poll loop and a cancel request must not interleave.
        self._lock = threading.Lock()
        # Runs whose last step could not reach the cluster, and since when (this process's view).
        self._unreachable_since: dict[str, float] = {}

    # -- creating and cancelling -------------------------------------------------------------

    def create_run(self, spec: RunSpec) -> str:
        """Check ``spec``, plan its stages and store the run; returns its id.

        Raises:
            SpecError: A path outside the allowed folders, missing data, an unknown model, a
                crop that does not fit, or a planned job config that is invalid.
        """
        spec = resolve_spec_paths(spec, self.settings.allowed_roots)
        check_spec_data(spec)
        run_id = uuid.uuid4().hex[:12]
        with self.db.session() as session:
            others = [Path(folder) for folder in session.scalars(select(Run.output))]
        output = run_folder(spec, run_id, self.settings.workdir, others)
        stages = plan_stages(spec, output)
        with self.db.session() as session:
            run = Run(
                id=run_id, name=spec.name, spec=spec.model_dump(mode="json"), output=str(output)
            )
            for planned in stages:
                run.stages.append(
                    Stage(
                        index=planned.index,
                        name=planned.name,
                        kind=planned.kind,
                        spec_field=planned.spec_field,
                        given=planned.given,
                        script=planned.script,
                        config=planned.config,
                        outputs=planned.outputs,
                        submission_id=None
                        if planned.given
                        else submission_id(run_id, planned.index, planned.name),
                    )
                )
            session.add(run)
        return run_id

    def cancel_run(self, run_id: str) -> bool:
        """Stop the run's current job and mark the run STOPPED; False if there is no such run.

        A run that has finished already is left as it is.

        Raises:
            ClusterUnavailableError: The job could not be stopped (the run stays as it was).
        """
        with self._lock, self.db.session() as session:
            run = session.get(Run, run_id)
            if run is None:
                return False
            if run.status in TERMINAL:
                return True
            now = time.time()
            for stage in run.stages:
                if stage.status not in IN_FLIGHT or stage.given:
                    continue
                if stage.submission_id and self.backend.info(stage.submission_id) is not None:
                    self.backend.stop(stage.submission_id)
                    stage.status, stage.ended_at = STOPPED, now
                    stage.message = "stopped on request"
            run.status, run.ended_at, run.error = STOPPED, now, "cancelled on request"
            run.version += 1
            self._end_tracking(run)
        return True

    # -- the poll loop -------------------------------------------------------------------------

    async def run_forever(self) -> None:
        """Call ``step()`` every ``poll_interval_s`` until cancelled (the app's lifespan does)."""
        while True:
            try:
                await asyncio.to_thread(self.step)
            except DatabaseUnavailableError:
                pass  # logged once by the database when it began to fail; health says why
            except Exception:  # keep polling: one bad run or a DB hiccup must not stop all runs
                log.exception("orchestrator step failed")
            await asyncio.sleep(self.settings.poll_interval_s)

    def step(self) -> None:
        """Move every run in flight as far as it can go now."""
        with self.db.session() as session:
            query = select(Run.id).where(Run.status.in_(IN_FLIGHT)).order_by(Run.created_at)
            run_ids = list(session.scalars(query))
        for run_id in run_ids:
            try:
                self.advance(run_id)
                if self._unreachable_since.pop(run_id, None) is not None:
                    log.info("run %s: the cluster answers again", run_id)
            except ClusterUnavailableError as exc:
                if run_id not in self._unreachable_since:  # once per outage, not every poll
                    log.warning("run %s waits for the cluster: %s", run_id, exc)
                self._wait_for_cluster(run_id, str(exc))
            except DatabaseUnavailableError:
                raise  # no run can move on: not this run's fault
            except Exception as exc:  # one broken run ends alone; the others go on
                log.exception("run %s: orchestration failed", run_id)
                self.fail_run(run_id, f"orchestration error: {type(exc).__name__}: {exc}")

    def _wait_for_cluster(self, run_id: str, reason: str) -> None:
        """Say on the run's current stage that it waits for the cluster, and why; once it has
        waited ``cluster_lost_after_s``, end the run FAILED with that reason. A cluster that comes
        back sooner picks the run up where it was (a job the cluster lost is submitted again
        and resumes from its checkpoints)."""
        now = time.time()
        since = self._unreachable_since.setdefault(run_id, now)
        waited = now - since
        if waited >= self.settings.cluster_lost_after_s:
            self._unreachable_since.pop(run_id, None)
            self.fail_run(run_id, f"cluster unreachable for {waited:.0f} s: {reason}")
            return
        with self._lock, self.db.session() as session:
            run = session.get(Run, run_id)
            if run is None or run.status not in IN_FLIGHT:
                return
            stage = next((s for s in run.stages if s.status != SUCCEEDED), None)
            if stage is not None:
                stage.message = f"waiting for the cluster ({waited:.0f} s): {reason}"[:2000]
                run.version += 1

    def fail_run(self, run_id: str, reason: str) -> None:
        """End a run in flight as FAILED with ``reason`` (on its stage in flight too), and stop
        that stage's job if the cluster answers."""
        with self._lock, self.db.session() as session:
            run = session.get(Run, run_id)
            if run is None or run.status not in IN_FLIGHT:
                return
            now = time.time()
            for stage in run.stages:
                if stage.status in IN_FLIGHT and (stage.submitted_at or stage.given):
                    stage.status, stage.error, stage.ended_at = FAILED, reason, now
                    if stage.submission_id is not None:
                        with contextlib.suppress(Exception):  # best effort: the run ends anyway
                            self.backend.stop(stage.submission_id)
            run.status, run.error, run.ended_at = FAILED, reason[:2000], now
            run.version += 1
            self._end_tracking(run)

    def advance(self, run_id: str) -> None:
        """Follow the run's current stage; start the next when it succeeded, else fail the run."""
        with self._lock, self.db.session() as session:
            run = session.get(Run, run_id)
            if run is None or run.status not in IN_FLIGHT:
                return
            before = _fingerprint(run)
            for stage in run.stages:
                if stage.status == SUCCEEDED:
                    continue
                self._advance_stage(run, stage)
                stop = _stopped_by_gate(run, stage)
                if stop is not None:
                    _skip_rest(run, stage, stop)
                    break
                if stage.status in (FAILED, STOPPED):
                    run.status = FAILED if stage.status == FAILED else STOPPED
                    run.error = (
                        f"stage {stage.name}: {stage.error or stage.message or stage.status}"
                    )
                    run.ended_at = time.time()
                if stage.status != SUCCEEDED:
                    break
            else:
                run.status, run.ended_at = SUCCEEDED, time.time()
            if run.status == PENDING and any(s.submitted_at or s.given for s in run.stages):
                run.status = RUNNING
            if run.started_at is None and run.status != PENDING:
                run.started_at = time.time()
            if _fingerprint(run) != before:
                run.version += 1
            if run.status in TERMINAL:
                self._end_tracking(run)

    def _advance_stage(self, run: Run, stage: Stage) -> None:
        if stage.given:
            self._finish_given(stage)
            return
        assert stage.submission_id is not None  # every job stage gets one when planned
        info = self.backend.info(stage.submission_id)
        if info is None:
            self._submit(run, stage)
            return
        self._follow(stage, info)

    def _finish_given(self, stage: Stage) -> None:
        now = time.time()
        stage.status, stage.started_at, stage.ended_at = SUCCEEDED, now, now
        stage.message = "given"
        if "store" in stage.outputs:
            stage.summary = store_summary(stage.outputs["store"])

    def _end_tracking(self, run: Run) -> None:
        if self.tracking is not None:
            self.tracking.end(run)

    def _submit(self, run: Run, stage: Stage) -> None:
        planned = with_existing_inputs(planned_stage(stage))
        tracking = self.tracking.for_run(run) if self.tracking is not None else None
        config = job_config(planned).model_copy(update={"tracking": tracking})
        path = self.settings.workdir / run.id / "configs" / f"{stage.index:02d}-{stage.name}.yaml"
        save_config(config, path)
        entrypoint = (
            f"{self.settings.job_python} jobs/{stage.script}.py --config {shlex.quote(str(path))}"
        )
        assert stage.submission_id is not None
        metadata = {"selftrain_run": run.id, "selftrain_stage": stage.name}
        self.backend.submit(stage.submission_id, entrypoint, metadata)
        log.info("run %s: submitted %s as %s", run.id, stage.name, stage.submission_id)
        stage.config, stage.entrypoint = planned.config, entrypoint
        if tracking is not None:  # the dashboard's link, and the parent run after a restart
            stage.config = {**(planned.config or {}), "tracking": tracking.model_dump(mode="json")}
        stage.status, stage.submitted_at = PENDING, time.time()
        stage.message = "submitted"

    def _follow(self, stage: Stage, info: JobInfo) -> None:
        stage.started_at = info.start_time or stage.started_at
        stage.message = info.message
        if stage.submitted_at is None:  # submitted by a service that died before it wrote this down
            stage.submitted_at = info.start_time or time.time()
        self._record_progress(stage, final=info.status in TERMINAL)
        if info.status == SUCCEEDED:
            self._check_outputs(stage)
        elif info.status in (FAILED, STOPPED):
            stage.status = info.status
            stage.error = info.message or f"job {info.status.lower()}"
        else:
            stage.status = RUNNING if info.status == RUNNING else PENDING
            return
        stage.ended_at = info.end_time or time.time()
        assert stage.submission_id is not None
        try:
            stage.logs = self.backend.logs(stage.submission_id)[-LOG_TAIL_CHARS:]
        except ClusterUnavailableError as exc:
            stage.logs = f"(logs unavailable: {exc})"

    def _record_progress(self, stage: Stage, final: bool) -> None:
        if stage.script == "evaluate":
            if final:
                stage.summary = evaluation_summary(stage.outputs["report"])
            return
        if stage.script == "label":
            store = stage.outputs["store"]
            progress = store_progress(store)
            if progress is not None:
                _set(stage, progress=progress)
            taken = (stage.summary or {}).get("summarized_at", 0.0)
            if final:
                stage.summary = store_summary(store)
            elif time.time() - taken > SUMMARY_INTERVAL_S:
                stage.summary = store_summary(store) or stage.summary
            return
        config = stage.config or {}
        rows = RunFiles.of(config["storage_path"], config["run_name"]).read_metrics()
        metrics = [row.model_dump() for row in rows]
        _set(stage, metrics=metrics, progress=train_progress(rows, int(config["epochs"])))

    def _check_outputs(self, stage: Stage) -> None:
        if "checkpoint" in stage.outputs:
            found = resolve_checkpoint(stage.outputs["checkpoint"])
            if found is None:
                stage.status = FAILED
                stage.error = (
                    f"the job succeeded but wrote no checkpoint {stage.outputs['checkpoint']}"
                )
                return
            stage.outputs = {**stage.outputs, "checkpoint": str(found)}
        elif stage.summary is None:
            what = "store" if "store" in stage.outputs else "report"
            stage.status = FAILED
            stage.error = f"the job succeeded but left no readable {what} {stage.outputs[what]}"
            return
        stage.status = SUCCEEDED


def planned_stage(stage: Stage) -> PlannedStage:
    """A stage row as the plan made it."""
    return PlannedStage(
        stage.index,
        stage.name,
        stage.kind,
        stage.spec_field,
        stage.script,
        stage.config,
        dict(stage.outputs),
    )


def _stopped_by_gate(run: Run, stage: Stage) -> str | None:
    """Why the run stops after this evaluation stage (its student failed a gate that stops the
    run; core.gate.stops_run), or None."""
    if stage.kind != "evaluate" or stage.status != SUCCEEDED:
        return None
    gate, verdict = (run.spec or {}).get("gate"), (stage.summary or {}).get("verdict")
    if gate is None or verdict is None:
        return None
    return stops_run(GateSpec.model_validate(gate, strict=False), Verdict.model_validate(verdict))


def _skip_rest(run: Run, stage: Stage, why: str) -> None:
    """End the run SUCCEEDED after ``stage``: the stages after it are STOPPED with ``why``."""
    now = time.time()
    for later in run.stages:
        if later.index > stage.index and later.status != SUCCEEDED:
            later.status, later.message, later.ended_at = STOPPED, why, now
    run.status, run.ended_at = SUCCEEDED, now


def _set(stage: Stage, **values) -> None:
    # Assign JSON columns only when they change, so an idle poll writes nothing.
    for name, value in values.items():
        if getattr(stage, name) != value:
            setattr(stage, name, value)


def _fingerprint(run: Run) -> tuple:
    """What the event stream shows of a run; a change bumps ``run.version``."""
    return (
        run.status,
        run.error,
        tuple(
            (s.status, s.message, s.error, len(s.metrics or []), repr(s.progress), s.submitted_at)
            for s in run.stages
        ),
    )
