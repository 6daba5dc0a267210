"""Segmentation models, built by name.

Every model maps a normalized float image batch (N, 3, H, W) to class logits (N, C, H, W) at the
same H, W (bilinear upsampling happens inside ``forward``), in train and eval mode alike, as one
plain tensor. Every model's last layer is ``model.classifier``, a 1x1 ``nn.Conv2d`` from features
to logits; :func:`reset_head` swaps it to finetune on another class set. The ResNet-based models
keep their feature extractor in ``model.backbone``.

Each model has a typed factory function (``deeplabv3plus_resnet50(num_classes, output_stride=16,
backbone_weights=None)``); :func:`build_model` looks the name up in ``MODELS`` and calls it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from core.errors import ConfigError, UnknownModelError
from core.models.blocks import new_classifier
from core.models.deeplabv3plus import (
    DeepLabV3Plus,
    deeplabv3plus_resnet50,
    deeplabv3plus_resnet101,
    deeplabv3plus_resnext50,
)
from core.models.fast_scnn import FastSCNN, fast_scnn
from core.models.options import WEIGHT_OPTIONS, factory_options
from core.models.pspnet import PSPNet, pspnet_resnet101
from core.models.resnet import ResNet, load_backbone_weights, resnet50, resnet101, resnext50_32x4d
from core.models.small import SmallSegNet, small
from core.models.smp import SmpSegmenter, smp_model

MODELS: dict[str, Callable[..., nn.Module]] = {
    "deeplabv3plus_resnet50": deeplabv3plus_resnet50,
    "deeplabv3plus_resnet101": deeplabv3plus_resnet101,
    "deeplabv3plus_resnext50": deeplabv3plus_resnext50,
    "pspnet_resnet101": pspnet_resnet101,
    "fast_scnn": fast_scnn,
    "small": small,
    # Any segmentation_models_pytorch architecture and encoder (the `smp` extra).
    "smp": smp_model,
}

__all__ = [
    "MODELS",
    "WEIGHT_OPTIONS",
    "DeepLabV3Plus",
    "FastSCNN",
    "PSPNet",
    "ResNet",
    "SmallSegNet",
    "SmpSegmenter",
    "build_model",
    "convert_sync_batchnorm",
    "count_parameters",
    "deeplabv3plus_resnet50",
    "deeplabv3plus_resnet101",
    "deeplabv3plus_resnext50",
    "fast_scnn",
    "list_models",
    "load_backbone_weights",
    "model_options",
    "pspnet_resnet101",
    "reset_head",
    "resnet50",
    "resnet101",
    "resnext50_32x4d",
    "small",
    "smp_model",
]


def list_models() -> list[str]:
    """Names that :func:`build_model` accepts, sorted."""
    return sorted(MODELS)


def model_options(name: str) -> list[str]:
    """The keyword options the model ``name`` takes besides ``num_classes``.

    Raises:
        UnknownModelError: ``name`` is not a known model.
    """
    if name not in MODELS:
        raise UnknownModelError(name, list(MODELS))
    return factory_options(MODELS[name])


def build_model(name: str, num_classes: int, **options: object) -> nn.Module:
    """Builds the model ``name`` with ``num_classes`` outputs.

    Args:
        name: One of :func:`list_models`.
        num_classes: Number of output classes (logit channels).
        **options: Keyword options of that model's factory, e.g. ``output_stride=8`` or
            ``backbone_weights="resnet50.pth"`` for the ResNet-based models.

    Raises:
        UnknownModelError: ``name`` is not a known model.
        ConfigError: An option the model does not take, or a value it cannot use.
        CheckpointError: ``backbone_weights`` is missing or does not match the backbone.
    """
    accepted = model_options(name)
    for option in options:
        if option not in accepted:
            raise ConfigError(
                f"model {name!r} does not take option {option!r}; "
                f"it takes: {', '.join(accepted) or 'no options'}"
            )
    return MODELS[name](num_classes, **options)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements in ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replaces every BatchNorm with SyncBatchNorm, for multi-GPU training with small batches."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def reset_head(model: nn.Module, num_classes: int) -> None:
    """Replaces ``model.classifier`` with a freshly initialized one for ``num_classes`` classes.

    Everything else keeps its weights, which is how a model trained on one label space is
    finetuned on another. The new layer lands on the old one's device and dtype.

    Raises:
        TypeError: ``model`` has no ``classifier`` 1x1 conv (not a model from this package).
    """
    old = getattr(model, "classifier", None)
    if not isinstance(old, nn.Conv2d):
        raise TypeError(f"{type(model).__name__} has no `classifier` conv to replace")
    new = new_classifier(old.in_channels, num_classes)
    model.classifier = new.to(device=old.weight.device, dtype=old.weight.dtype)
