"""Batch norm folded into the preceding convolutions, for inference only.

In eval mode a batch norm is a per-channel affine map of its input, so a
convolution followed by one equals the convolution with rescaled weights and
a bias: one memory pass less per layer (the light backbone has 60 of them on
maps of up to 960 channels). The result is a copy: its parameters have other
names and it cannot train, so fine-tuning and model files keep the original.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every convolution -> batch norm pair folded.

    A pair is a :class:`~torch.nn.Conv2d` child registered right before a
    :class:`~torch.nn.BatchNorm2d` child of the same module (``Sequential``
    blocks, ResNet's ``conv1``/``bn1`` attributes); the norm becomes an
    ``Identity``. Outputs equal the original's in eval mode to float rounding.
    """
    folded = copy.deepcopy(model).eval()
    for parent in list(folded.modules()):
        names = list(parent._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = parent._modules[first], parent._modules[second]
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(norm, nn.BatchNorm2d)
                and norm.track_running_stats
                and conv.out_channels == norm.num_features
            ):
                _fold(conv, norm)
                parent._modules[second] = nn.Identity()
    return folded


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """Rescale ``conv`` in place so that it computes ``norm(conv(x))`` (computed in float64)."""
    variance = norm.running_var.double()
    scale = torch.rsqrt(variance + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    bias = torch.zeros_like(variance) if conv.bias is None else conv.bias.double()
    bias = (bias - norm.running_mean.double()) * scale
    if norm.bias is not None:
        bias = bias + norm.bias.double()
    weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
