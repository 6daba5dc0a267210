"""Fast-SCNN (Poudel et al. 2019): a real-time two-branch segmenter of about 1.1M parameters.

A shared "learning to downsample" stem (stride 8) feeds both a high-resolution skip and a global
feature extractor (stride 32, inverted residual blocks and pyramid pooling); the two are fused at
stride 8, refined, classified and upsampled to the input size. Trained from scratch (no backbone
weights).
"""

from __future__ import annotations

import torch
from torch import nn

from core.models.blocks import ConvBNReLU, PyramidPooling, init_weights, new_classifier, upsample


class DepthwiseSeparableConv(nn.Sequential):
    """A depthwise 3x3 conv-BN-ReLU followed by a pointwise 1x1 conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            ConvBNReLU(in_channels, in_channels, stride=stride, groups=in_channels),
            ConvBNReLU(in_channels, out_channels, kernel_size=1),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1, depthwise 3x3, linear 1x1 projection, maybe residual."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expansion: int = 6
    ) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.block = nn.Sequential(
            ConvBNReLU(in_channels, hidden, kernel_size=1),
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


def _stage(in_channels: int, out_channels: int, n_blocks: int, stride: int) -> nn.Sequential:
    blocks = [InvertedResidual(in_channels, out_channels, stride)]
    blocks += [InvertedResidual(out_channels, out_channels, 1) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


class FeatureFusion(nn.Module):
    """Adds the upsampled global features (via a dilated depthwise conv) to the projected skip."""

    def __init__(self, high_channels: int, low_channels: int, out_channels: int) -> None:
        super().__init__()
        self.low = nn.Sequential(
            ConvBNReLU(low_channels, low_channels, dilation=4, groups=low_channels),
            nn.Conv2d(low_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.high = nn.Sequential(
            nn.Conv2d(high_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.low(upsample(low, high.shape[-2:]))
        return self.relu(self.high(high) + low)


class FastSCNN(nn.Module):
    """Fast-SCNN segmenter.

    Attributes:
        learning_to_downsample: Stem to stride 8, 64 channels (also the high-resolution skip).
        global_features: Inverted residual stages to stride 32, 128 channels.
        pyramid: Pyramid pooling (1, 2, 3, 6) and a 1x1 conv back to 128 channels.
        fusion: Fuses the skip and the global features at stride 8.
        head: Two depthwise separable convs and dropout.
        classifier: The last layer, a 1x1 conv to ``num_classes`` logits.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.learning_to_downsample = nn.Sequential(
            ConvBNReLU(3, 32, stride=2),
            DepthwiseSeparableConv(32, 48, stride=2),
            DepthwiseSeparableConv(48, 64, stride=2),
        )
        self.global_features = nn.Sequential(
            _stage(64, 64, n_blocks=3, stride=2),
            _stage(64, 96, n_blocks=3, stride=2),
            _stage(96, 128, n_blocks=3, stride=1),
        )
        pooling = PyramidPooling(128, 32, bins=(1, 2, 3, 6))
        self.pyramid = nn.Sequential(pooling, ConvBNReLU(pooling.out_channels, 128, kernel_size=1))
        self.fusion = FeatureFusion(high_channels=64, low_channels=128, out_channels=128)
        self.head = nn.Sequential(
            DepthwiseSeparableConv(128, 128),
            DepthwiseSeparableConv(128, 128),
            nn.Dropout(0.1),
        )
        self.classifier = new_classifier(128, num_classes)
        init_weights(self.learning_to_downsample)
        init_weights(self.global_features)
        init_weights(self.pyramid)
        init_weights(self.fusion)
        init_weights(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns logits (N, num_classes, H, W) at the input's size."""
        high = self.learning_to_downsample(x)
        low = self.pyramid(self.global_features(high))
        logits = self.classifier(self.head(self.fusion(high, low)))
        return upsample(logits, x.shape[-2:])


def fast_scnn(num_classes: int) -> FastSCNN:
    """Fast-SCNN, trained from scratch."""
    return FastSCNN(num_classes)
