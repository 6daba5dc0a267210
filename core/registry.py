"""Promoted models: a student that passed the gate (core.gate) is registered under a name.

Every promotion is recorded in its run folder, ``<run folder>/promoted/loop<k>.json`` (a
`Registration`); with tracking on it is also a version of the registered model in MLflow's Model
Registry (its source the evaluation stage's ``model`` artifact: the checkpoint, and the ONNX file
when the ``export`` extra is installed), tagged with its teacher, data sources, gate table and audit
summary. ``latest`` finds "the latest promoted model of NAME" among records from either place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from core.confine import read_regular
from core.errors import DataError
from core.gate import GateRow

PROMOTED_DIR = "promoted"
# A record is a few KB; anything much larger is not one.
MAX_RECORD_BYTES = 4 * 2**20
# MLflow model-version tags: the whole record in one (MLflow allows 100,000 characters there).
RECORD_TAG = "selftrain.registration"
MAX_RECORD_TAG = 100_000
MODEL_ARTIFACT = "model"


class Registration(BaseModel):
    """A promoted student.

    Attributes:
        name: The registered model's name.
        registry: ``mlflow`` (a version in MLflow's Model Registry) or ``run folder`` (only the
            run folder's record).
        version: The MLflow model version (None: not in MLflow).
        uri: ``models:/<name>/<version>``, or the run folder's record file.
        checkpoint: The promoted checkpoint.
        onnx: Its ONNX export (None: the export extra is missing, or the export failed: notes).
        run_folder: The run's folder.
        loop: The loop whose student it is.
        student: The student's stage.
        teacher: The checkpoint of the teacher it was gated against.
        sources: The data it learned from: ``labeled`` and ``pool`` sources.
        gate: The gate table (one row per gated test set).
        audit: Per label store of the loop: its audit's headline numbers.
        registered_at: Unix seconds.
        notes: What did not work out (an ONNX export or an MLflow registration that failed).
    """

    name: str
    registry: Literal["mlflow", "run folder"] = "run folder"
    version: int | None = None
    uri: str
    checkpoint: str
    onnx: str | None = None
    run_folder: str
    loop: int
    student: str
    teacher: str
    sources: dict[str, Any] = Field(default_factory=dict)
    gate: list[GateRow]
    audit: list[dict[str, Any]] = Field(default_factory=list)
    registered_at: float
    notes: list[str] = Field(default_factory=list)


def record_path(run_folder: str | Path, loop: int) -> Path:
    """Where a run folder records the promotion of ``loop``'s student."""
    return Path(run_folder) / PROMOTED_DIR / f"loop{loop}.json"


def write_record(registration: Registration) -> Path:
    """Write ``registration`` into its run folder (atomically: a reader sees all or nothing)."""
    path = record_path(registration.run_folder, registration.loop)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(registration.model_dump_json(indent=2))
    os.replace(partial, path)
    return path


def read_json_file(path: str | Path, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """The JSON in a regular file of at most ``max_bytes``, read without following a link
    (core.confine.read_regular).

    Raises:
        DataError: Missing, a link, not a regular file, too large, not UTF-8 or not JSON.
    """
    try:
        data = read_regular(path, max_bytes)
    except FileNotFoundError as exc:
        raise DataError(path, "does not exist") from exc
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(path, "not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not JSON: {exc.msg} at line {exc.lineno}") from exc


def read_record(path: str | Path) -> Registration:
    """A run folder's record.

    Raises:
        DataError: It cannot be read or is not a registration.
    """
    try:
        return Registration.model_validate(read_json_file(path))
    except ValidationError as exc:
        raise DataError(path, f"not a promotion record: {exc.errors()[0]['msg']}") from exc


def folder_records(folders: Iterable[str | Path]) -> tuple[list[Registration], list[str]]:
    """The promotions recorded in run folders: each folder given, and the folders directly in it
    (a folder of runs). One listing per folder, not per image.

    Returns:
        The records, and one line per record that could not be read.
    """
    records, problems = [], []
    for folder in folders:
        folder = Path(folder)
        paths = sorted(folder.glob(f"{PROMOTED_DIR}/loop*.json"))
        paths += sorted(folder.glob(f"*/{PROMOTED_DIR}/loop*.json"))
        for path in paths:
            try:
                records.append(read_record(path))
            except DataError as exc:
                problems.append(str(exc))
    return records, problems


def latest(records: Sequence[Registration], name: str) -> Registration | None:
    """The newest promotion of ``name``."""
    named = [r for r in records if r.name == name]
    return max(named, key=lambda r: (r.registered_at, r.version or 0)) if named else None


def version_tags(registration: Registration) -> dict[str, str]:
    """The tags of an MLflow model version: teacher, data sources, gate table, audit summary, and
    the whole record (read back by `mlflow_records`)."""
    record = registration.model_dump_json()
    if len(record) > MAX_RECORD_TAG:  # a run with very many stores: the audit list goes first
        record = registration.model_copy(update={"audit": []}).model_dump_json()
    return {
        "teacher": registration.teacher,
        "checkpoint": registration.checkpoint,
        "data_sources": json.dumps(registration.sources),
        "gate": json.dumps([row.model_dump() for row in registration.gate]),
        "audit": json.dumps(registration.audit),
        "loop": str(registration.loop),
        "run_folder": registration.run_folder,
        RECORD_TAG: record,
    }


def register_in_mlflow(tracking_uri: str, run_id: str, registration: Registration) -> Registration:
    """A version of ``registration.name`` in MLflow's Model Registry, its source the run's
    ``model`` artifact; returns the registration with its version and ``models:/`` URI.

    Raises:
        Exception: Whatever MLflow raises (the caller records it).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        client.create_registered_model(registration.name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    draft = registration.model_copy(update={"registry": "mlflow"})
    version = client.create_model_version(
        registration.name,
        source=f"runs:/{run_id}/{MODEL_ARTIFACT}",
        run_id=run_id,
        tags=version_tags(draft),
    )
    number = int(version.version)
    uri = f"models:/{registration.name}/{number}"
    client.set_model_version_tag(registration.name, str(number), "uri", uri)
    return draft.model_copy(update={"version": number, "uri": uri})


def mlflow_records(tracking_uri: str, name: str | None = None) -> list[Registration]:
    """The promotions registered in MLflow (of ``name``, or of every model selftrain registered).

    Raises:
        Exception: Whatever MLflow raises when it cannot be reached.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    escaped = None if name is None else name.replace("'", "\\'")
    query = None if escaped is None else f"name='{escaped}'"
    records = []
    for version in client.search_model_versions(query):
        text = (version.tags or {}).get(RECORD_TAG)
        if text is None:
            continue  # a model version selftrain did not register
        record = Registration.model_validate_json(text)
        uri = f"models:/{version.name}/{version.version}"
        records.append(record.model_copy(update={"version": int(version.version), "uri": uri}))
    return records


def download_checkpoint(tracking_uri: str, registration: Registration, cache: Path) -> Path:
    """The registered checkpoint, downloaded from the model version's run into ``cache`` (once
    per version).

    Raises:
        Exception: Whatever MLflow raises.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = client.get_model_version(registration.name, str(registration.version))
    target = cache / f"{_safe(registration.name)}-v{registration.version}"
    checkpoint = target / MODEL_ARTIFACT / Path(registration.checkpoint).name
    if not checkpoint.is_file():
        target.mkdir(parents=True, exist_ok=True)
        client.download_artifacts(version.run_id, MODEL_ARTIFACT, str(target))
    return checkpoint


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in name)
