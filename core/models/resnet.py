"""Dilated ResNet and ResNeXt backbones, named like torchvision so its weights load as they are.

Parameter names follow torchvision's ``ResNet`` state dict (``conv1``, ``bn1``, ``layer1`` ..
``layer4``, ``layerN.i.downsample.0/1``), minus the ``fc`` classifier, which segmentation does not
use. A torchvision ImageNet file (``torch.save(resnet50(weights=...).state_dict(), path)``)
therefore loads with :func:`load_backbone_weights`, with no download at run time.

Output stride 16 turns the stride of ``layer4`` into dilation 2; output stride 8 does the same for
``layer3`` (dilation 2) and ``layer4`` (dilation 4). Strides move into dilations, so the weights
and their names stay the same for every output stride.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.errors import CheckpointError, ConfigError
from core.models.blocks import init_weights
from core.weights import resolve_weights

# Stages 3 and 4 (index 2 and 3) are the ones that trade stride for dilation.
_DILATIONS = {32: (1, 1, 1, 1), 16: (1, 1, 1, 2), 8: (1, 1, 2, 4)}
_BASE_STRIDES = (1, 2, 2, 2)


class Bottleneck(nn.Module):
    """The 1x1 - 3x3 - 1x1 residual block, stride on the 3x3 (torchvision's "ResNet v1.5")."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        width = int(planes * width_per_group / 64) * groups
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(
            width,
            width,
            3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet/ResNeXt feature extractor returning the outputs of its four stages.

    Args:
        blocks_per_stage: Bottleneck blocks in layer1..layer4, e.g. (3, 4, 6, 3) for ResNet-50.
        output_stride: 8, 16 or 32: input size / size of the ``layer4`` output.
        groups: Grouped-conv cardinality of the 3x3 convs (32 for ResNeXt-50 32x4d).
        width_per_group: Channels per group of the 3x3 convs at ``planes == 64`` (4 for 32x4d).
    """

    def __init__(
        self,
        blocks_per_stage: tuple[int, int, int, int],
        output_stride: int = 32,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        if output_stride not in _DILATIONS:
            raise ConfigError(f"output_stride must be one of 8, 16, 32, got {output_stride!r}")
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        in_channels = 64
        stages = []
        for i, n_blocks in enumerate(blocks_per_stage):
            planes = 64 * 2**i
            dilation = _DILATIONS[output_stride][i]
            stride = _BASE_STRIDES[i] if dilation == 1 else 1
            blocks = []
            for j in range(n_blocks):
                blocks.append(
                    Bottleneck(
                        in_channels,
                        planes,
                        stride=stride if j == 0 else 1,
                        dilation=dilation,
                        groups=groups,
                        width_per_group=width_per_group,
                    )
                )
                in_channels = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        # Channels of layer1..layer4 outputs: 256, 512, 1024, 2048.
        self.stage_channels = tuple(64 * 2**i * Bottleneck.expansion for i in range(4))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Returns the outputs of layer1..layer4 (strides 4, 8, then per ``output_stride``)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        return features


def resnet50(output_stride: int = 32, weights: str | Path | None = None) -> ResNet:
    """ResNet-50; ``weights`` is a torchvision-format state dict file."""
    model = ResNet((3, 4, 6, 3), output_stride=output_stride)
    if weights is not None:
        load_backbone_weights(model, weights)
    return model


def resnet101(output_stride: int = 32, weights: str | Path | None = None) -> ResNet:
    """ResNet-101; ``weights`` is a torchvision-format state dict file."""
    model = ResNet((3, 4, 23, 3), output_stride=output_stride)
    if weights is not None:
        load_backbone_weights(model, weights)
    return model


def resnext50_32x4d(output_stride: int = 32, weights: str | Path | None = None) -> ResNet:
    """ResNeXt-50 32x4d; ``weights`` is a torchvision-format state dict file."""
    model = ResNet((3, 4, 6, 3), output_stride=output_stride, groups=32, width_per_group=4)
    if weights is not None:
        load_backbone_weights(model, weights)
    return model


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Loads a state dict file in ``backbone``'s layout (torchvision's for our ResNets; a
    ``.safetensors`` file too), or named weights (core.weights, e.g.
    ``torchvision:resnet50.IMAGENET1K_V2``, ``timm:resnet50.a1_in1k``), into ``backbone`` in place.

    A classification head the backbone lacks (``fc.*``, ``head.*``, ``classifier.*``) is ignored.
    ``num_batches_tracked`` buffers may be absent (torchvision's older ImageNet files lack them).
    Every other key must be present with the right shape.

    Raises:
        CheckpointError: The file is missing, unreadable, not a state dict, or its keys or shapes
            do not match the backbone (the message lists the first offending keys).
    """
    path = resolve_weights(path)
    if not path.is_file():
        raise CheckpointError(path, "backbone weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(path, f"cannot read backbone weights: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(path, "expected a state dict mapping parameter names to tensors")

    expected = backbone.state_dict()
    # The classification head of an ImageNet model (torchvision's fc, timm's head / classifier)
    # has no place in a backbone.
    heads = tuple(
        h for h in ("fc.", "head.", "classifier.") if not any(k.startswith(h) for k in expected)
    )
    state = {k: v for k, v in state.items() if not k.startswith(heads)}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} keys with wrong shape ({_first(wrong_shape)})")
    if problems:
        raise CheckpointError(
            path, "not a state dict of this backbone's layout: " + "; ".join(problems)
        )
    backbone.load_state_dict(state, strict=False)


def _first(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (", ..." if len(items) > n else "")
