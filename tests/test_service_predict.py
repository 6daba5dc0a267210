"""``POST /api/predict`` with a real checkpoint of the "small" model: label PNG, overlay, shares,
the model cache, and the 400 / 409 / 413 / 422 answers."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_support import AUTH, FakeBackend, make_settings, write_checkpoint

from core.io import decode_image
from services.app import create_app
from services.artifacts import encode_png


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    settings = make_settings(root, max_upload_bytes=200_000, max_image_pixels=300 * 300)
    checkpoint = write_checkpoint(settings.data_roots[0] / "models" / "small.pt")
    with TestClient(create_app(settings, FakeBackend(), orchestrate=False)) as client:
        yield client, str(checkpoint)


def _image(height: int = 40, width: int = 72) -> bytes:
    rng = np.random.default_rng(0)
    return encode_png(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _predict(client, data: bytes, name: str = "x.png", **form):
    return client.post("/api/predict", files={"image": (name, data)}, data=form, headers=AUTH)


def test_label_png_has_the_image_size_and_the_model_is_loaded_once(env):
    client, checkpoint = env
    models = client.app.state.service.models
    loads = models.loads
    response = _predict(client, _image(), checkpoint=checkpoint)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    label = decode_image(response.content)  # gray PNG read back as RGB: all channels equal
    assert label.shape == (40, 72, 3)
    assert (label < 19).all()
    assert _predict(client, _image(), checkpoint=checkpoint).content == response.content
    assert models.loads == loads + 1


def test_overlay_and_shares(env):
    client, checkpoint = env
    overlay = _predict(client, _image(33, 50), checkpoint=checkpoint, output="overlay")
    assert overlay.status_code == 200 and decode_image(overlay.content).shape == (33, 50, 3)
    shares = _predict(client, _image(33, 50), checkpoint=checkpoint, output="shares")
    assert shares.headers["content-type"] == "application/json"
    body = json.loads(shares.content)
    assert (body["height"], body["width"]) == (33, 50)
    assert [c["name"] for c in body["classes"]][:3] == ["road", "sidewalk", "building"]
    assert sum(c["share"] for c in body["classes"]) == pytest.approx(1.0)


def test_bad_uploads_and_requests(env):
    client, checkpoint = env
    corrupt = _predict(client, b"\x89PNG\r\n\x1a\n truncated", checkpoint=checkpoint)
    assert corrupt.status_code == 400 and "x.png" in corrupt.json()["detail"]
    assert _predict(client, b"", checkpoint=checkpoint).status_code == 400
    # Over the limit plus room for the multipart framing: refused before the body is read.
    assert _predict(client, b"\0" * 300_000, checkpoint=checkpoint).status_code == 413
    # Within the framing room but over the limit itself: refused by the endpoint.
    assert _predict(client, b"\0" * 210_000, checkpoint=checkpoint).status_code == 413
    too_many_pixels = _predict(client, _image(301, 300), checkpoint=checkpoint)
    assert too_many_pixels.status_code == 413
    assert _predict(client, _image()).status_code == 422  # neither run_id nor checkpoint
    outside = _predict(client, _image(), checkpoint="/etc/passwd")
    assert outside.status_code == 422 and "checkpoint: " in outside.text
    not_a_model = _predict(client, _image(), checkpoint=__file__)
    assert not_a_model.status_code == 422
    assert _predict(client, _image(), run_id="nope").status_code == 404


def test_predict_with_a_run_that_has_no_model_yet_is_409(env, tmp_path):
    client, _ = env
    service = client.app.state.service
    from services.db import Run

    with service.db.session() as session:
        session.add(Run(id="fresh", name="fresh", spec={}, output=str(tmp_path)))
    assert _predict(client, _image(), run_id="fresh").status_code == 409


def _png_header_only(height: int, width: int) -> bytes:
    """A PNG signature and an IHDR chunk declaring ``height x width`` RGB pixels, then IEND: a few
    dozen bytes that a decoder would try to turn into ``3 x height x width`` bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_refused_from_its_header(env, monkeypatch):
    client, checkpoint = env

    def no_decoding(*args, **kwargs):
        raise AssertionError("an oversized image must not be decoded")

    monkeypatch.setattr("core.io.decode_image", no_decoding)
    # 10000 x 10000 (300 MB decoded) declared in 57 bytes: refused by size, never decoded.
    bomb = _predict(client, _png_header_only(10_000, 10_000), checkpoint=checkpoint)
    assert bomb.status_code == 413 and "10000x10000 is over 90000 pixels" in bomb.text
    # Past Pillow's own limit (about 179 million pixels) the header is refused as such.
    huge = _predict(client, _png_header_only(60_000, 60_000), checkpoint=checkpoint)
    assert huge.status_code == 413 and "declares too many pixels" in huge.text
    assert _predict(client, b"not an image", checkpoint=checkpoint).status_code == 400


def test_predictions_beyond_the_concurrency_limit_wait_then_get_503(env):
    client, checkpoint = env
    service = client.app.state.service
    slots = service.settings.predict_concurrency
    held = [service.predict_slots.acquire(timeout=1) for _ in range(slots)]
    assert all(held)
    waited = service.settings.predict_wait_s
    service.settings.predict_wait_s = 0.2
    try:
        busy = _predict(client, _image(), checkpoint=checkpoint)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
        assert "busy: no prediction slot came free in 0.2 s; try again" in busy.text
        # With the waiting room full too, a request is turned away without waiting.
        queue = service.settings.predict_queue
        assert all(service.predict_waiting.acquire(timeout=1) for _ in range(queue))
        try:
            full = _predict(client, _image(), checkpoint=checkpoint)
            assert full.status_code == 503 and f"{queue} predictions wait already" in full.text
        finally:
            for _ in range(queue):
                service.predict_waiting.release()
    finally:
        service.settings.predict_wait_s = waited
        for _ in range(slots):
            service.predict_slots.release()
    assert _predict(client, _image(), checkpoint=checkpoint).status_code == 200
