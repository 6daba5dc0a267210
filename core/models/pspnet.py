"""PSPNet (Zhao et al. 2017) on ResNet-101: pyramid pooling over 1x1, 2x2, 3x3 and 6x6 grids.

No auxiliary head: ``forward`` always returns one logits tensor, as every model here does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.models.blocks import (
    ConvBNReLU,
    PyramidPooling,
    check_output_stride,
    init_weights,
    new_classifier,
    upsample,
)
from core.models.resnet import ResNet, resnet101


class PSPNet(nn.Module):
    """PSPNet segmenter.

    Attributes:
        backbone: The ResNet feature extractor (ImageNet weights go here).
        pyramid: Pyramid pooling on the ``layer4`` features (2048 -> 4096 channels).
        head: 3x3 conv-BN-ReLU to 512 channels and dropout.
        classifier: The last layer, a 1x1 conv to ``num_classes`` logits.
    """

    def __init__(self, backbone: ResNet, num_classes: int) -> None:
        super().__init__()
        check_output_stride(backbone.output_stride)
        in_channels = backbone.stage_channels[3]
        self.backbone = backbone
        self.pyramid = PyramidPooling(in_channels, in_channels // 4, bins=(1, 2, 3, 6))
        self.head = nn.Sequential(ConvBNReLU(self.pyramid.out_channels, 512), nn.Dropout(0.1))
        self.classifier = new_classifier(512, num_classes)
        init_weights(self.pyramid)
        init_weights(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns logits (N, num_classes, H, W) at the input's size."""
        features = self.backbone(x)[-1]
        logits = self.classifier(self.head(self.pyramid(features)))
        return upsample(logits, x.shape[-2:])


def pspnet_resnet101(
    num_classes: int, output_stride: int = 8, backbone_weights: str | Path | None = None
) -> PSPNet:
    """PSPNet on ResNet-101.

    Args:
        num_classes: Number of output classes.
        output_stride: 8 (the paper's) or 16.
        backbone_weights: A torchvision ``resnet101`` state dict file with ImageNet weights.
    """
    check_output_stride(output_stride)
    return PSPNet(resnet101(output_stride, backbone_weights), num_classes)
