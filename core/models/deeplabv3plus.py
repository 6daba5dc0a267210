"""DeepLabV3+ (Chen et al. 2018) on ResNet-50, ResNet-101 and ResNeXt-50 32x4d backbones.

ASPP runs on the ``layer4`` output; the decoder fuses its upsampled output with the stride-4
``layer1`` features, refines with two 3x3 convs, and ``classifier`` maps to class logits, which
``forward`` upsamples to the input size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.models.blocks import (
    ConvBNReLU,
    GlobalPoolBranch,
    check_output_stride,
    init_weights,
    new_classifier,
    upsample,
)
from core.models.resnet import ResNet, resnet50, resnet101, resnext50_32x4d

# Atrous rates for output stride 16; output stride 8 doubles them to keep the same field of view.
_ASPP_RATES_OS16 = (6, 12, 18)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 conv, three dilated 3x3 convs and image pooling."""

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_channels, out_channels, kernel_size=1)]
            + [ConvBNReLU(in_channels, out_channels, dilation=r) for r in rates]
            + [GlobalPoolBranch(in_channels, out_channels)]
        )
        self.project = nn.Sequential(
            ConvBNReLU(len(self.branches) * out_channels, out_channels, kernel_size=1),
            nn.Dropout(0.1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ segmenter.

    Attributes:
        backbone: The ResNet feature extractor (ImageNet weights go here).
        aspp: ASPP on the ``layer4`` features.
        reduce_low_level: 1x1 conv shrinking the ``layer1`` features to 48 channels.
        decoder: Two 3x3 conv-BN-ReLU on the fused features.
        classifier: The last layer, a 1x1 conv to ``num_classes`` logits.
    """

    def __init__(self, backbone: ResNet, num_classes: int) -> None:
        super().__init__()
        check_output_stride(backbone.output_stride)
        scale = 16 // backbone.output_stride
        low_channels, high_channels = backbone.stage_channels[0], backbone.stage_channels[3]
        self.backbone = backbone
        self.aspp = ASPP(high_channels, 256, tuple(r * scale for r in _ASPP_RATES_OS16))
        self.reduce_low_level = ConvBNReLU(low_channels, 48, kernel_size=1)
        self.decoder = nn.Sequential(ConvBNReLU(256 + 48, 256), ConvBNReLU(256, 256))
        self.classifier = new_classifier(256, num_classes)
        init_weights(self.aspp)
        init_weights(self.reduce_low_level)
        init_weights(self.decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns logits (N, num_classes, H, W) at the input's size."""
        low, _, _, high = self.backbone(x)
        high = upsample(self.aspp(high), low.shape[-2:])
        fused = torch.cat([high, self.reduce_low_level(low)], dim=1)
        return upsample(self.classifier(self.decoder(fused)), x.shape[-2:])


def deeplabv3plus_resnet50(
    num_classes: int, output_stride: int = 16, backbone_weights: str | Path | None = None
) -> DeepLabV3Plus:
    """DeepLabV3+ on ResNet-50 (about 40M parameters for 19 classes).

    Args:
        num_classes: Number of output classes.
        output_stride: 8 or 16.
        backbone_weights: A torchvision ``resnet50`` state dict file with ImageNet weights.
    """
    check_output_stride(output_stride)
    return DeepLabV3Plus(resnet50(output_stride, backbone_weights), num_classes)


def deeplabv3plus_resnet101(
    num_classes: int, output_stride: int = 16, backbone_weights: str | Path | None = None
) -> DeepLabV3Plus:
    """DeepLabV3+ on ResNet-101; ``backbone_weights`` is a torchvision ``resnet101`` file."""
    check_output_stride(output_stride)
    return DeepLabV3Plus(resnet101(output_stride, backbone_weights), num_classes)


def deeplabv3plus_resnext50(
    num_classes: int, output_stride: int = 16, backbone_weights: str | Path | None = None
) -> DeepLabV3Plus:
    """DeepLabV3+ on ResNeXt-50 32x4d; ``backbone_weights`` is a torchvision
    ``resnext50_32x4d`` file."""
    check_output_stride(output_stride)
    return DeepLabV3Plus(resnext50_32x4d(output_stride, backbone_weights), num_classes)
