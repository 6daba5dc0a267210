"""``POST /api/predict``: label an uploaded image with a run's model or a checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile, status

from core.confine import PathNotAllowedError, check_confined
from core.errors import CheckpointError, CorruptImageError, ImageTooLargeError
from core.image_cost import ImagePlan, plan_image
from core.plan import SpecError
from services.db import SUCCEEDED, Run
from services.deps import Service, ServiceDep
from services.predict import LoadedModel, class_shares, label_png, overlay_png, predict_label
from services.schemas import PredictionShares
from services.spec_inputs import check_readable_path

router = APIRouter(tags=["predict"])

Output = Literal["label", "overlay", "shares"]
# The model needs a few pixels to downsample; smaller uploads are refused rather than crashing it.
MIN_SIDE = 8


@router.post(
    "/predict",
    response_class=Response,
    responses={
        200: {
            "description": "``label``: gray PNG of train ids; ``overlay``: RGB PNG; "
            "``shares``: JSON per-class pixel shares",
            "content": {
                "image/png": {},
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictionShares"}},
            },
        },
        400: {"description": "Not a decodable image, or too small"},
        404: {"description": "No such run, or nothing promoted under that model name"},
        409: {"description": "The run has no trained model yet"},
        413: {
            "description": "Upload too large, an image header declaring too many pixels, or an "
            "image that costs too much memory or has too extreme an aspect ratio"
        },
        422: {"description": "Not one of run_id, checkpoint and model, or a bad checkpoint"},
        503: {
            "description": "Busy: the wait for a prediction slot was too long, or too many "
            "requests wait already; try again (Retry-After)"
        },
    },
)
def predict(
    service: ServiceDep,
    image: Annotated[UploadFile, File(description="The image (PNG or JPEG)")],
    run_id: Annotated[str | None, Form(max_length=32)] = None,
    checkpoint: Annotated[str | None, Form(max_length=4096)] = None,
    output: Annotated[Output, Form()] = "label",
    model: Annotated[
        str | None, Form(max_length=100, description="The latest promoted model of this name")
    ] = None,
) -> Response:
    """Predict the classes of an image with the last model a run trained, a checkpoint file
    (inside the data roots or the workdir), or the latest promoted model of a name (``model``);
    the model stays loaded for the next request.

    The image's size is read from its header and its cost checked before anything is decoded
    (core.image_cost): the model reads it scaled down when its longest side, its pixels or its
    memory would be over ``predict_max_side``, ``predict_max_input_pixels`` or
    ``predict_request_bytes`` (the ``X-Model-Input`` header and the shares say at what size; the
    label has the image's size), and an image that cannot fit is a 413. At most
    ``predict_concurrency`` predictions run at once and together within
    ``predict_memory_bytes`` (FastAPI runs this in its thread pool, off the event loop); up to
    ``predict_queue`` others wait up to ``predict_wait_s`` for a slot and their memory, and more
    are turned away at once (503 with Retry-After).
    """
    settings = service.settings
    data = image.file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"upload over {settings.max_upload_bytes} bytes"
        )
    path = _checkpoint_path(service, run_id, checkpoint, model)
    name = image.filename or "upload"
    size = _check_header(data, name, settings.max_image_pixels)
    if not service.predict_waiting.acquire(blocking=False):
        raise _busy(f"{settings.predict_queue} predictions wait already")
    try:
        loaded = _model(service, path)
        plan = _plan(service, size, loaded, name)
        _reserve(service, plan.bytes)
    finally:
        service.predict_waiting.release()
    try:
        return _predict(service, _decode(data, name, size), path, loaded, plan, output)
    finally:
        service.predict_budget.release(plan.bytes)
        service.predict_slots.release()


def _model(service: Service, path: Path) -> LoadedModel:
    try:
        return service.models.get(path, service.settings.predict_device)
    except CheckpointError as exc:
        raise _unprocessable("checkpoint", str(exc)) from exc


def _plan(service: Service, size: tuple[int, int], loaded: LoadedModel, name: str) -> ImagePlan:
    """The model input and memory of this image (413 when it cannot fit), from its header."""
    settings = service.settings
    try:
        return plan_image(
            *size,
            num_classes=loaded.label_space.num_classes,
            activation_bytes_per_pixel=loaded.activation_bytes_per_pixel,
            max_side=settings.predict_max_side,
            max_input_pixels=settings.predict_max_input_pixels,
            max_bytes=settings.predict_request_bytes,
            min_side=MIN_SIDE,
            name=name,
        )
    except ImageTooLargeError as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from exc


def _reserve(service: Service, n_bytes: int) -> None:
    """A prediction slot and ``n_bytes`` of the shared memory budget, each waited for up to
    ``predict_wait_s`` in all; 503 when they do not come free."""
    settings = service.settings
    deadline = time.monotonic() + settings.predict_wait_s
    if not service.predict_slots.acquire(timeout=settings.predict_wait_s):
        raise _busy(f"no prediction slot came free in {settings.predict_wait_s:g} s")
    if not service.predict_budget.acquire(n_bytes, max(0.0, deadline - time.monotonic())):
        service.predict_slots.release()
        raise _busy(
            f"{n_bytes / 2**20:.0f} MiB of the {settings.predict_memory_bytes / 2**20:.0f} MiB "
            f"prediction budget did not come free in {settings.predict_wait_s:g} s"
        )


def _busy(why: str) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE, f"busy: {why}; try again", headers={"Retry-After": "5"}
    )


def _predict(
    service: Service, pixels, path: Path, loaded: LoadedModel, plan: ImagePlan, output: Output
) -> Response:
    input_size = (plan.input_height, plan.input_width)
    label = predict_label(loaded.model, pixels, input_size, service.settings.predict_device)
    # Says at what size the model read the image (smaller than the image: scaled to fit).
    headers = {"X-Model-Input": f"{plan.input_height}x{plan.input_width}"}
    if output == "shares":
        shares = PredictionShares(
            height=label.shape[0],
            width=label.shape[1],
            input_height=plan.input_height,
            input_width=plan.input_width,
            resized=plan.resized,
            checkpoint=str(path),
            classes=class_shares(label, loaded.label_space),
        )
        return Response(shares.model_dump_json(), media_type="application/json", headers=headers)
    space = loaded.label_space
    png = label_png(label) if output == "label" else overlay_png(pixels, label, space)
    return Response(png, media_type="image/png", headers=headers)


def _check_header(data: bytes, name: str, max_pixels: int) -> tuple[int, int]:
    """413 for an image whose header declares more than ``max_pixels``, 400 for one that is not
    an image or is too small: decided before any pixel is decoded."""
    from core.io import image_size

    try:
        height, width = image_size(data, name)
    except ImageTooLargeError as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from exc
    except CorruptImageError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    if height * width > max_pixels:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{name}: {height}x{width} is over {max_pixels} pixels",
        )
    if min(height, width) < MIN_SIDE:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"{name}: {height}x{width} is under {MIN_SIDE} pixels"
        )
    return height, width


def _decode(data: bytes, name: str, size: tuple[int, int]):
    from core.io import decode_image

    try:
        pixels = decode_image(data, name)
    except CorruptImageError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    if pixels.shape[:2] != size:  # the checks were made on the header's size
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"{name}: decodes to {pixels.shape[0]}x{pixels.shape[1]}, not its header's "
            f"{size[0]}x{size[1]}",
        )
    return pixels


def _checkpoint_path(
    service: Service, run_id: str | None, checkpoint: str | None, model: str | None = None
) -> Path:
    if sum(value is not None for value in (run_id, checkpoint, model)) != 1:
        raise _unprocessable("run_id", "give one of run_id, checkpoint or model")
    if model is not None:  # the latest promoted model of that name (services.registry)
        from services.registry import latest_checkpoint

        checkpoint = str(latest_checkpoint(service, model))
    if checkpoint is not None:
        try:
            return check_readable_path(checkpoint, service.settings.allowed_roots, "checkpoint")
        except SpecError as exc:
            raise _unprocessable("checkpoint", exc.problems[0][1]) from exc
    with service.db.session() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id!r}")
        trained = [
            s.outputs["checkpoint"]
            for s in run.stages
            if s.status == SUCCEEDED and "checkpoint" in s.outputs
        ]
    if not trained:
        raise HTTPException(status.HTTP_409_CONFLICT, f"run {run_id!r} has no trained model yet")
    # Checked again now: its folder or file may have been swapped for a link since the run.
    try:
        path = check_confined(trained[-1], service.settings.allowed_roots)
    except PathNotAllowedError as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"run {run_id!r}: its model is refused: {exc}"
        ) from exc
    if not path.is_file():
        raise HTTPException(status.HTTP_409_CONFLICT, f"run {run_id!r} has no trained model yet")
    return path


def _unprocessable(field: str, message: str) -> HTTPException:
    detail = [{"loc": ["body", field], "msg": f"{field}: {message}", "type": "value_error"}]
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail)
