"""Label Studio's ML backend protocol (as label-studio-ml-backend's ``api.py`` speaks it), served
with the latest promoted model of a name: connect a Label Studio project to
``http://<service>/api/label-studio/<NAME>`` (Settings > Model) and annotators see that model's
masks as brush pre-annotations.

- ``GET  /health`` (and ``/``): ``{"status": "UP", ...}``;
- ``POST /setup``: ``{"model_version": ...}`` for the project's labeling config;
- ``POST /predict``: ``{"tasks": [...], "label_config": ...}`` -> ``{"results": [prediction per
  task]}``, each ``{"result": [brushlabels regions], "score", "model_version"}``;
- ``POST /webhook``: accepted and ignored (the model is trained by runs, not by Label Studio).

Label Studio authenticates to an ML backend with HTTP basic auth: any user name, the service's API
token as the password (a bearer token works too). A task's image is read from Label Studio's
local files (``/data/local-files/?d=PATH``, PATH inside the service's data roots, relative ones
against the first: make it Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``) or downloaded from the
Label Studio at ``SELFTRAIN_LABEL_STUDIO_URL`` (uploads, with ``SELFTRAIN_LABEL_STUDIO_API_KEY``);
any other address is refused, so a task cannot make the service fetch arbitrary URLs.
"""

from __future__ import annotations

import logging
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, status
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from core.errors import CheckpointError, ConfigError
from core.label_studio import BrushConfig, brush_config, brush_regions
from core.plan import SpecError
from services.deps import Service, ServiceDep
from services.predict import predict_label_confidence
from services.registry import latest_checkpoint, promoted_models
from services.routes_predict import _busy, _check_header, _decode, _plan, _reserve
from services.spec_inputs import check_readable_path

log = logging.getLogger(__name__)

router = APIRouter(prefix="/label-studio/{name}", tags=["label-studio"])
ModelName = Annotated[str, PathParam(max_length=100, description="A registered model's name")]
# Tasks in one /predict request (Label Studio sends one when an annotator opens a task).
MAX_TASKS = 64
DOWNLOAD_TIMEOUT_S = 30.0


class SetupRequest(BaseModel):
    """Label Studio's ``/setup`` body (its other keys are accepted and unused)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    project: str | None = None
    label_config: str | None = Field(default=None, alias="schema", max_length=2**20)


class PredictRequest(BaseModel):
    """Label Studio's ``/predict`` body (its other keys are accepted and unused)."""

    model_config = ConfigDict(extra="allow")
    tasks: list[dict[str, Any]] = Field(max_length=MAX_TASKS)
    label_config: str | None = Field(default=None, max_length=2**20)
    project: str | int | None = None


class Prediction(BaseModel):
    """One task's prediction, in Label Studio's format."""

    result: list[dict[str, Any]]
    score: float
    model_version: str


class PredictResponse(BaseModel):
    results: list[Prediction]


def model_version(service: Service, name: str) -> str:
    """The version Label Studio shows: ``NAME v<MLflow version>``, or ``NAME loop<k> <run>``."""
    found = promoted_models(service, name)
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no promoted model named {name!r}")
    latest = found[0]
    if latest.version is not None:
        return f"{name} v{latest.version}"
    return f"{name} loop{latest.loop} {Path(latest.run_folder).name}"


@router.get("/health")
@router.get("/", include_in_schema=False)
def health(name: ModelName, service: ServiceDep) -> dict[str, Any]:
    """Up, and which model answers (None until something of ``name`` is promoted)."""
    try:
        version: str | None = model_version(service, name)
    except HTTPException:
        version = None
    return {"status": "UP", "model_class": "selftrain", "model_version": version}


@router.post("/setup", responses={404: {"description": "Nothing of that name promoted"}})
def setup(name: ModelName, body: SetupRequest, service: ServiceDep) -> dict[str, str]:
    """Check the project's labeling config can show this model's masks; its model version."""
    version = model_version(service, name)
    if body.label_config:
        _shown_labels(_model(service, name).label_space, _brush(body.label_config))
    return {"model_version": version}


@router.post("/webhook")
def webhook(name: ModelName) -> dict[str, str]:
    """Label Studio's training events: accepted, not acted on (runs train the models)."""
    return {"status": "Unknown event"}


@router.get("/metrics")
def metrics(name: ModelName) -> dict[str, Any]:
    return {}


@router.post("/predict", responses={404: {}, 422: {}, 503: {}})
def predict(name: ModelName, body: PredictRequest, service: ServiceDep) -> PredictResponse:
    """The latest promoted model of ``name`` on each task's image, as brush pre-annotations (a
    task whose image cannot be read gets an empty prediction; the reason is logged). Each image
    goes through /api/predict's cost plan, slots and memory budget."""
    if not body.label_config:
        raise _unprocessable("label_config", "the project's labeling config is needed")
    brush = _brush(body.label_config)
    version = model_version(service, name)
    loaded = _model(service, name)
    shown = _shown_labels(loaded.label_space, brush)
    results = [_predict_task(service, task, brush, shown, loaded, version) for task in body.tasks]
    return PredictResponse(results=results)


def _predict_task(service, task, brush: BrushConfig, shown, loaded, version: str) -> Prediction:
    url = str((task.get("data") or {}).get(brush.data_key, ""))
    try:
        data, filename = _task_image(service, url)
        size = _check_header(data, filename, service.settings.max_image_pixels)
        plan = _plan(service, size, loaded, filename)
        pixels = _decode(data, filename, size)
    except HTTPException as exc:
        log.warning("Label Studio task %s: %s: %s", task.get("id"), url[:200], exc.detail)
        return Prediction(result=[], score=0.0, model_version=version)
    if not service.predict_waiting.acquire(blocking=False):
        raise _busy(f"{service.settings.predict_queue} predictions wait already")
    try:
        _reserve(service, plan.bytes)
    finally:
        service.predict_waiting.release()
    try:
        input_size = (plan.input_height, plan.input_width)
        device = service.settings.predict_device
        label, score = predict_label_confidence(loaded.model, pixels, input_size, device)
    finally:
        service.predict_budget.release(plan.bytes)
        service.predict_slots.release()
    prefix = f"{task.get('id', 't')}-"
    names = loaded.label_space.names
    regions = brush_regions(label, names, brush.from_name, brush.to_name, prefix, shown)
    return Prediction(result=regions, score=score, model_version=version)


def _task_image(service: Service, url: str) -> tuple[bytes, str]:
    """The bytes of a task's image and a name for messages (see the module docstring).

    Raises:
        HTTPException: Refused or unreadable (the caller turns it into an empty prediction).
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.path.startswith("/data/local-files"):
        relative = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]
        try:
            path = check_readable_path(relative, service.settings.data_roots, "image")
        except SpecError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, exc.problems[0][1]) from exc
        return _read_capped(path, service.settings.max_upload_bytes), path.name
    base = service.settings.label_studio_url
    from_label_studio = url.startswith(f"{(base or '').rstrip('/')}/") or not parsed.netloc
    if base and from_label_studio and parsed.path.startswith("/"):
        return _download(service, urllib.parse.urljoin(base, url)), Path(parsed.path).name
    raise HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        f"{url[:200]!r}: only Label Studio's local files and its uploads (at "
        "SELFTRAIN_LABEL_STUDIO_URL) are read",
    )


def _read_capped(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"{path.name}: over {limit} bytes")
    return data


def _download(service: Service, url: str) -> bytes:
    key = service.settings.label_studio_api_key
    headers = {"Authorization": f"Token {key.get_secret_value()}"} if key else {}
    request = urllib.request.Request(url, headers=headers)
    limit = service.settings.max_upload_bytes
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read(limit + 1)
    except OSError as exc:  # URLError, HTTPError and timeouts are OSErrors
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{url}: {exc}") from exc
    if len(data) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"{url}: over {limit} bytes")
    return data


def _brush(label_config: str) -> BrushConfig:
    try:
        return brush_config(label_config)
    except ConfigError as exc:
        raise _unprocessable("label_config", str(exc)) from exc


def _shown_labels(space, brush: BrushConfig) -> list[str]:
    """The model's classes the project's BrushLabels tag has (at least one, else 422)."""
    shown = [n for n in space.names if n in brush.labels]
    if not shown:
        raise _unprocessable(
            "label_config",
            f"the BrushLabels tag {brush.from_name!r} has none of the model's classes "
            f"{list(space.names)}",
        )
    return shown


def _model(service: Service, name: str):
    """The latest promoted model of ``name`` (services.predict.LoadedModel, loaded once)."""
    checkpoint = _servable_checkpoint(service, name)
    try:
        return service.models.get(checkpoint, service.settings.predict_device)
    except CheckpointError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc


def _servable_checkpoint(service: Service, name: str) -> Path:
    """The latest promoted checkpoint of ``name``, checked inside the service's folders now."""
    path = latest_checkpoint(service, name)
    try:
        return check_readable_path(str(path), service.settings.allowed_roots, "checkpoint")
    except SpecError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, exc.problems[0][1]) from exc


def _unprocessable(field: str, message: str) -> HTTPException:
    detail = [{"loc": ["body", field], "msg": f"{field}: {message}", "type": "value_error"}]
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail)
