"""``POST /api/predict``: label an uploaded image with a run's model or a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile, status

from core.errors import CheckpointError, CorruptImageError, ImageTooLargeError
from core.plan import SpecError
from services.db import SUCCEEDED, Run
from services.deps import Service, ServiceDep
from services.predict import class_shares, label_png, overlay_png, predict_label
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
        404: {"description": "No such run"},
        409: {"description": "The run has no trained model yet"},
        413: {"description": "Upload too large, or an image header declaring too many pixels"},
        422: {"description": "Neither or both of run_id and checkpoint, or a bad checkpoint"},
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
) -> Response:
    """Predict the classes of an image with the last model a run trained, or a checkpoint file
    (inside the data roots or the workdir); the model stays loaded for the next request.

    The image's size is read from its header and checked before anything is decoded; at most
    ``predict_concurrency`` predictions run at once (FastAPI runs this in its thread pool, off the
    event loop), up to ``predict_queue`` others wait up to ``predict_wait_s`` for a slot, and more
    are turned away at once (503 with Retry-After).
    """
    settings = service.settings
    data = image.file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"upload over {settings.max_upload_bytes} bytes"
        )
    path = _checkpoint_path(service, run_id, checkpoint)
    name = image.filename or "upload"
    size = _check_header(data, name, settings.max_image_pixels)
    if not service.predict_waiting.acquire(blocking=False):
        raise _busy(f"{settings.predict_queue} predictions wait already")
    try:
        got_slot = service.predict_slots.acquire(timeout=settings.predict_wait_s)
    finally:
        service.predict_waiting.release()
    if not got_slot:
        raise _busy(f"no prediction slot came free in {settings.predict_wait_s:g} s")
    try:
        return _predict(service, _decode(data, name, size), path, output)
    finally:
        service.predict_slots.release()


def _busy(why: str) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE, f"busy: {why}; try again", headers={"Retry-After": "5"}
    )


def _predict(service: Service, pixels, path: Path, output: Output) -> Response:
    settings = service.settings
    try:
        model, label_space = service.models.get(path, settings.predict_device)
    except CheckpointError as exc:
        raise _unprocessable("checkpoint", str(exc)) from exc
    label = predict_label(model, pixels, settings.predict_device)
    if output == "shares":
        shares = PredictionShares(
            height=label.shape[0],
            width=label.shape[1],
            checkpoint=str(path),
            classes=class_shares(label, label_space),
        )
        return Response(shares.model_dump_json(), media_type="application/json")
    png = label_png(label) if output == "label" else overlay_png(pixels, label, label_space)
    return Response(png, media_type="image/png")


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


def _checkpoint_path(service: Service, run_id: str | None, checkpoint: str | None) -> Path:
    if (run_id is None) == (checkpoint is None):
        raise _unprocessable("run_id", "give either run_id or checkpoint")
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
    if not trained or not Path(trained[-1]).is_file():
        raise HTTPException(status.HTTP_409_CONFLICT, f"run {run_id!r} has no trained model yet")
    return Path(trained[-1])


def _unprocessable(field: str, message: str) -> HTTPException:
    detail = [{"loc": ["body", field], "msg": f"{field}: {message}", "type": "value_error"}]
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail)
