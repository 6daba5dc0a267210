"""The service's MLflow runs: each self-training run is a parent MLflow run, each of its job stages
a run nested under it (logged by the job itself, core.tracking), and the dashboard links to them.

Tracking is best effort: when MLflow is missing, off (``SELFTRAIN_TRACKING_URI=off``) or does not
answer, stages run untracked and the service logs why; a run never fails because of its tracker.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from core.configs import LabelJobConfig, TrackingSettings, TrainJobConfig
from core.tracking import end_parent, find_stage_run, mlflow_installed, stage_identity, start_parent
from services.db import Run

log = logging.getLogger(__name__)

OFF = "off"


class ServiceTracking:
    """Where the service's runs are tracked, and the dashboard's links to them.

    Args:
        uri: MLflow's tracking URI; the jobs must reach it too (a server, or a SQLite file on a
            volume every node mounts at the same path).
        artifacts: Where a new experiment keeps its artifacts (None: the server's choice).
        ui: The MLflow UI's address for links (None: runs are named by id, without a link).
    """

    def __init__(self, uri: str, artifacts: str | None = None, ui: str | None = None) -> None:
        self.settings = TrackingSettings(uri=uri, artifacts=artifacts)
        self.ui = ui.rstrip("/") if ui else None
        self._stages: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    @classmethod
    def configured(cls, uri: str | None, ui: str | None, workdir: Path) -> ServiceTracking | None:
        """The service's tracking: ``uri``, or a SQLite store in ``workdir`` when MLflow is
        installed; None when ``uri`` is ``off`` or MLflow is missing. The UI defaults to ``uri``
        when that is an HTTP server."""
        if uri == OFF or not mlflow_installed():
            return None
        if uri is None:
            return cls(f"sqlite:///{workdir / 'mlflow.db'}", str(workdir / "mlartifacts"), ui)
        if ui is None and uri.startswith(("http://", "https://")):
            ui = uri
        return cls(uri, None, ui)

    def for_run(self, run: Run) -> TrackingSettings | None:
        """The tracking settings for a stage of ``run``: nested under the run's parent MLflow run
        (started, or found again after a restart, here); None if MLflow does not answer."""
        settings = self.settings.model_copy(update={"run_name": f"{run.name} ({run.id})"})
        try:
            parent = start_parent(settings)
        except Exception as exc:  # the tracker is optional; the run goes on without it
            log.warning("run %s: not tracked, MLflow at %s: %s", run.id, self.settings.uri, exc)
            return None
        return settings.model_copy(update={"parent_run_id": parent})

    def end(self, run: Run) -> None:
        """End the run's parent MLflow run with the run's status (FINISHED, FAILED or KILLED)."""
        parent = _parent_of(run)
        if parent is None:
            return
        status = {"SUCCEEDED": "FINISHED", "STOPPED": "KILLED"}.get(run.status, "FAILED")
        try:
            end_parent(self.settings, parent, status)
        except Exception as exc:
            log.warning("run %s: could not end its MLflow run: %s", run.id, exc)

    def link(self, config: TrainJobConfig | LabelJobConfig) -> dict[str, str | None] | None:
        """``run_id`` and ``url`` (None without a UI) of the stage's MLflow run, once the job has
        opened it; None before that."""
        key, _ = stage_identity(config)
        with self._lock:
            found = self._stages.get(key)
        if found is None:
            try:
                found = find_stage_run(self.settings, key)
            except Exception as exc:
                log.debug("no MLflow link for %s: %s", key, exc)
                return None
            if found is None:
                return None
            with self._lock:
                self._stages[key] = found
        experiment, run_id = found
        url = f"{self.ui}/#/experiments/{experiment}/runs/{run_id}" if self.ui else None
        return {"run_id": run_id, "url": url}


def _parent_of(run: Run) -> str | None:
    """The parent MLflow run the run's stages were given (recorded in their configs at submit)."""
    for stage in run.stages:
        tracking = (stage.config or {}).get("tracking") or {}
        if tracking.get("parent_run_id"):
            return tracking["parent_run_id"]
    return None
