"""What the backbones hand the head, and the two heads: DeepLabv3 and DeepLabv3+.

:class:`Features` is what flows between the three parts of a
:class:`MetsegNet`: ``net.features(x)`` (the backbone) computes it,
``net.context(features)`` replaces its ``out`` by the ASPP output and
``net.decode(context)`` turns that into logits. Fast fine-tuning caches the
context (backbone and ASPP frozen, about 80% of the light network's cost) and
trains the decoder alone, so :class:`Features` supports the three operations a
cache needs: batch indexing, concatenation of chunks and stacking of draws.

Both heads take ``(out, low)``: the plain DeepLabv3 head (the method's)
ignores ``low``; the DeepLabv3+ decoder (Chen et al. 2018, "Encoder-Decoder
with Atrous Separable Convolution") joins the upsampled ASPP output with the
stride-4 backbone features reduced to 48 channels and refines the result with
two 3x3 convolutions, so the logits come at stride 4 instead of 8 or 16. The
refining convolutions are depthwise separable, as in the paper's Xception
model: at a quarter of the slice, two full 3x3 convolutions of 256 channels
cost 2.5 times the light network's whole forward pass (10 of 5 GFLOP per
256 x 256 slice); separable ones cost 1.2 GFLOP. Even so, on a CPU the
decoder's memory-bound layers at 256 channels took longer than the backbone
and the ASPP together: per 8 slices on 2 quiet threads (folded, float32), the
light network took 0.28 s without the decoder, 0.68 s with it at 256 channels
and 0.30 s at 128 (``ModelConfig.head_channels``, which narrows the ASPP too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from napari_metseg.model.aspp import ASPP, ASPP_CHANNELS, DeepLabHead

#: Decoders: ``none`` (the method's DeepLabv3) or ``plus`` (DeepLabv3+).
DECODERS: tuple[str, ...] = ("none", "plus")
#: Channels the stride-4 features are reduced to before joining (Chen et al. 2018).
LOW_LEVEL_REDUCED = 48


@dataclass(frozen=True)
class Features:
    """The backbone's output for a batch: the head's whole input.

    ``out``: high-level features ``(B, C, h, w)``; the end integration level
    keeps one map per sequence, ``(B, n_sequences, C, h, w)``. ``low``: the
    stride-4 features in the same layout for the DeepLabv3+ decoder, ``None``
    without it. ``size``: ``(H, W)`` of the input, to which the head upsamples.
    """

    out: torch.Tensor
    low: torch.Tensor | None
    size: tuple[int, int]

    def __getitem__(self, index: Any) -> Features:
        """The same features indexed along the leading dimensions (e.g. a sub-batch)."""
        low = None if self.low is None else self.low[index]
        return Features(self.out[index], low, self.size)

    @staticmethod
    def cat(parts: Sequence[Features]) -> Features:
        """Chunks of one input joined along the batch dimension."""
        return _join(parts, torch.cat)

    @staticmethod
    def stack(parts: Sequence[Features]) -> Features:
        """Batches of equal size stacked along a new leading dimension."""
        return _join(parts, torch.stack)


def _join(parts: Sequence[Features], join) -> Features:
    if not parts or len({part.size for part in parts}) != 1:
        raise ValueError(f"need features of one input size, got {[p.size for p in parts]}")
    lows = [part.low for part in parts]
    low = None if lows[0] is None else join(lows)
    return Features(join([part.out for part in parts]), low, parts[0].size)


class PlainHead(DeepLabHead):
    """DeepLabv3's head (ASPP, 3x3 conv, classifier); ignores ``low``.

    ``forward`` is ``decode(context(out))``: :meth:`decode` is the final 1x1
    classifier, :meth:`context` everything before it.
    """

    def forward(self, out: torch.Tensor, low: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.context(out, low))

    def context(self, out: torch.Tensor, low: torch.Tensor | None = None) -> torch.Tensor:
        for layer in list(self)[:-1]:
            out = layer(out)
        return out

    def decode(self, context: torch.Tensor) -> torch.Tensor:
        return self[-1](context)

    def decoder_parameters(self) -> list[nn.Parameter]:
        return list(self[-1].parameters())


class PlusHead(nn.Module):
    """The DeepLabv3+ decoder on ASPP; logits at the resolution of ``low`` (stride 4).

    ``forward`` is ``decode(context(out, low))``: :meth:`decode` is the last
    pointwise convolution (with its batch norm and ReLU) and the classifier,
    a per-pixel two-layer network on 256 features at stride 4; :meth:`context`
    everything before it. Fast fine-tuning trains only :meth:`decode` on cached
    context. Measured with the 256-channel model on 2 shared CPU cores, per 8
    slices of 256 x 256: backbone 2.8-4.3 s, ASPP 0.5-0.8 s, the decoder
    after the ASPP 1.2-1.4 s, :meth:`decode` 0.23 s; one AdamW step on 4
    slices 2.1-2.2 s through the decoder after the ASPP, 0.5 s through
    :meth:`decode`. Training the whole decoder could therefore neither run
    its 20-30 steps nor predict the case after each attempt within a 10 s
    round.
    """

    def __init__(
        self, in_channels: int, low_channels: int, num_classes: int, channels: int = ASPP_CHANNELS
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, (12, 24, 36), channels)
        self.reduce = _conv_bn_relu(low_channels, LOW_LEVEL_REDUCED, 1)
        self.refine = nn.Sequential(
            _separable(channels + LOW_LEVEL_REDUCED, channels), _separable(channels, channels)
        )
        self.classify = nn.Conv2d(channels, num_classes, 1)

    def forward(self, out: torch.Tensor, low: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.context(out, low))

    def context(self, out: torch.Tensor, low: torch.Tensor | None = None) -> torch.Tensor:
        if low is None:
            raise ValueError("the DeepLabv3+ decoder needs the stride-4 features (low)")
        context = F.interpolate(
            self.aspp(out), size=low.shape[-2:], mode="bilinear", align_corners=False
        )
        joined = self.refine[0](torch.cat([context, self.reduce(low)], dim=1))
        return self.refine[1][0](joined)

    def decode(self, context: torch.Tensor) -> torch.Tensor:
        return self.classify(self.refine[1][1](context))

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [*self.refine[1][1].parameters(), *self.classify.parameters()]


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def _separable(in_channels: int, out_channels: int) -> nn.Sequential:
    """A 3x3 depthwise then 1x1 pointwise convolution, each with batch norm and ReLU."""
    return nn.Sequential(
        _conv_bn_relu(in_channels, in_channels, 3, groups=in_channels),
        _conv_bn_relu(in_channels, out_channels, 1),
    )
