"""A tiny encoder-decoder (about 0.4M parameters) for tests and CPU demos.

It is no match for the real models; it exists so that training, labeling and serving can be run
end to end on a laptop CPU in seconds. It overfits a single 64x128 image in a few hundred steps.
"""

from __future__ import annotations

import torch
from torch import nn

from core.models.blocks import ConvBNReLU, init_weights, new_classifier, upsample


class SmallSegNet(nn.Module):
    """Three conv-BN-ReLU stages to stride 8 and a decoder that fuses them at stride 4.

    Attributes:
        stem: Stride 2, 32 channels.
        stage2: Stride 4, 64 channels (the skip into the decoder).
        stage3: Stride 8, 128 channels, the second conv dilated for a wider view.
        decoder: 3x3 conv-BN-ReLU on the stride-4 fusion, 64 channels.
        classifier: The last layer, a 1x1 conv to ``num_classes`` logits.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBNReLU(3, 32, stride=2), ConvBNReLU(32, 32))
        self.stage2 = nn.Sequential(ConvBNReLU(32, 64, stride=2), ConvBNReLU(64, 64))
        self.stage3 = nn.Sequential(ConvBNReLU(64, 128, stride=2), ConvBNReLU(128, 128, dilation=2))
        self.decoder = ConvBNReLU(128 + 64, 64)
        self.classifier = new_classifier(64, num_classes)
        init_weights(self.stem)
        init_weights(self.stage2)
        init_weights(self.stage3)
        init_weights(self.decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns logits (N, num_classes, H, W) at the input's size."""
        skip = self.stage2(self.stem(x))
        deep = upsample(self.stage3(skip), skip.shape[-2:])
        logits = self.classifier(self.decoder(torch.cat([deep, skip], dim=1)))
        return upsample(logits, x.shape[-2:])


def small(num_classes: int) -> SmallSegNet:
    """The tiny CPU model (no options)."""
    return SmallSegNet(num_classes)
