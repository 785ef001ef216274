"""2.5D DeepLabv3 variants on torchvision's implementation (METHOD.md, "The network").

torchvision supplies the dilated backbones and the ASPP head; weights are never
downloaded. The first convolution is rebuilt for ``slices_per_sequence``
channels per sequence, and the integration level decides where sequences meet.
The network outputs logits of shape ``(batch, num_classes, H, W)`` at input
resolution for every variant (the end-level variant returns the log of the
averaged probabilities, which softmax maps back to those probabilities).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.mobilenetv3 import InvertedResidual
from torchvision.models.resnet import Bottleneck
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, deeplabv3_resnet50
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from napari_metseg.model.config import SUBTRACTION_PAIR, ModelConfig

#: Feature channels at the output of each backbone.
_FEATURES = {"resnet50": 2048, "mobilenet_v3_large": 960}
#: Batch-norm momentum of every variant (PyTorch's default).
BATCHNORM_MOMENTUM = 0.1
#: First MobileNetV3-large block at output stride 16 (the 80-channel stage);
#: output stride 8 turns its stride into dilation for it and every later block.
_MOBILENET_OS16_BLOCK = 7


def _backbone(name: str, in_channels: int, output_stride: int) -> nn.Module:
    """A dilated feature extractor returning ``{"out": features}``; random weights.

    Output stride 8 or 16 changes strides and dilations only, never the
    parameters, so both read the same weights.
    """
    if name == "resnet50":
        backbone = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=2).backbone
        backbone.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    else:
        backbone = deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=2
        ).backbone
        backbone["0"][0] = nn.Conv2d(
            in_channels, 16, kernel_size=3, stride=2, padding=1, bias=False
        )
        if output_stride == 8:
            _mobilenet_output_stride_8(backbone)
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
    """The network a :class:`ModelConfig` describes; ``forward(x)`` gives logits.

    ``x``: ``(batch, n_sequences * slices_per_sequence, H, W)``, sequence-major.
    ``metadata`` carries provenance (training, metrics, version) for model files.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.metadata: dict = {}
        slices = config.slices_per_sequence
        n_sequences = len(config.sequences)
        features = _FEATURES[config.backbone]
        n_branches = 1 if config.sharing == "shared" else n_sequences
        stride = config.output_stride
        if config.integration == "input":
            self.backbone = _backbone(config.backbone, config.in_channels, stride)
            self.head = DeepLabHead(features, config.num_classes)
        elif config.integration == "mid":
            self.branches = nn.ModuleList(
                _backbone(config.backbone, slices, stride) for _ in range(n_branches)
            )
            self.head = DeepLabHead(features * n_sequences, config.num_classes)
        elif config.integration == "end":
            self.branches = nn.ModuleList(
                nn.ModuleDict(
                    {
                        "backbone": _backbone(config.backbone, slices, stride),
                        "head": DeepLabHead(features, config.num_classes),
                    }
                )
                for _ in range(n_branches)
            )
        else:
            self.backbone = _backbone(config.backbone, slices, stride)
            self.head = DeepLabHead(features, config.num_classes)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                # torchvision's MobileNetV3 uses momentum 0.01: its running statistics
                # then lag the weights by hundreds of steps and eval-mode output is
                # wrong for a network trained from scratch.
                module.momentum = BATCHNORM_MOMENTUM
        if config.sharing == "l2_tied" and config.integration in ("mid", "end"):
            for branch in self.branches[1:]:
                branch.load_state_dict(self.branches[0].state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        config = self.config
        size = x.shape[-2:]
        chunks = x.split(config.slices_per_sequence, dim=1)
        if config.integration == "input":
            logits = self.head(self.backbone(x)["out"])
        elif config.integration == "mid":
            features = [self._branch(i)(chunk)["out"] for i, chunk in enumerate(chunks)]
            logits = self.head(torch.cat(features, dim=1))
        elif config.integration == "end":
            probabilities = [
                F.softmax(
                    F.interpolate(
                        self._branch(i)["head"](self._branch(i)["backbone"](chunk)["out"]),
                        size=size,
                        mode="bilinear",
                        align_corners=False,
                    ),
                    dim=1,
                )
                for i, chunk in enumerate(chunks)
            ]
            return torch.stack(probabilities).mean(dim=0).clamp_min(1e-7).log()
        else:
            pre, post = (chunks[config.sequences.index(name)] for name in SUBTRACTION_PAIR)
            logits = self.head(self.backbone(post)["out"] - self.backbone(pre)["out"])
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

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
