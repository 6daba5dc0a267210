"""Tracked runs in MLflow (optional: the ``tracking`` extra; without MLflow nothing is logged).

A self-training run (a demo, a ``selftrain run``) is an MLflow run; each of its stages (teacher,
label jobs, students) is a run nested under it. A training stage logs its full config as params,
one step per epoch of metrics (loss, lr, crop size, batch size, images/s, val mIoU) from rank 0,
and its checkpoint as an artifact at the end; a label stage logs its summary and its store's class
distribution. A stage is found again by the tag ``selftrain.key`` (its run folder or store), so a
resumed job continues the MLflow run it started instead of opening another.

Tracking never fails a job: a tracker that cannot reach MLflow (a server down, a SQLite store
locked too long) logs one warning and the job goes on untracked.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from core.configs import LabelJobConfig, TrackingSettings, TrainJobConfig
from core.runfiles import MetricsRow, RunFiles

log = logging.getLogger(__name__)

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


def _best_effort(method: Callable[..., None]) -> Callable[..., None]:
    """The tracker's method, or nothing once MLflow has failed it (warned once)."""

    @functools.wraps(method)
    def guarded(self: StageTracker, *args: Any, **kwargs: Any) -> None:
        if self.broken:
            return
        try:
            method(self, *args, **kwargs)
        except Exception as exc:
            self.broken = True
            log.warning("MLflow tracking stopped for %s: %s: %s", self.key, type(exc).__name__, exc)

    return guarded


class StageTracker:
    """One stage's MLflow run (nested under ``settings.parent_run_id`` when it has one)."""

    broken = False

    def __init__(self, settings: TrackingSettings, key: str, stage: str) -> None:
        self.key = key
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

    @_best_effort
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

    @_best_effort
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
        values |= online_metric_values(row)
        self.log_metrics(values, step=row.epoch)

    @_best_effort
    def log_metrics(self, values: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    @_best_effort
    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    @_best_effort
    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        self.client.log_text(self.run_id, json.dumps(data, indent=2, default=str), name)

    @_best_effort
    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def stage_identity(config: TrainJobConfig | LabelJobConfig) -> tuple[str, str]:
    """The key that finds a stage's MLflow run again (its run folder, or its label store, as an
    absolute path) and the run's name."""
    if isinstance(config, TrainJobConfig):
        return str(RunFiles.of(config.storage_path, config.run_name).directory), config.run_name
    if not isinstance(config, LabelJobConfig):  # an evaluation stage (core.evaluation_run)
        return config.tracking_key()
    store = Path(config.store).expanduser().resolve()
    return str(store), store.stem


def stage_tracker(config: TrainJobConfig | LabelJobConfig) -> StageTracker | None:
    """The stage's tracker, or None when the job has no tracking settings or MLflow is missing."""
    if config.tracking is None or not mlflow_installed():
        return None
    key, name = stage_identity(config)
    try:
        return StageTracker(config.tracking, key, name)
    except Exception as exc:
        uri = config.tracking.uri
        log.warning("not tracked, MLflow at %s: %s: %s", uri, type(exc).__name__, exc)
        return None


def find_stage_run(settings: TrackingSettings, key: str) -> tuple[str, str] | None:
    """The experiment id and run id of the stage whose key is ``key``, if it has a run."""
    client = _client(settings)
    run_id = _find(client, settings, key)
    if run_id is None:
        return None
    return client.get_run(run_id).info.experiment_id, run_id


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


def online_metric_values(row: MetricsRow) -> dict[str, float]:
    """An online student's epoch as flat MLflow metrics: ``unlabeled_confident_share`` and, per
    class, ``pseudo_class_share/<class>``, ``labeled_class_share/<class>`` and
    ``class_threshold/<class>`` (empty for other runs)."""
    values: dict[str, float] = {}
    if row.unlabeled_confident_share is not None:
        values["unlabeled_confident_share"] = row.unlabeled_confident_share
    per_class = {
        "pseudo_class_share": row.pseudo_class_share,
        "labeled_class_share": row.labeled_class_share,
        "class_threshold": row.class_thresholds,
    }
    for prefix, by_class in per_class.items():
        for name, value in (by_class or {}).items():
            values[f"{prefix}/{name}"] = value
    return values
