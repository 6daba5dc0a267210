"""Tracked runs in MLflow (optional: the ``tracking`` extra; without MLflow nothing is logged).

A self-training run (a demo, a ``selftrain run``) is an MLflow run; each of its stages (teacher,
label jobs, students) is a run nested under it. A training stage logs its full config as params,
one step per epoch of metrics (loss, lr, crop size, batch size, images/s, val mIoU) from rank 0,
and its checkpoint as an artifact at the end; a label stage logs its summary and its store's class
distribution. A stage is found again by the tag ``selftrain.key`` (its run folder or store), so a
resumed job continues the MLflow run it started instead of opening another.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.configs import TrackingSettings
from core.runfiles import MetricsRow

KEY_TAG = "selftrain.key"
STAGE_TAG = "selftrain.stage"


def mlflow_installed() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def local_tracking(folder: str | Path, run_name: str) -> TrackingSettings | None:
    """An MLflow store in ``folder/mlflow.db`` (artifacts in ``folder/mlartifacts``) for a run on
    this machine, when MLflow is installed (else None)."""
    if not mlflow_installed():
        return None
    folder = Path(folder).resolve()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return TrackingSettings(uri=uri, run_name=run_name, artifacts=str(folder / "mlartifacts"))


def start_parent(settings: TrackingSettings) -> str:
    """Start (or find again) the self-training run's MLflow run; returns its id."""
    client = _client(settings)
    key = f"run:{settings.run_name}"
    run_id = _find(client, settings, key)
    if run_id is None:
        run_id = client.create_run(
            _experiment(client, settings), run_name=settings.run_name, tags={KEY_TAG: key}
        ).info.run_id
    return run_id


def end_parent(settings: TrackingSettings, run_id: str, status: str = "FINISHED") -> None:
    _client(settings).set_terminated(run_id, status)


class StageTracker:
    """One stage's MLflow run (nested under ``settings.parent_run_id`` when it has one)."""

    def __init__(self, settings: TrackingSettings, key: str, stage: str) -> None:
        self.client = _client(settings)
        found = _find(self.client, settings, key)
        if found is not None:
            self.run_id = found
            self.client.update_run(found, status="RUNNING")
        else:
            tags = {KEY_TAG: key, STAGE_TAG: stage}
            if settings.parent_run_id:
                tags["mlflow.parentRunId"] = settings.parent_run_id
            experiment = _experiment(self.client, settings)
            self.run_id = self.client.create_run(experiment, run_name=stage, tags=tags).info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flattened (``a.b.c``) params; a resumed run logs the same values again, which MLflow
        accepts, and a changed value is skipped (MLflow's params are write-once)."""
        existing = self.client.get_run(self.run_id).data.params
        flat = {k: str(v)[:6000] for k, v in _flatten(params).items()}
        new = [(k, v) for k, v in flat.items() if k not in existing]
        from mlflow.entities import Param

        for start in range(0, len(new), 100):
            params_batch = [Param(k, v) for k, v in new[start : start + 100]]
            self.client.log_batch(self.run_id, params=params_batch)

    def log_epoch(self, row: MetricsRow) -> None:
        values = {
            "loss": row.loss,
            "lr": row.lr,
            "crop_size": row.crop_size,
            "batch_size": row.batch_size,
            "n_real": row.n_real,
            "n_pseudo": row.n_pseudo,
            "images_per_s": row.images_per_s,
            "seconds": row.seconds,
        }
        if row.val_miou is not None:
            values["val_miou"] = row.val_miou
        self.log_metrics(values, step=row.epoch)

    def log_metrics(self, values: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        self.client.log_text(self.run_id, json.dumps(data, indent=2, default=str), name)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def stage_tracker(settings: TrackingSettings | None, key: str, stage: str) -> StageTracker | None:
    """The stage's tracker, or None without settings or without MLflow."""
    if settings is None or not mlflow_installed():
        return None
    return StageTracker(settings, key, stage)


def _client(settings: TrackingSettings):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=settings.uri)


def _experiment(client, settings: TrackingSettings) -> str:
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(settings.experiment, artifact_location=settings.artifacts)


def _find(client, settings: TrackingSettings, key: str) -> str | None:
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None:
        return None
    escaped = key.replace("'", "\\'")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{escaped}'", max_results=1
    )
    return runs[0].info.run_id if runs else None


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
