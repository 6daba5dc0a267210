"""Passes over the runs in flight, each run on its own, each pass with a deadline.

Every ``step`` lists the runs in flight and starts a pass over each run that has none going, in a
daemon thread of its own (at most ``parallel`` passes that are not stalled run at once). A pass
that overruns ``deadline_s`` is marked stalled with what it was doing (reading a file, waiting for
the cluster) and left to finish on its own: it holds no lock and no database session while it
waits, so it delays no other run, no cancel and no health check, and as a daemon thread it never
holds up the service's exit. The run gets its next pass once the stalled one has ended.

The reconciler remembers when a step last listed the runs and started their passes (its last
successful pass) and which runs are stalled, for ``/api/health``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Pass:
    """One pass over one run, as the reconciler follows it."""

    run_id: str
    started: float = field(default_factory=time.monotonic)
    activity: str = "starting"
    stalled: str | None = None
    thread: threading.Thread | None = None

    def note(self, activity: str) -> None:
        """Say what the pass is doing now (named if it stalls)."""
        self.activity = activity

    def done(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()


@dataclass(frozen=True)
class ReconcilerHealth:
    """What ``/api/health`` shows of the reconciler.

    Attributes:
        last_pass_at: When a step last listed the runs and started their passes (epoch seconds;
            None before the first).
        runs_in_flight: Runs it found in flight then.
        stalled: Runs whose pass overran its deadline, with what the pass was doing.
    """

    last_pass_at: float | None
    runs_in_flight: int
    stalled: dict[str, str]


class Reconciler:
    """Runs ``reconcile(run_id, note)`` over each run that ``in_flight()`` lists (see the module
    docstring).

    Args:
        in_flight: The ids of the runs in flight (reads the database).
        reconcile: One pass over a run; ``note(activity)`` says what it is doing.
        mark_stalled: Records on the run that its pass stalled, and why.
        deadline_s: How long a pass may take before it is marked stalled.
        parallel: Passes (not stalled) running at once.
    """

    def __init__(
        self,
        in_flight: Callable[[], list[str]],
        reconcile: Callable[[str, Callable[[str], None]], None],
        mark_stalled: Callable[[str, str], None],
        deadline_s: float,
        parallel: int,
    ) -> None:
        self.in_flight = in_flight
        self.reconcile = reconcile
        self.mark_stalled = mark_stalled
        self.deadline_s = deadline_s
        self.parallel = parallel
        self._passes: dict[str, Pass] = {}
        self._guard = threading.Lock()
        self._last_pass_at: float | None = None
        self._runs_in_flight = 0

    def step(self, wait: bool = True) -> None:
        """List the runs in flight and start a pass over each that has none going; mark passes
        that overran their deadline stalled. With ``wait``, wait for the passes started here,
        each up to its deadline.

        Raises:
            Exception: Listing the runs failed (this step does not count as a successful pass).
        """
        run_ids = self.in_flight()
        started = []
        with self._guard:
            self._forget_finished()
            running = sum(1 for p in self._passes.values() if p.stalled is None)
            for run_id in run_ids:
                if run_id in self._passes or running >= self.parallel:
                    continue
                started.append(self._start(run_id))
                running += 1
            self._last_pass_at = time.time()
            self._runs_in_flight = len(run_ids)
        if wait:
            for p in started:
                assert p.thread is not None
                p.thread.join(max(0.0, p.started + self.deadline_s - time.monotonic()))
        self._mark_overdue()

    def health(self) -> ReconcilerHealth:
        with self._guard:
            stalled = {p.run_id: p.stalled for p in self._passes.values() if p.stalled}
            return ReconcilerHealth(self._last_pass_at, self._runs_in_flight, stalled)

    def _start(self, run_id: str) -> Pass:
        p = Pass(run_id)

        def target() -> None:
            try:
                self.reconcile(run_id, p.note)
            except Exception:  # reconcile ends its own errors; this is a last guard
                log.exception("run %s: pass failed", run_id)

        p.thread = threading.Thread(target=target, name=f"reconcile {run_id}", daemon=True)
        self._passes[run_id] = p
        p.thread.start()
        return p

    def _forget_finished(self) -> None:
        for run_id in [r for r, p in self._passes.items() if p.done()]:
            p = self._passes.pop(run_id)
            if p.stalled:
                waited = time.monotonic() - p.started
                log.info("run %s: its stalled pass ended after %.0f s", run_id, waited)

    def _mark_overdue(self) -> None:
        now = time.monotonic()
        with self._guard:
            overdue = [
                p
                for p in self._passes.values()
                if p.stalled is None and not p.done() and now - p.started > self.deadline_s
            ]
            for p in overdue:
                p.stalled = f"{p.activity} for over {self.deadline_s:g} s"
        for p in overdue:
            log.warning("run %s: pass stalled: %s", p.run_id, p.stalled)
            try:
                self.mark_stalled(p.run_id, p.stalled or "")
            except Exception:
                log.exception("run %s: could not mark it stalled", p.run_id)
