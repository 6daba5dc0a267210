"""Any architecture and encoder of segmentation_models_pytorch (the ``smp`` extra) as a model of
this package: ``model: smp`` with ``model_options: {arch: DeepLabV3Plus, encoder: resnet50,
encoder_weights: torchvision:resnet50.IMAGENET1K_V2}``.

The wrapper keeps the package's model contract (core.models): logits at the input's height and
width for any height and width (the input is padded to the encoder's stride and the logits cropped
back), and ``classifier``, a 1x1 conv from the decoder's features to the logits, in place of smp's
segmentation head (so ``reset_head`` finetunes on another class set). Encoder weights come from a
local file or a named source (core.weights), never from smp's own download.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from core.models.blocks import new_classifier


def smp_installed() -> bool:
    return importlib.util.find_spec("segmentation_models_pytorch") is not None


def smp_architectures() -> list[str]:
    """The architectures the installed smp offers (empty without smp)."""
    if not smp_installed():
        return []
    import segmentation_models_pytorch as smp

    return sorted(cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values())


def smp_encoders() -> list[str]:
    """The encoders the installed smp offers by name (empty without smp)."""
    if not smp_installed():
        return []
    from segmentation_models_pytorch.encoders import get_encoder_names

    return sorted(get_encoder_names())


class SmpSegmenter(nn.Module):
    """An smp model's encoder and decoder with this package's 1x1 ``classifier`` and resizing."""

    def __init__(self, net: nn.Module, decoder_channels: int, num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.stride = int(getattr(net.encoder, "output_stride", 32))
        self.classifier = new_classifier(decoder_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.stride, -width % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        features = self.net.decoder(self.net.encoder(x))
        logits = self.classifier(features)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :height, :width]


def smp_model(
    num_classes: int,
    arch: str = "Unet",
    encoder: str = "resnet34",
    encoder_weights: str | None = None,
) -> SmpSegmenter:
    """An smp architecture with the named encoder, from random weights or ``encoder_weights``.

    Args:
        num_classes: Logit channels.
        arch: An smp architecture (``Unet``, ``FPN``, ``DeepLabV3Plus``, ``UPerNet``, ``Segformer``,
            ...; ``selftrain models`` lists them).
        encoder: An smp encoder name (``resnet50``, ``mit_b0``, ``tu-<timm name>``, ...).
        encoder_weights: A state dict file for the encoder, or named weights
            (``torchvision:resnet50.IMAGENET1K_V2``, ``timm:resnet50.a1_in1k``, core.weights)
            whose layout the encoder has (smp's ResNet encoders have torchvision's, its ``tu-``
            encoders timm's).

    Raises:
        ConfigError: smp is not installed, or it does not know ``arch`` or ``encoder``.
        CheckpointError: ``encoder_weights`` is missing or does not match the encoder.
    """
    if not smp_installed():
        raise ConfigError("model 'smp' needs segmentation_models_pytorch: pip install -e '.[smp]'")
    import segmentation_models_pytorch as smp

    architectures = smp_architectures()
    if arch not in architectures:
        raise ConfigError(f"smp has no architecture {arch!r}; it has: {', '.join(architectures)}")
    if not encoder.startswith("tu-") and encoder not in smp_encoders():
        raise ConfigError(f"smp has no encoder {encoder!r} (`selftrain models` lists them)")
    try:
        net = smp.create_model(
            arch, encoder_name=encoder, encoder_weights=None, classes=num_classes
        )
    except (KeyError, RuntimeError, ValueError) as exc:  # e.g. a timm name timm does not know
        raise ConfigError(f"smp cannot build {arch} with encoder {encoder!r}: {exc}") from exc
    decoder_channels = _head_conv(net).in_channels
    net.segmentation_head = nn.Identity()
    if encoder_weights is not None:
        from core.models.resnet import load_backbone_weights

        # smp's "tu-" encoders hold the timm model (features only) as `model`.
        target = net.encoder.model if encoder.startswith("tu-") else net.encoder
        load_backbone_weights(target, encoder_weights)
    return SmpSegmenter(net, decoder_channels, num_classes)


def _head_conv(net: nn.Module) -> nn.Conv2d:
    """The conv of smp's segmentation head (the decoder's output channels are its input)."""
    conv = next((m for m in net.segmentation_head.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ConfigError(f"{type(net).__name__}: no conv in its segmentation head")
    return conv
