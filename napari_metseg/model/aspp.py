"""DeepLabv3's atrous spatial pyramid pooling and head (Chen et al. 2017), on torch alone.

torchvision's ``ASPP`` and ``DeepLabHead`` under the same layer names, so
model files load unchanged (see :mod:`napari_metseg.model.backbones` for why
torchvision is not imported).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

#: Channels of every ASPP branch and of its projection.
ASPP_CHANNELS = 256


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, dilation: int = 1):
    padding = dilation if kernel == 3 else 0
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class ASPPPooling(nn.Sequential):
    """The image-level branch: global average, 1x1 convolution, spread back over the map."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return F.interpolate(super().forward(x), size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """A 1x1 branch, one dilated 3x3 branch per rate and the pooling branch, projected."""

    def __init__(
        self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = ASPP_CHANNELS
    ) -> None:
        super().__init__()
        branches = [_conv_bn_relu(in_channels, out_channels, 1)]
        branches += [_conv_bn_relu(in_channels, out_channels, 3, rate) for rate in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """ASPP, a 3x3 convolution and the 1x1 classifier: logits at the features' stride."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        atrous_rates: Sequence[int] = (12, 24, 36),
        channels: int = ASPP_CHANNELS,
    ) -> None:
        super().__init__(
            ASPP(in_channels, atrous_rates, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, num_classes, 1),
        )
