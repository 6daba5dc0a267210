"""Runs move through their stages here: create, submit each stage as a job, follow it, go on or
fail.

All state is in the database. A pass over one run (``advance``) reads the run, asks the cluster
about its current stage and reads the stage's files without holding any lock or database
session, then writes what changed in one short transaction under the run's own lock; the
reconciler (services/reconciler.py) runs one pass per run at a time, each with a deadline, so a
run whose files or job hang never holds up another run, a cancel or a health check. A restarted
service simply goes on passing over the runs in flight. Submission ids are deterministic
(``selftrain-<run>-<index>-<stage>``) and a stage is only submitted when the cluster does not know
its id yet, so neither a retry nor a restart starts a stage twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import inspect, select

from core.configs import save_config
from core.confine import check_confined
from core.errors import DataError
from core.gate import GateSpec, Verdict, stops_run
from core.plan import (
    PlannedStage,
    RunSpec,
    SpecError,
    job_config,
    plan_stages,
    with_existing_inputs,
)
from core.runfiles import RunFiles, read_metrics_file, resolve_checkpoint
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
from services.ray_jobs import (
    ClusterUnavailableError,
    JobBackend,
    JobInfo,
    failure_reason,
    first_line,
)
from services.reconciler import Reconciler
from services.settings import Settings
from services.spec_inputs import check_spec_data, resolve_spec_paths, run_folder
from services.tracking import ServiceTracking

log = logging.getLogger(__name__)

# Logs kept in the database per stage (the tail; Ray keeps the whole file).
LOG_TAIL_CHARS = 64 * 1024
# Longest run error or stage message kept.
ERROR_CHARS = 2000
# How often a running label job's class distribution is recomputed (it reads every labeled
# image's class counts; the progress counter is read on every poll).
SUMMARY_INTERVAL_S = 30.0

Note = Callable[[str], None]


def submission_id(run_id: str, index: int, stage_name: str) -> str:
    """The Ray submission id of a stage; the same for every attempt to submit it."""
    return f"selftrain-{run_id}-{index}-{stage_name}"


def _ignore(_: str) -> None:
    pass


class Orchestrator:
    """Creates runs and drives them through their stages on a ``JobBackend``.

    Args:
        db: Where runs and stages are kept.
        backend: Where the stage jobs run (each call answers within a deadline: DeadlineBackend).
        settings: Data roots, workdir, the jobs' interpreter, the poll interval and deadlines.
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
        # One writer per run at a time; held only for a short database write, never for I/O.
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # Runs whose last pass could not reach the cluster, and since when (this process's view).
        self._unreachable_since: dict[str, float] = {}
        self.reconciler = Reconciler(
            self._in_flight,
            self.reconcile,
            self.mark_stalled,
            deadline_s=settings.reconcile_deadline_s,
            parallel=settings.reconcile_parallel,
        )

    def _lock(self, run_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(run_id, threading.Lock())

    # -- creating and cancelling -------------------------------------------------------------

    def create_run(self, spec: RunSpec) -> str:
        """Check ``spec``, plan its stages, create the run's folder and store the run; returns
        its id.

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
        _create_run_folder(output, self.settings.allowed_roots)
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

        A run that has finished already is left as it is. The job is stopped first (each call to
        the cluster within its deadline), then the run is marked under its lock; a pass over the
        run that is slow or hung does not hold the cancel up.

        Raises:
            ClusterUnavailableError: The job could not be stopped (the run stays as it was).
        """
        run = self._load(run_id)
        if run is None:
            return False
        if run.status in TERMINAL:
            return True
        stopped = set()
        current = _current(run)
        sid = current.submission_id if current is not None and not current.given else None
        if sid is not None and self.backend.info(sid) is not None:
            self.backend.stop(sid)
            stopped.add(sid)
        with self._lock(run_id), self.db.session() as session:
            run = session.get(Run, run_id)
            if run is None or run.status in TERMINAL:
                return run is not None
            now = time.time()
            late = []
            for stage in run.stages:
                if stage.status not in IN_FLIGHT or stage.given:
                    continue
                if stage.submitted_at and stage.submission_id not in stopped:
                    late.append(stage.submission_id)  # submitted by a pass meanwhile
                if stage.submitted_at or stage.submission_id in stopped:
                    stage.status, stage.ended_at = STOPPED, now
                    stage.message = "stopped on request"
            run.status, run.ended_at, run.error = STOPPED, now, "cancelled on request"
            run.version += 1
        self._stop_quietly(late)
        self._end_tracking(run)
        return True

    # -- the poll loop -------------------------------------------------------------------------

    async def run_forever(self) -> None:
        """Start a pass over every run in flight every ``poll_interval_s`` (each in its own
        thread, not waited for) until cancelled (the app's lifespan does)."""
        while True:
            try:
                await asyncio.to_thread(self.reconciler.step, False)
            except DatabaseUnavailableError:
                pass  # logged once by the database when it began to fail; health says why
            except Exception:  # keep polling: a database hiccup must not stop all runs
                log.exception("reconciler pass failed")
            await asyncio.sleep(self.settings.poll_interval_s)

    def step(self) -> None:
        """One pass over every run in flight, waiting for each up to its deadline (tests and
        tools call this; the service's loop does not wait)."""
        self.reconciler.step(True)

    def _in_flight(self) -> list[str]:
        with self.db.session() as session:
            query = select(Run.id).where(Run.status.in_(IN_FLIGHT)).order_by(Run.created_at)
            return list(session.scalars(query))

    def reconcile(self, run_id: str, note: Note = _ignore) -> None:
        """One pass over a run: ``advance``, with a cluster that does not answer turned into a
        wait, and any other error ending this run alone."""
        try:
            self.advance(run_id, note)
            if self._unreachable_since.pop(run_id, None) is not None:
                log.info("run %s: the cluster answers again", run_id)
        except ClusterUnavailableError as exc:
            if run_id not in self._unreachable_since:  # once per outage, not every poll
                log.warning("run %s waits for the cluster: %s", run_id, exc)
            self._wait_for_cluster(run_id, str(exc))
        except DatabaseUnavailableError:
            pass  # no run can move on: not this run's fault (health says why)
        except Exception as exc:  # one broken run ends alone; the others go on
            log.exception("run %s: orchestration failed", run_id)
            self.fail_run(run_id, f"orchestration error: {type(exc).__name__}: {exc}")

    def mark_stalled(self, run_id: str, reason: str) -> None:
        """Say on the run's current stage that its pass is stalled, and why (the reconciler calls
        this when a pass overruns its deadline; the pass's own write replaces it if it ends)."""
        with self._lock(run_id), self.db.session() as session:
            run = session.get(Run, run_id)
            if run is None or run.status not in IN_FLIGHT:
                return
            stage = _current(run)
            if stage is not None:
                stage.message = f"stalled: {reason}"[:ERROR_CHARS]
                run.version += 1

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
        with self._lock(run_id), self.db.session() as session:
            run = session.get(Run, run_id)
            if run is None or run.status not in IN_FLIGHT:
                return
            stage = _current(run)
            if stage is not None:
                stage.message = f"waiting for the cluster ({waited:.0f} s): {reason}"[:2000]
                run.version += 1

    def fail_run(self, run_id: str, reason: str) -> None:
        """End a run in flight as FAILED with ``reason`` (on its stage in flight too, whose
        message says the service ended it), and stop that stage's job if the cluster answers."""
        with self._lock(run_id), self.db.session() as session:
            run = session.get(Run, run_id)
            if run is None or run.status not in IN_FLIGHT:
                return
            now = time.time()
            jobs = []
            for stage in run.stages:
                if stage.status in IN_FLIGHT and (stage.submitted_at or stage.given):
                    stage.status, stage.error, stage.ended_at = FAILED, reason, now
                    stage.message = "ended by the service (see error)"
                    if stage.submission_id is not None:
                        jobs.append(stage.submission_id)
            run.status, run.error, run.ended_at = FAILED, reason[:ERROR_CHARS], now
            run.version += 1
        self._stop_quietly(jobs)
        self._end_tracking(run)

    def _stop_quietly(self, submission_ids: list[str]) -> None:
        for sid in submission_ids:
            with contextlib.suppress(Exception):  # best effort: the run has ended anyway
                self.backend.stop(sid)

    # -- one pass over a run -------------------------------------------------------------------

    def advance(self, run_id: str, note: Note = _ignore) -> None:
        """Follow the run's current stage; start the next when it succeeded, else fail the run.

        Reads the run, then talks to the cluster and reads files with no lock or session held,
        then writes what changed under the run's lock; a run cancelled or ended meanwhile is left
        as it is (and a job this pass submitted for it is stopped).
        """
        run = self._load(run_id)
        if run is None or run.status not in IN_FLIGHT:
            return
        before, state = _fingerprint(run), _state(run)
        submitted: list[str] = []
        for stage in run.stages:
            if stage.status == SUCCEEDED:
                continue
            self._advance_stage(run, stage, note, submitted)
            stop = _stopped_by_gate(run, stage)
            if stop is not None:
                _skip_rest(run, stage, stop)
                break
            if stage.status in (FAILED, STOPPED):
                run.status = FAILED if stage.status == FAILED else STOPPED
                run.error = f"stage {stage.name}: {stage.error or stage.message or stage.status}"
                run.error = run.error[:ERROR_CHARS]
                run.ended_at = time.time()
            if stage.status != SUCCEEDED:
                break
        else:
            run.status, run.ended_at = SUCCEEDED, time.time()
        if run.status == PENDING and any(s.submitted_at or s.given for s in run.stages):
            run.status = RUNNING
        if run.started_at is None and run.status != PENDING:
            run.started_at = time.time()
        if _state(run) == state:
            return  # an idle pass writes nothing
        note("writing the run to the database")
        saved = self._save(run, changed=_fingerprint(run) != before, submitted=submitted)
        if saved and run.status in TERMINAL:
            self._end_tracking(run)

    def _load(self, run_id: str) -> Run | None:
        """The run and its stages, detached from any session."""
        with self.db.session() as session:
            run = session.get(Run, run_id)
            if run is None:
                return None
            run.stages  # noqa: B018  (loaded now: the run is used after the session ends)
            session.expunge(run)
            return run

    def _save(self, run: Run, changed: bool, submitted: list[str]) -> bool:
        """Write a pass's ``run`` unless the run ended meanwhile; True when written."""
        with self._lock(run.id), self.db.session() as session:
            current = session.get(Run, run.id)
            if current is not None and current.status in IN_FLIGHT:
                version = current.version + (1 if changed else 0)
                merged = session.merge(run)
                merged.version = version
                return True
        log.info("run %s ended while a pass went over it; its results are dropped", run.id)
        self._stop_quietly(submitted)
        return False

    def _advance_stage(self, run: Run, stage: Stage, note: Note, submitted: list[str]) -> None:
        if stage.given:
            note(f"reading the given store of stage {stage.name}")
            self._finish_given(stage)
            return
        assert stage.submission_id is not None  # every job stage gets one when planned
        note(f"asking the cluster about job {stage.submission_id}")
        info = self.backend.info(stage.submission_id)
        if info is None:
            note(f"submitting job {stage.submission_id}")
            self._submit(run, stage)
            submitted.append(stage.submission_id)
            return
        self._follow(stage, info, note)

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
        roots = [str(root) for root in self.settings.allowed_roots]
        config = job_config(planned).model_copy(
            update={"tracking": tracking, "allowed_roots": roots}
        )
        path = self.settings.workdir / run.id / "configs" / f"{stage.index:02d}-{stage.name}.yaml"
        check_confined(path, [self.settings.workdir])  # no link on the way into the workdir
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

    def _follow(self, stage: Stage, info: JobInfo, note: Note) -> None:
        stage.started_at = info.start_time or stage.started_at
        stage.message = first_line(info.message)
        if stage.submitted_at is None:  # submitted by a service that died before it wrote this down
            stage.submitted_at = info.start_time or time.time()
        self._record_progress(stage, final=info.status in TERMINAL, note=note)
        if info.status == SUCCEEDED:
            self._check_outputs(stage)
        elif info.status in (FAILED, STOPPED):
            stage.status = info.status
            stage.error = failure_reason(info.message) or f"job {info.status.lower()}"
        else:
            stage.status = RUNNING if info.status == RUNNING else PENDING
            return
        stage.ended_at = info.end_time or time.time()
        assert stage.submission_id is not None
        note(f"reading the logs of job {stage.submission_id}")
        try:
            stage.logs = self.backend.logs(stage.submission_id)[-LOG_TAIL_CHARS:]
        except ClusterUnavailableError as exc:
            stage.logs = f"(logs unavailable: {exc})"

    def _record_progress(self, stage: Stage, final: bool, note: Note) -> None:
        if stage.script == "evaluate":
            if final:
                note(f"reading the report {stage.outputs['report']}")
                stage.summary = evaluation_summary(stage.outputs["report"])
            return
        if stage.script == "label":
            store = stage.outputs["store"]
            note(f"reading the progress of store {store}")
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
        files = RunFiles.of(config["storage_path"], config["run_name"])
        note(f"reading {files.metrics}")
        try:
            read = read_metrics_file(files.metrics)
        except DataError as exc:  # a pipe, a link, a huge file: the job goes on, the stage says so
            stage.message = f"progress unreadable: {exc}"[:ERROR_CHARS]
            return
        progress = train_progress(read.rows, int(config["epochs"]))
        if read.skipped:
            progress["warning"] = read.problem()
        _set(stage, metrics=[row.model_dump() for row in read.rows], progress=progress)

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


def _create_run_folder(output: Path, roots: list[Path]) -> None:
    """Create the run's own folder now, inside the roots and reached without a link; one that
    exists already (someone else's, or a link put there) is refused.

    Raises:
        SpecError: It exists, or cannot be created.
    """
    check_confined(output.parent, roots)
    try:
        output.mkdir(parents=True, exist_ok=False)
    except FileExistsError as exc:
        raise SpecError([("output", f"{output} exists already; a run creates its own")]) from exc
    except OSError as exc:
        raise SpecError([("output", f"{output} cannot be created ({exc.strerror})")]) from exc


def _current(run: Run) -> Stage | None:
    """The first stage that has not succeeded."""
    return next((s for s in run.stages if s.status != SUCCEEDED), None)


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


def _state(run: Run) -> tuple:
    """Every column of the run and its stages: a pass that changes none writes nothing."""

    def columns(row: Run | Stage) -> tuple:
        return tuple(repr(getattr(row, column.key)) for column in inspect(type(row)).column_attrs)

    return columns(run), tuple(columns(stage) for stage in run.stages)
