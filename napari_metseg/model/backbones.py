"""torchvision's dilated DeepLabv3 backbones, rebuilt on torch alone.

Importing torchvision costs about 2.4 s (its ``ops`` pull in
``torch._dynamo``), more than the bundled model's network time on a case, so
``metseg segment`` and the GUI build the two backbones here: the same layers
under the same names (model files load unchanged; ``tests/test_model.py``
checks state-dict keys and outputs against torchvision), the same dilation
and initialisation. Without a classifier tail: DeepLabv3 drops it anyway.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn

#: MobileNetV3-large's inverted residual blocks (Howard et al. 2019, table 1),
#: as torchvision's DeepLabv3 dilates them (the last stage at dilation 2).
_MOBILENET_LARGE = (
    # kernel, expanded, out, squeeze-excite, hard-swish, stride, dilation
    (3, 16, 16, False, False, 1, 1),
    (3, 64, 24, False, False, 2, 1),
    (3, 72, 24, False, False, 1, 1),
    (5, 72, 40, True, False, 2, 1),
    (5, 120, 40, True, False, 1, 1),
    (5, 120, 40, True, False, 1, 1),
    (3, 240, 80, False, True, 2, 1),
    (3, 200, 80, False, True, 1, 1),
    (3, 184, 80, False, True, 1, 1),
    (3, 184, 80, False, True, 1, 1),
    (3, 480, 112, True, True, 1, 1),
    (3, 672, 112, True, True, 1, 1),
    (5, 672, 160, True, True, 2, 2),
    (5, 960, 160, True, True, 1, 2),
    (5, 960, 160, True, True, 1, 2),
)
#: Batch-norm epsilon of MobileNetV3 (torchvision's and the paper's).
_MOBILENET_EPS = 0.001
#: Bottleneck blocks per ResNet-50 stage.
_RESNET50_LAYERS = (3, 4, 6, 3)


class LayerGetter(nn.ModuleDict):
    """Children run in order; those named in ``return_layers`` give named outputs.

    torchvision's ``IntermediateLayerGetter``: ``return_layers`` maps a child's
    name to its output's name and may gain entries later (the stride-4
    ``"low"`` features of the DeepLabv3+ decoder).
    """

    def __init__(self, layers: OrderedDict[str, nn.Module], return_layers: dict[str, str]):
        super().__init__(layers)
        self.return_layers = return_layers

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class ConvNormActivation(nn.Sequential):
    """Convolution (no bias), batch norm and an optional in-place activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        activation: type[nn.Module] | None = nn.ReLU,
        eps: float = 1e-5,
    ) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        layers = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels, eps=eps),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """Channel gates from the pooled map (Hu et al. 2018), hard-sigmoid as in MobileNetV3."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


class _BlockSpec(NamedTuple):
    kernel: int
    expanded: int
    out: int
    squeeze_excite: bool
    hard_swish: bool
    stride: int
    dilation: int


class InvertedResidual(nn.Module):
    """MobileNetV3's block: expand, depthwise, (squeeze-excite), project (+ input)."""

    def __init__(self, in_channels: int, spec: _BlockSpec) -> None:
        super().__init__()
        self.use_res_connect = spec.stride == 1 and in_channels == spec.out
        activation = nn.Hardswish if spec.hard_swish else nn.ReLU
        norm = {"eps": _MOBILENET_EPS, "activation": activation}
        layers: list[nn.Module] = []
        if spec.expanded != in_channels:
            layers.append(ConvNormActivation(in_channels, spec.expanded, 1, **norm))
        stride = 1 if spec.dilation > 1 else spec.stride
        layers.append(
            ConvNormActivation(
                spec.expanded,
                spec.expanded,
                spec.kernel,
                stride,
                groups=spec.expanded,
                dilation=spec.dilation,
                **norm,
            )
        )
        if spec.squeeze_excite:
            layers.append(SqueezeExcitation(spec.expanded, _divisible(spec.expanded // 4)))
        layers.append(
            ConvNormActivation(spec.expanded, spec.out, 1, eps=_MOBILENET_EPS, activation=None)
        )
        self.block = nn.Sequential(*layers)
        self.out_channels = spec.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


def mobilenet_v3_large(in_channels: int) -> LayerGetter:
    """MobileNetV3-large's features at output stride 16, returning ``{"out": 960 channels}``."""
    first = _MOBILENET_LARGE[0][1]
    layers = [
        ConvNormActivation(
            in_channels, first, 3, stride=2, activation=nn.Hardswish, eps=_MOBILENET_EPS
        )
    ]
    channels = first
    for row in _MOBILENET_LARGE:
        spec = _BlockSpec(*row)
        layers.append(InvertedResidual(channels, spec))
        channels = spec.out
    layers.append(
        ConvNormActivation(channels, 6 * channels, 1, activation=nn.Hardswish, eps=_MOBILENET_EPS)
    )
    for module in nn.ModuleList(layers).modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    named = OrderedDict((str(index), layer) for index, layer in enumerate(layers))
    return LayerGetter(named, {str(len(layers) - 1): "out"})


class Bottleneck(nn.Module):
    """ResNet's bottleneck block (1x1, dilated 3x3, 1x1; x4 channels) with its shortcut."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


def resnet50(in_channels: int) -> LayerGetter:
    """ResNet-50 at output stride 8 (the last two stages dilated 2 and 4), ``{"out": 2048}``."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False),
        bn1=nn.BatchNorm2d(64),
        relu=nn.ReLU(inplace=True),
        maxpool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    channels, dilation = 64, 1
    for index, (planes, blocks) in enumerate(
        zip((64, 128, 256, 512), _RESNET50_LAYERS, strict=True), 1
    ):
        stride = 2 if index == 2 else 1
        previous, dilation = dilation, dilation * (2 if index > 2 else 1)
        downsample = nn.Sequential(
            nn.Conv2d(channels, planes * 4, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * 4),
        )
        stage = [Bottleneck(channels, planes, stride, downsample, previous)]
        channels = planes * 4
        stage += [Bottleneck(channels, planes, dilation=dilation) for _ in range(1, blocks)]
        layers[f"layer{index}"] = nn.Sequential(*stage)
    for module in nn.ModuleList(layers.values()).modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return LayerGetter(layers, {"layer4": "out"})


def _divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to a multiple of ``divisor``, never 10 % below it (MobileNet's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded
