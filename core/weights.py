"""Pretrained weights by name: ``torchvision:<arch>.<WEIGHTS>``, e.g.
``torchvision:resnext50_32x4d.IMAGENET1K_V2`` (the ImageNet backbones torchvision publishes for
the ResNets our models use), ``timm:<model>.<tag>``, e.g. ``timm:resnet50.a1_in1k`` (any model timm
publishes on the Hugging Face hub, as ``model.safetensors``), or a local file as before.

A name is downloaded once into the cache folder (``SELFTRAIN_WEIGHTS_DIR``, default
``~/.cache/selftrain/weights``; on a cluster give it a folder every node mounts) under
torchvision's own file name, which ends with the first hex digits of the file's SHA-256: a download
whose hash differs is refused and nothing is kept. A file placed there by hand is used as it is
(how machines without network get the weights; the error says which file and where). The base URL
can point at a mirror (``SELFTRAIN_TORCHVISION_URL``).

timm weights are kept as ``timm/<model>.<tag>/model.safetensors`` in the same folder; the hub
names each file's SHA-256 (its LFS etag), which the download must match. ``SELFTRAIN_HF_URL``
points at a hub mirror.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import CheckpointError

PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"
HF_URL_ENV = "SELFTRAIN_HF_URL"
HF_URL = "https://huggingface.co"
TIMM_FILE = "model.safetensors"
CACHE_ENV = "SELFTRAIN_WEIGHTS_DIR"
URL_ENV = "SELFTRAIN_TORCHVISION_URL"
TORCHVISION_URL = "https://download.pytorch.org/models/"
# torchvision's ImageNet-1k files of the backbones our models build (core/models/resnet.py).
TORCHVISION_FILES = {
    "resnet50.IMAGENET1K_V1": "resnet50-0676ba61.pth",
    "resnet50.IMAGENET1K_V2": "resnet50-11ad3fa6.pth",
    "resnet101.IMAGENET1K_V1": "resnet101-63fe2227.pth",
    "resnet101.IMAGENET1K_V2": "resnet101-cd907fc2.pth",
    "resnext50_32x4d.IMAGENET1K_V1": "resnext50_32x4d-7cdf4587.pth",
    "resnext50_32x4d.IMAGENET1K_V2": "resnext50_32x4d-1a0047aa.pth",
}


# Model options that name pretrained weights: a file (a path, confined like every other path of a
# run) or a name (``torchvision:...``, ``timm:...``).
WEIGHTS_OPTIONS = ("backbone_weights", "encoder_weights")


def weights_files(model_options: dict) -> list[tuple[str, str]]:
    """``(option, path)`` of each option in ``model_options`` that names a weights file (not a
    weights name)."""
    return [
        (option, value)
        for option in WEIGHTS_OPTIONS
        if isinstance(value := model_options.get(option), str) and not is_weights_name(value)
    ]


def is_weights_name(value: str | Path) -> bool:
    """Whether ``value`` names weights (``torchvision:...``, ``timm:...``) rather than a file."""
    return str(value).startswith((PREFIX, TIMM_PREFIX))


def cache_dir() -> Path:
    """Where named weights are kept."""
    default = Path.home() / ".cache" / "selftrain" / "weights"
    return Path(os.environ.get(CACHE_ENV) or default).expanduser()


def resolve_weights(value: str | Path) -> Path:
    """The file behind ``value``: a local path as it is; a name's cached file, downloaded first
    when it is not in the cache.

    Raises:
        CheckpointError: An unknown name, or a download that failed or whose hash is wrong (the
            message says which file to place where).
    """
    if not is_weights_name(value):
        return Path(value)
    if str(value).startswith(TIMM_PREFIX):
        return _timm_weights(str(value)[len(TIMM_PREFIX) :])
    name = str(value)[len(PREFIX) :]
    if name not in TORCHVISION_FILES:
        known = ", ".join(PREFIX + k for k in TORCHVISION_FILES)
        raise CheckpointError(value, f"unknown pretrained weights; known: {known}")
    file_name = TORCHVISION_FILES[name]
    path = cache_dir() / file_name
    if path.is_file():
        return path
    url = os.environ.get(URL_ENV, TORCHVISION_URL).rstrip("/") + "/" + file_name
    _download(url, path, file_name.rsplit("-", 1)[1].split(".")[0])
    return path


def _timm_weights(name: str) -> Path:
    """timm's ``model.safetensors`` of ``name`` (``<model>.<tag>``), from the cache or the hub."""
    if not name or "/" in name or name.startswith("."):
        raise CheckpointError(
            f"timm:{name}", "expected timm:<model>.<tag>, e.g. timm:resnet50.a1_in1k"
        )
    path = cache_dir() / "timm" / name / TIMM_FILE
    if path.is_file():
        return path
    url = f"{os.environ.get(HF_URL_ENV, HF_URL).rstrip('/')}/timm/{name}/resolve/main/{TIMM_FILE}"
    _download(url, path, _hub_sha256(url, path))
    return path


def _hub_sha256(url: str, path: Path) -> str:
    """The SHA-256 the hub gives for a file (the LFS etag of its HEAD answer)."""
    import urllib.request

    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (http(s) only)
            etag = answer.headers.get("X-Linked-Etag") or answer.headers.get("ETag") or ""
    except OSError as exc:
        raise CheckpointError(
            path,
            f"cannot reach {url} ({type(exc).__name__}: {exc}); on a machine without network, "
            f"download that file elsewhere and place it at {path}",
        ) from exc
    digest = etag.strip('"').removeprefix("W/").strip('"')
    if len(digest) != 64:
        raise CheckpointError(path, f"{url}: the hub gave no SHA-256 to check the file against")
    return digest


def _download(url: str, path: Path, hash_prefix: str) -> None:
    import torch.hub

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Written beside the target and moved into place only once its hash matched.
        torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix, progress=False)
    except (OSError, RuntimeError, ValueError) as exc:
        path.unlink(missing_ok=True)
        raise CheckpointError(
            path,
            f"cannot download {url} ({type(exc).__name__}: {exc}); on a machine without network, "
            f"download that file elsewhere and place it at {path}",
        ) from exc
