"""2.5D DeepLabv3 variants (METHOD.md, "The network").

The dilated backbones and the ASPP head are torchvision's, rebuilt on torch
alone (:mod:`~napari_metseg.model.backbones`, :mod:`~napari_metseg.model.aspp`;
the same state-dict names); weights are never downloaded. The first convolution is rebuilt for ``slices_per_sequence``
channels per sequence, the integration level decides where sequences meet, and
the decoder (:mod:`napari_metseg.model.heads`) whether stride-4 detail joins.
The network outputs logits of shape ``(batch, num_classes, H, W)`` at input
resolution for every variant (the end-level variant returns the log of the
averaged probabilities, which softmax maps back to those probabilities).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from napari_metseg.model.backbones import (
    Bottleneck,
    InvertedResidual,
    mobilenet_v3_large,
    resnet50,
)
from napari_metseg.model.config import SUBTRACTION_PAIR, ModelConfig
from napari_metseg.model.heads import Features, PlainHead, PlusHead

#: Feature channels at the output of each backbone.
_FEATURES = {"resnet50": 2048, "mobilenet_v3_large": 960}
#: The stride-4 layer of each backbone the DeepLabv3+ decoder reads, and its channels.
_LOW_LEVEL = {"resnet50": ("layer1", 256), "mobilenet_v3_large": ("3", 24)}
#: Top-level modules renamed since model files were first written: old state-dict
#: prefix -> current (the ASPP head was called ``head`` in the first model files).
_RENAMED = {"head.": "classifier."}
#: Batch-norm momentum of every variant (PyTorch's default).
BATCHNORM_MOMENTUM = 0.1
#: First MobileNetV3-large block at output stride 16 (the 80-channel stage);
#: output stride 8 turns its stride into dilation for it and every later block.
_MOBILENET_OS16_BLOCK = 7


def _backbone(name: str, in_channels: int, output_stride: int, low_level: bool) -> nn.Module:
    """A dilated feature extractor returning ``{"out": features}``; random weights.

    Output stride 8 or 16 changes strides and dilations only, never the
    parameters, so both read the same weights. ``low_level`` adds the
    stride-4 features as ``"low"`` (for the DeepLabv3+ decoder).
    """
    if name == "resnet50":
        backbone = resnet50(in_channels)
    else:
        backbone = mobilenet_v3_large(in_channels)
        if output_stride == 8:
            _mobilenet_output_stride_8(backbone)
    if low_level:
        backbone.return_layers[_LOW_LEVEL[name][0]] = "low"
    _zero_init_residuals(backbone)
    return backbone


def _zero_init_residuals(backbone: nn.Module) -> None:
    """Start every residual branch at zero (the last batch-norm scale of each block).

    Trained from scratch (no pretrained weights ship or download), each block
    then begins as the identity and the network as a shallow one, which
    learns the simple intensity cues of lesions quickly (Goyal et al. 2017):
    on phantoms, the light backbone at output stride 8 separated lesion from
    background probability about three times further in its first 100 steps.
    """
    for block in backbone.modules():
        if isinstance(block, Bottleneck):
            nn.init.zeros_(block.bn3.weight)
        elif isinstance(block, InvertedResidual) and block.use_res_connect:
            last = [m for m in block.block.modules() if isinstance(m, nn.BatchNorm2d)][-1]
            nn.init.zeros_(last.weight)


def _mobilenet_output_stride_8(backbone: nn.Module) -> None:
    """Dilate torchvision's MobileNetV3-large (output stride 16) to output stride 8.

    From block :data:`_MOBILENET_OS16_BLOCK` on, the depthwise convolutions
    keep stride 1 and double their dilation (2 in the 80-channel stages, 4 in
    the last stage), as DeepLab does with atrous ResNets: features at 1/8 of
    the slice keep lesions of a few voxels.
    """
    for index in range(_MOBILENET_OS16_BLOCK, len(backbone) - 1):
        for conv in backbone[str(index)].modules():
            if isinstance(conv, nn.Conv2d) and conv.groups > 1:
                dilation = 2 * conv.dilation[0]
                conv.stride = (1, 1)
                conv.dilation = (dilation, dilation)
                conv.padding = ((conv.kernel_size[0] - 1) // 2 * dilation,) * 2


class MetsegNet(nn.Module):
    """The network a :class:`ModelConfig` describes, in three parts.

    ``forward(x)`` is ``decode(context(features(x)))``: :meth:`features` runs
    the backbone(s) and joins the sequences as the integration level says;
    :meth:`context` runs the head (ASPP, and the DeepLabv3+ decoder's
    refinement) up to its last layers; :meth:`decode` (those last layers, per
    branch at the end level) turns that into logits at input resolution. Fast
    fine-tuning trains :meth:`decoder_parameters` on cached context
    (:mod:`napari_metseg.model.heads` says why the split lies there).

    ``x``: ``(batch, n_sequences * slices_per_sequence, H, W)``, sequence-major.
    ``metadata`` carries provenance (training, metrics, version) for model files.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.metadata: dict = {}
        slices = config.slices_per_sequence
        n_sequences = len(config.sequences)
        n_branches = 1 if config.sharing == "shared" else n_sequences
        if config.integration == "input":
            self.backbone = self._backbone(config.in_channels)
            self.classifier = self._classifier(1)
        elif config.integration == "mid":
            self.branches = nn.ModuleList(self._backbone(slices) for _ in range(n_branches))
            self.classifier = self._classifier(n_sequences)
        elif config.integration == "end":
            self.branches = nn.ModuleList(
                nn.ModuleDict({"backbone": self._backbone(slices), "head": self._classifier(1)})
                for _ in range(n_branches)
            )
        else:
            self.backbone = self._backbone(slices)
            self.classifier = self._classifier(1)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                # torchvision's MobileNetV3 uses momentum 0.01: its running statistics
                # then lag the weights by hundreds of steps and eval-mode output is
                # wrong for a network trained from scratch.
                module.momentum = BATCHNORM_MOMENTUM
        if config.sharing == "l2_tied" and config.integration in ("mid", "end"):
            for branch in self.branches[1:]:
                branch.load_state_dict(self.branches[0].state_dict())

    def _backbone(self, in_channels: int) -> nn.Module:
        config = self.config
        return _backbone(
            config.backbone, in_channels, config.output_stride, config.decoder == "plus"
        )

    def _classifier(self, n_sequences: int) -> nn.Module:
        """The head for features of ``n_sequences`` sequences side by side."""
        config = self.config
        features = _FEATURES[config.backbone] * n_sequences
        if config.decoder == "none":
            return PlainHead(features, config.num_classes, channels=config.head_channels)
        return PlusHead(
            features,
            _LOW_LEVEL[config.backbone][1] * n_sequences,
            config.num_classes,
            config.head_channels,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.context(self.features(x)))

    def features(self, x: torch.Tensor) -> Features:
        """The backbone part: features of ``x`` joined as the integration level says.

        Input, mid and subtraction levels give ``(B, C, h, w)`` maps (mid
        concatenates the sequences' channels, subtraction takes ``cube_post``
        minus ``cube_pre``); the end level stacks one map per sequence,
        ``(B, n_sequences, C, h, w)``.
        """
        config = self.config
        size = (x.shape[-2], x.shape[-1])
        if config.integration == "input":
            maps = self.backbone(x)
            return Features(maps["out"], maps.get("low"), size)
        chunks = x.split(config.slices_per_sequence, dim=1)
        if config.integration == "subtraction":
            pre, post = (
                self.backbone(chunks[config.sequences.index(name)]) for name in SUBTRACTION_PAIR
            )
            low = post["low"] - pre["low"] if "low" in post else None
            return Features(post["out"] - pre["out"], low, size)
        if config.integration == "mid":
            maps = [self._branch(i)(chunk) for i, chunk in enumerate(chunks)]
            join = partial(torch.cat, dim=1)
        else:
            maps = [self._branch(i)["backbone"](chunk) for i, chunk in enumerate(chunks)]
            join = partial(torch.stack, dim=1)
        low = join([m["low"] for m in maps]) if "low" in maps[0] else None
        return Features(join([m["out"] for m in maps]), low, size)

    def context(self, features: Features) -> Features:
        """The head up to its last layers (:meth:`decode`), as ``Features`` without ``low``.

        ``out`` is ``(B, C, h, w)``, or ``(B, n_sequences, C, h, w)`` at the end level.
        """
        if self.config.integration != "end":
            return Features(
                self.classifier.context(features.out, features.low), None, features.size
            )
        out = torch.stack(
            [
                self._branch(i)["head"].context(*_part(features[:, i]))
                for i in range(features.out.shape[1])
            ],
            dim=1,
        )
        return Features(out, None, features.size)

    def decode(self, context: Features) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` at input resolution from :meth:`context`.

        The end level averages the per-sequence probabilities and returns their log.
        """
        if self.config.integration != "end":
            return _upsample(self.decode_cells(context), context.size)
        probabilities = []
        for i in range(context.out.shape[1]):
            logits = self._branch(i)["head"].decode(context.out[:, i])
            probabilities.append(F.softmax(_upsample(logits, context.size), dim=1))
        return torch.stack(probabilities).mean(dim=0).clamp_min(1e-7).log()

    def decode_cells(self, context: Features) -> torch.Tensor:
        """Logits ``(B, num_classes, h, w)`` at the context's own resolution, before
        :meth:`decode` upsamples them (which takes convex combinations of them).

        Every layer after :meth:`context` is pointwise, so this runs on any
        gathered set of positions shaped ``(N, ..., C, 1, 1)``: fast fine-tuning
        holds chosen cells of a whole case that way at a fraction of a slice's cost.
        """
        if self.config.integration != "end":
            return self.classifier.decode(context.out)
        probabilities = [
            F.softmax(self._branch(i)["head"].decode(context.out[:, i]), dim=1)
            for i in range(context.out.shape[1])
        ]
        return torch.stack(probabilities).mean(dim=0).clamp_min(1e-7).log()

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The parameters :meth:`decode` uses: everything downstream of :meth:`context`."""
        if self.config.integration == "end":
            return [p for branch in self.branches for p in branch["head"].decoder_parameters()]
        return self.classifier.decoder_parameters()

    def _branch(self, index: int) -> nn.Module:
        return self.branches[0 if len(self.branches) == 1 else index]

    def tied_penalty(self) -> torch.Tensor:
        """``sum_i ||theta_i - mean(theta)||^2`` over the branches (0 unless ``l2_tied``).

        Add it, weighted, to the training loss: branches start identical and
        may drift apart only as far as the data pays for.
        """
        if self.config.sharing != "l2_tied" or self.config.integration not in ("mid", "end"):
            return torch.zeros((), device=next(self.parameters()).device)
        groups = zip(*(branch.parameters() for branch in self.branches), strict=True)
        penalty = torch.zeros((), device=next(self.parameters()).device)
        for group in groups:
            stacked = torch.stack(group)
            penalty = penalty + ((stacked - stacked.mean(dim=0)) ** 2).sum()
        return penalty


def build_model(config: ModelConfig) -> MetsegNet:
    """A randomly initialised network for ``config``."""
    return MetsegNet(config)


def current_state_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the tensor names of older model files renamed to today's."""
    renamed = {}
    for name, tensor in state.items():
        for old, new in _RENAMED.items():
            if name.startswith(old):
                name = new + name[len(old) :]
        renamed[name] = tensor
    return renamed


def _part(features: Features) -> tuple[torch.Tensor, torch.Tensor | None]:
    return features.out, features.low


def _upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
