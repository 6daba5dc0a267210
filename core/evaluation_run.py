"""A run's evaluation stage: score a loop's teacher, control and student on the test sets, apply
the promotion gate, register a promoted student, and write it all to one report file.

``jobs/evaluate.py`` runs `run_evaluation` in a Ray task (with the GPUs the settings ask for); the
control plane and ``selftrain run`` read the report (`read_report`). The report is the stage's
only output, written atomically at the end, so a reader sees a whole report or none.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from core.configs import DataSource, TrackingSettings, source_paths
from core.drift import audit_of
from core.errors import DataError
from core.evaluation import Evaluation, EvaluationSettings, ModelRef, ModelRole, evaluate_models
from core.gate import MODEL_NAME_PATTERN, GateSpec, Verdict, verdict
from core.registry import (
    MODEL_ARTIFACT,
    Registration,
    read_json_file,
    record_path,
    register_in_mlflow,
    write_record,
)
from core.runfiles import resolve_checkpoint

log = logging.getLogger(__name__)

# A report holds a few tables; a file much larger than this is not one.
MAX_REPORT_BYTES = 16 * 2**20
# Check images of the ONNX export (from the first test set).
EXPORT_CHECK_IMAGES = 4


class EvaluateJobConfig(EvaluationSettings):
    """The evaluation stage of one loop: the settings plus what the run's plan fills in.

    Attributes:
        loop: The loop.
        teacher: The loop's teacher (the first teacher, or the previous loop's model).
        control: The labeled-only control, when the run trains one.
        student: The loop's student (its finetuned model when the run finetunes).
        gate: The promotion gate (None: evaluate only).
        model_name: The name a promoted student is registered under.
        stores: The loop's label stores (their audits go into the registration).
        labeled: The student's labeled data, and ``pool``: the sources it was pseudo-labeled
            from (the registration's data sources).
        report: The report file this job writes.
        run_folder: The run's folder (promotions are recorded under ``promoted/``).
        export: Add the ONNX export to a registered model when the ``export`` extra is there.
    """

    loop: int = Field(ge=0)
    teacher: ModelRef
    control: ModelRef | None = None
    student: ModelRef
    gate: GateSpec | None = None
    model_name: str | None = Field(default=None, pattern=MODEL_NAME_PATTERN)
    stores: list[str] = Field(default_factory=list, max_length=256)
    labeled: DataSource | None = None
    pool: list[DataSource] = Field(default_factory=list, max_length=64)
    report: str
    run_folder: str
    export: bool = True
    ray_address: str | None = None
    tracking: TrackingSettings | None = None
    allowed_roots: list[str] | None = Field(default=None, max_length=64)

    def paths(self) -> list[tuple[str, str]]:
        """``(field, path)`` of every file or folder the job reads or writes (core.confine)."""
        models = [("teacher", self.teacher), ("control", self.control), ("student", self.student)]
        return [
            *[(f"{role}.checkpoint", ref.checkpoint) for role, ref in models if ref is not None],
            *[p for name, test in self.tests.items() for p in source_paths(f"tests.{name}", test)],
            *[(f"stores.{i}", store) for i, store in enumerate(self.stores)],
            ("report", self.report),
            ("run_folder", self.run_folder),
        ]

    def tracking_key(self) -> tuple[str, str]:
        """The key that finds the stage's MLflow run again (its report file) and the run's name."""
        report = Path(self.report).expanduser().resolve()
        return str(report), report.stem

    def models(self) -> list[tuple[ModelRole, ModelRef]]:
        """``(role, model)`` to score, each checkpoint as it exists now (``last.pt`` for a stage
        that kept no ``best.pt``)."""
        pairs: list[tuple[ModelRole, ModelRef | None]] = [
            ("teacher", self.teacher),
            ("control", self.control),
            ("student", self.student),
        ]
        found = []
        for role, ref in pairs:
            if ref is None:
                continue
            path = resolve_checkpoint(ref.checkpoint)
            if path is None:
                raise DataError(ref.checkpoint, f"the {role}'s checkpoint ({ref.stage}) is missing")
            found.append((role, ref.model_copy(update={"checkpoint": str(path)})))
        return found


class EvaluationReport(BaseModel):
    """What an evaluation stage leaves: the scores, the verdict, the registration."""

    evaluation: Evaluation
    verdict: Verdict | None = None
    registration: Registration | None = None


def read_report(path: str | Path) -> EvaluationReport:
    """An evaluation stage's report.

    Raises:
        DataError: It cannot be read or is not a report.
    """
    try:
        return EvaluationReport.model_validate(read_json_file(path, MAX_REPORT_BYTES))
    except ValidationError as exc:
        raise DataError(path, f"not an evaluation report: {exc.errors()[0]['msg']}") from exc


def write_report(report: EvaluationReport, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(report.model_dump_json(indent=2))
    os.replace(partial, path)
    return path


def run_evaluation(config: EvaluateJobConfig, device: str = "cpu", tracker=None) -> dict:
    """Score, gate, register (when promoted) and write the report; returns it as a dict.

    Args:
        config: The stage.
        device: Where the models run.
        tracker: The stage's MLflow run (core.tracking.StageTracker), or None.
    """
    from core.evaluate import evaluate_checkpoint

    def score(checkpoint: str, source: DataSource) -> dict:
        return evaluate_checkpoint(checkpoint, source, mode=config.mode, device=device)

    evaluation = evaluate_models(config.loop, config.models(), dict(config.tests), score)
    report = EvaluationReport(evaluation=evaluation)
    if config.gate is not None:
        report.verdict = verdict(evaluation, config.gate)
    if tracker is not None:
        tracker.log_metrics(_metrics(report))
    if report.verdict is not None and report.verdict.promoted:
        report.registration = register(config, report.verdict, tracker)
    write_report(report, config.report)
    if tracker is not None:
        tracker.log_dict(report.model_dump(mode="json"), "evaluation_report.json")
    return report.model_dump(mode="json")


def _metrics(report: EvaluationReport) -> dict[str, float]:
    values: dict[str, float] = {}
    for model in report.evaluation.models:
        for test, scores in model.tests.items():
            if scores.miou is not None:
                values[f"{model.role}.{test}.miou"] = scores.miou
    if report.verdict is not None:
        values["promoted"] = float(report.verdict.promoted)
        for row in report.verdict.table:
            if row.gain_over_teacher is not None:
                values[f"gain_over_teacher.{row.test}"] = row.gain_over_teacher
            if row.gain_over_control is not None:
                values[f"gain_over_control.{row.test}"] = row.gain_over_control
    return values


def register(config: EvaluateJobConfig, promoted: Verdict, tracker=None) -> Registration:
    """Record the promotion in the run folder, and in MLflow's Model Registry when tracked."""
    name = config.model_name or "selftrain"
    registration = Registration(
        name=name,
        uri=str(record_path(config.run_folder, config.loop)),
        checkpoint=promoted.checkpoint,
        run_folder=config.run_folder,
        loop=config.loop,
        student=promoted.student,
        teacher=config.teacher.checkpoint,
        sources=_sources(config),
        gate=promoted.table,
        audit=_audit_summaries(config.stores),
        registered_at=time.time(),
    )
    onnx, notes = _export(config, promoted.checkpoint)
    registration = registration.model_copy(update={"onnx": onnx, "notes": notes})
    if tracker is not None and not tracker.broken:
        try:
            for path in (promoted.checkpoint, onnx):
                if path is not None:
                    tracker.client.log_artifact(tracker.run_id, path, MODEL_ARTIFACT)
            uri = tracker.client.tracking_uri
            registration = register_in_mlflow(uri, tracker.run_id, registration)
        except Exception as exc:  # the run folder's record stands; say why MLflow has none
            log.warning("MLflow registration of %s failed: %s", name, exc)
            registration.notes.append(f"MLflow registration failed: {type(exc).__name__}: {exc}")
    write_record(registration)
    return registration


def _sources(config: EvaluateJobConfig) -> dict[str, Any]:
    return {
        "labeled": None if config.labeled is None else config.labeled.model_dump(mode="json"),
        "pool": [source.model_dump(mode="json") for source in config.pool],
    }


def _audit_summaries(stores: list[str]) -> list[dict[str, Any]]:
    """Each store's audit headline (mIoU, ECE, confident share, images); a store that cannot be
    read says so."""
    from core.store import LabelStore

    found = []
    for store in stores:
        try:
            audit = audit_of(LabelStore.open(store, read_only=True).summary())
        except DataError as exc:
            found.append({"store": store, "error": str(exc)})
            continue
        if audit is not None:
            found.append(
                {
                    "store": store,
                    "miou": audit.miou,
                    "ece": audit.ece,
                    "confident_share": audit.confident_share,
                    "n_images": audit.n_images,
                }
            )
    return found


def _export(config: EvaluateJobConfig, checkpoint: str) -> tuple[str | None, list[str]]:
    """The checkpoint's ONNX export beside the run folder's record, when the export extra is
    installed; a failed export is a note, not a failed promotion."""
    if not config.export or importlib.util.find_spec("onnxruntime") is None:
        return None, []
    from core.datasets import open_source
    from core.export import ExportError, export_onnx
    from core.io import read_image

    first = next(iter(config.tests.values()))
    paths = open_source(first).image_paths()[:EXPORT_CHECK_IMAGES]
    images = [read_image(path) for path in paths]
    out = record_path(config.run_folder, config.loop).with_suffix(".onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            export_onnx(checkpoint, out, images)
        except ExportError as exc:
            if "pools to fixed bins" not in str(exc):
                raise
            export_onnx(checkpoint, out, images, size=images[0].shape[:2])
    except Exception as exc:
        return None, [f"ONNX export failed: {type(exc).__name__}: {exc}"]
    return str(out), []
