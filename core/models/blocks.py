"""Small building blocks shared by the segmentation models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError


class ConvBNReLU(nn.Sequential):
    """A conv without bias, BatchNorm and ReLU; padding keeps the size for odd kernels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class GlobalPoolBranch(nn.Module):
    """Average-pool to 1x1, project with a 1x1 conv, and broadcast back to the input size.

    The projection has a bias and no BatchNorm: with one image per device a 1x1 map holds one
    value per channel, and BatchNorm in train mode cannot normalize a single value.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.relu(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: pool to grids, project, upsample, concatenate with the input.

    Output channels are ``in_channels + len(bins) * branch_channels``.
    """

    def __init__(self, in_channels: int, branch_channels: int, bins: tuple[int, ...]) -> None:
        super().__init__()
        self.bins = bins
        self.branches = nn.ModuleList(
            GlobalPoolBranch(in_channels, branch_channels)
            if b == 1
            else ConvBNReLU(in_channels, branch_channels, kernel_size=1)
            for b in bins
        )
        self.out_channels = in_channels + len(bins) * branch_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outputs = [x]
        for b, branch in zip(self.bins, self.branches, strict=True):
            if b == 1:
                outputs.append(branch(x))
            else:
                pooled = branch(F.adaptive_avg_pool2d(x, b))
                outputs.append(upsample(pooled, size))
        return torch.cat(outputs, dim=1)


def upsample(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a feature map or logits to ``size`` (H, W)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def init_weights(module: nn.Module) -> None:
    """He-normal convs, unit BatchNorm, zero biases: the usual start for ReLU networks."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def new_classifier(in_channels: int, num_classes: int) -> nn.Conv2d:
    """The last 1x1 conv, features to logits; small initial weights keep early losses calm."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    classifier = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.normal_(classifier.weight, std=0.01)
    nn.init.zeros_(classifier.bias)
    return classifier


def check_output_stride(output_stride: int) -> None:
    """Raises ConfigError unless ``output_stride`` is 8 or 16, the strides the heads support."""
    if output_stride not in (8, 16):
        raise ConfigError(f"output_stride must be 8 or 16, got {output_stride!r}")
