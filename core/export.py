"""Export a checkpoint's model to ONNX, checked against PyTorch with ONNX Runtime before it is kept.

The exported graph takes what a camera pipeline has, ``image``: uint8 RGB ``(N, H, W, 3)``, with
any batch size, height and width, and returns ``logits``: float32 ``(N, C, H, W)`` (the ImageNet
normalization is inside the graph; the argmax over C is the class, the checkpoint's label space
names them). The file is written only when ONNX Runtime's argmax agrees with PyTorch's on at least
``min_agreement`` of the check images' pixels.

Needs the ``export`` extra (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from core.checkpoint import load_model
from core.errors import SelfTrainError
from core.transforms import normalize_batch

OPSET = 18
MIN_AGREEMENT = 0.999
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


class ExportError(SelfTrainError):
    """The model could not be exported, or the exported file disagrees with PyTorch."""


class Deployable(nn.Module):
    """A segmentation model as it is exported: uint8 RGB ``(N, H, W, 3)`` in, logits out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(normalize_batch(image))


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    images: Sequence[np.ndarray],
    opset: int = OPSET,
    min_agreement: float = MIN_AGREEMENT,
    size: tuple[int, int] | None = None,
) -> dict:
    """Export the checkpoint's model to ``out`` and check it: batch, height and width dynamic, or
    with ``size`` a fixed (height, width) (models that pool to fixed bins, like Fast-SCNN's and
    PSPNet's pyramid pooling, need one: ONNX has no adaptive pooling of a size only known later).

    Args:
        checkpoint: A checkpoint (core.checkpoint).
        out: The ``.onnx`` file to write.
        images: Check images, uint8 RGB ``(H, W, 3)``, one size or several (see ``compare``).
        opset: The ONNX opset.
        min_agreement: Smallest fraction of pixels on which both argmaxes must agree.
        size: A fixed input (height, width); the check images are resized to it.

    Returns:
        What was checked: opset, images, pixels, ``max_abs_logit_diff``, ``argmax_agreement``,
        and images per second of PyTorch and of ONNX Runtime on this machine's CPU.

    Raises:
        ExportError: Export failed, or the agreement is below ``min_agreement`` (nothing is
            written then).
        CheckpointError: The checkpoint cannot be loaded.
    """
    if not images:
        raise ExportError("export needs at least one check image")
    out = Path(out)
    if size is not None:
        images = [cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR) for image in images]
    model, label_space, checkpoint_dict = load_model(checkpoint)
    deployable = Deployable(model).eval()
    partial = out.with_name(out.name + ".partial")
    _export_explained(deployable, images[0], partial, opset, size, checkpoint_dict["model_name"])
    try:
        check = compare(deployable, partial, images)
    except Exception:
        partial.unlink(missing_ok=True)
        raise
    if check["argmax_agreement"] < min_agreement:
        partial.unlink(missing_ok=True)
        raise ExportError(
            f"ONNX Runtime's classes agree with PyTorch's on {100 * check['argmax_agreement']:.3f} "
            f"% of the pixels, below {100 * min_agreement:.1f} %; nothing written to {out}"
        )
    partial.replace(out)
    hw = "H, W" if size is None else f"{size[0]}, {size[1]}"
    return {
        "out": str(out),
        "format": "onnx",
        "opset": opset,
        "input": f"{INPUT_NAME}: uint8 RGB (N, {hw}, 3)",
        "output": f"{OUTPUT_NAME}: float32 (N, {label_space.num_classes}, {hw})",
        "classes": list(label_space.names),
        **check,
    }


def _export_explained(
    model: nn.Module,
    example: np.ndarray,
    path: Path,
    opset: int,
    size: tuple[int, int] | None,
    model_name: str,
) -> None:
    """``_export``, saying what to do when a model cannot have a free height and width."""
    try:
        _export(model, example, path, opset, dynamic_size=size is None)
    except ExportError as exc:
        if size is None and "adaptive_avg_pool2d" in str(exc):
            raise ExportError(
                f"{model_name} pools to fixed bins, which ONNX cannot do for a height and width "
                "only known at run time: export it for one input size (size=(H, W); selftrain "
                "export --size HxW)"
            ) from exc
        raise


def _export(
    model: nn.Module, example: np.ndarray, path: Path, opset: int, dynamic_size: bool
) -> None:
    """Dynamic height and width: the TorchScript exporter, which maps F.interpolate to one ONNX
    Resize that follows the input (torch 2.13's dynamo exporter decomposes it into gathers fixed
    to the example's size). A fixed size: the dynamo exporter, which decomposes adaptive pooling
    into fixed windows (the TorchScript one refuses bins that do not divide the feature map)."""
    batch = torch.from_numpy(np.ascontiguousarray(example[None]))
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    try:
        # The exporters' progress lines go to stderr: stdout is the caller's (one JSON line).
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            # The normalization's mean and std are constants of the graph, as the tracer warns.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            if dynamic_size:
                axes = {0: "batch", 1: "height", 2: "width"}
                torch.onnx.export(
                    model,
                    (batch,),
                    str(path),
                    dynamo=False,
                    dynamic_axes={
                        INPUT_NAME: axes,
                        OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                    },
                    **names,
                )
            else:
                dims = ({0: torch.export.Dim.DYNAMIC},)
                torch.onnx.export(
                    model,
                    (batch,),
                    str(path),
                    dynamo=True,
                    dynamic_shapes=dims,
                    external_data=False,
                    **names,
                )
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the export extra (pip install onnx): {exc}") from exc
    except Exception as exc:  # the exporter raises many kinds; say which model and why
        path.unlink(missing_ok=True)
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {first_line}") from exc


def compare(model: nn.Module, path: Path, images: Sequence[np.ndarray]) -> dict:
    """Run ``images`` through ``model`` and through ONNX Runtime on ``path``, each alone (batch 1)
    and, when they share a size, all together; the largest logit difference, the fraction of
    pixels with the same argmax, and each side's images per second."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ExportError(
            f"checking the export needs onnxruntime (the export extra): {exc}"
        ) from exc
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batches = [image[None] for image in images]
    if len({image.shape for image in images}) == 1 and len(images) > 1:
        batches.append(np.stack(images))
    max_diff, agree, pixels = 0.0, 0, 0
    torch_s = onnx_s = 0.0
    for batch in batches:
        batch = np.ascontiguousarray(batch)
        start = time.perf_counter()
        with torch.inference_mode():
            expected = model(torch.from_numpy(batch)).numpy()
        torch_s += time.perf_counter() - start
        start = time.perf_counter()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        onnx_s += time.perf_counter() - start
        if got.shape != expected.shape:
            raise ExportError(f"ONNX Runtime gave logits {got.shape}, PyTorch {expected.shape}")
        max_diff = max(max_diff, float(np.abs(got - expected).max()))
        agree += int((got.argmax(1) == expected.argmax(1)).sum())
        pixels += expected.shape[0] * expected.shape[2] * expected.shape[3]
    n_images = sum(len(batch) for batch in batches)
    return {
        "images": len(images),
        "sizes": sorted({f"{image.shape[0]}x{image.shape[1]}" for image in images}),
        "pixels": pixels,
        "max_abs_logit_diff": max_diff,
        "argmax_agreement": agree / pixels,
        "torch_images_per_s": round(n_images / torch_s, 2),
        "onnxruntime_images_per_s": round(n_images / onnx_s, 2),
    }
