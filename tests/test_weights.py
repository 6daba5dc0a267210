"""Pretrained weights by name (core.weights): read from the cache folder with no network, equal to
the file tensor by tensor; a wrong layout is refused naming the keys; a name that is not in the
cache and cannot be downloaded says which file to place where; a download with the wrong hash is
refused and leaves nothing behind."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch

from core.errors import CheckpointError
from core.models import build_model, resnet50, resnet101
from core.weights import TORCHVISION_FILES, resolve_weights


def save_torchvision_layout(backbone: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict: the backbone's keys plus the ImageNet classifier."""
    state = dict(backbone.state_dict())
    for key, value in state.items():  # BatchNorm statistics that a round trip must keep too
        if key.endswith(("running_mean", "running_var")):
            value.copy_(torch.rand_like(value) + 0.5)
    state["fc.weight"] = torch.randn(1000, 2048)
    state["fc.bias"] = torch.randn(1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "weights"
    monkeypatch.setenv("SELFTRAIN_WEIGHTS_DIR", str(folder))
    # Nothing listens on port 9 here: a download fails at once, as on a machine without network.
    monkeypatch.setenv("SELFTRAIN_TORCHVISION_URL", "http://127.0.0.1:9/models")
    return folder


def test_named_weights_load_from_the_cache_tensor_by_tensor(cache):
    torch.manual_seed(0)
    saved = save_torchvision_layout(resnet50(), cache / "resnet50-11ad3fa6.pth")
    torch.manual_seed(1)
    name = "torchvision:resnet50.IMAGENET1K_V2"
    model = build_model("deeplabv3plus_resnet50", num_classes=19, backbone_weights=name)
    loaded = model.backbone.state_dict()
    assert set(loaded) == {k for k in saved if not k.startswith("fc.")}
    for key, value in loaded.items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0, msg=key)


def test_a_file_of_another_layout_is_refused_with_the_missing_keys(cache):
    # A ResNet-101 file where the ResNet-50 one belongs: layer3 has 23 blocks, not 6.
    save_torchvision_layout(resnet101(), cache / "resnet50-0676ba61.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys \(layer3\.6\.") as error:
        build_model(
            "deeplabv3plus_resnet50", 19, backbone_weights="torchvision:resnet50.IMAGENET1K_V1"
        )
    assert "resnet50-0676ba61.pth" in str(error.value)


def test_offline_the_error_says_which_file_to_place_where(cache):
    with pytest.raises(CheckpointError) as error:
        resolve_weights("torchvision:resnext50_32x4d.IMAGENET1K_V2")
    message = str(error.value)
    assert "cannot download http://127.0.0.1:9/models/resnext50_32x4d-1a0047aa.pth" in message
    assert f"place it at {cache / 'resnext50_32x4d-1a0047aa.pth'}" in message
    assert not (cache / "resnext50_32x4d-1a0047aa.pth").exists()
    with pytest.raises(CheckpointError, match="unknown pretrained weights; known: torchvision:"):
        resolve_weights("torchvision:vgg16.IMAGENET1K_V1")
    assert resolve_weights("plain/file.pth") == Path("plain/file.pth")  # a path stays a path


def test_a_download_whose_hash_differs_is_refused(cache, tmp_path, monkeypatch):
    served = tmp_path / "served"
    save_torchvision_layout(resnet50(), served / TORCHVISION_FILES["resnet50.IMAGENET1K_V2"])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("SELFTRAIN_TORCHVISION_URL", f"http://127.0.0.1:{server.server_port}")
        # The file is a ResNet-50 state dict, but not torchvision's: its SHA-256 does not start
        # with the 11ad3fa6 of torchvision's name.
        with pytest.raises(CheckpointError, match='invalid hash value.*"11ad3fa6"'):
            resolve_weights("torchvision:resnet50.IMAGENET1K_V2")
    finally:
        server.shutdown()
    assert not cache.exists() or not any(cache.iterdir())
