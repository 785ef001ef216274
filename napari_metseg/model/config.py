"""The description of a network: sequences, backbone, integration level, pre-processing.

A :class:`ModelConfig` is all that is needed to rebuild a network before its
weights are loaded, so it is what model files store as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from napari_metseg.case import SEQUENCES
from napari_metseg.model.aspp import ASPP_CHANNELS
from napari_metseg.model.heads import DECODERS
from napari_metseg.preprocess import PreprocessConfig

#: Backbones: ResNet-50 as in the studies, and MobileNetV3-large, which runs a
#: whole case on a 2-core CPU in seconds. Both dilated (output stride 8 / 16).
BACKBONES: tuple[str, ...] = ("resnet50", "mobilenet_v3_large")
#: Output strides (input size / feature size) each backbone offers; the first is its default.
OUTPUT_STRIDES: dict[str, tuple[int, ...]] = {"resnet50": (8,), "mobilenet_v3_large": (16, 8)}
#: The light backbone, also accepted under the name ``"light"``.
LIGHT_BACKBONE = "mobilenet_v3_large"
#: Where sequences meet (METHOD.md, "The network").
INTEGRATIONS: tuple[str, ...] = ("input", "mid", "end", "subtraction")
#: Weight sharing between the per-sequence branches of ``mid`` and ``end``.
SHARINGS: tuple[str, ...] = ("shared", "independent", "l2_tied")
#: The two sequences the subtraction variant compares.
SUBTRACTION_PAIR: tuple[str, str] = ("cube_pre", "cube_post")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and input contract of a 2.5D DeepLabv3.

    ``sequences`` name the input sequences in channel order; each contributes
    ``2 * preprocess.context + 1`` slices. ``integration``: ``input`` (all
    channels into one network), ``mid`` (one early branch per sequence,
    features concatenated before ASPP), ``end`` (one network per sequence,
    probabilities averaged) or ``subtraction`` (a shared early branch on
    ``cube_pre`` and ``cube_post``, features subtracted). ``sharing`` applies
    to the branches of ``mid`` and ``end``. ``output_stride`` (``None``: the
    backbone's default: 8 for ResNet-50, 16 for MobileNetV3) trades the
    features' resolution against time: MobileNetV3 at 8 keeps smaller lesions
    but takes about three times as long (model v4's stride-16 weights run at
    8 with the ASPP rates doubled found 28 and 30 of 39 lesions of 3-5 mm on
    ``bench/detection.py``'s phantoms, against 27 and 27 at 16, with and
    without ``bravo``, at 2.6 times the network time: too little for the cost
    without retraining at 8). ``decoder``: ``none`` (the method's DeepLabv3
    head, logits at the output stride) or ``plus`` (the DeepLabv3+ decoder,
    logits at stride 4); files written before the option load as ``none``.
    ``head_channels``: the width of the ASPP and of the DeepLabv3+ decoder
    (the method's 256). The decoder works at a quarter of the slice, where
    width costs most: on 2 CPU cores the light network with the decoder at 256
    took 2.4 times as long as without it, at 128 about 1.07 times
    (:mod:`napari_metseg.model.heads`).
    """

    sequences: tuple[str, ...] = SEQUENCES
    backbone: str = LIGHT_BACKBONE
    integration: str = "input"
    sharing: str = "shared"
    num_classes: int = 2
    output_stride: int | None = None
    decoder: str = "none"
    head_channels: int = ASPP_CHANNELS
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sequences", tuple(self.sequences))
        if self.backbone == "light":
            object.__setattr__(self, "backbone", LIGHT_BACKBONE)
        if isinstance(self.preprocess, dict):
            object.__setattr__(self, "preprocess", PreprocessConfig(**self.preprocess))
        if not self.sequences or len(set(self.sequences)) != len(self.sequences):
            raise ValueError(f"sequences must be distinct names, got {self.sequences}")
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"backbone must be one of {BACKBONES} or 'light', got {self.backbone!r}"
            )
        strides = OUTPUT_STRIDES[self.backbone]
        if self.output_stride is None:
            object.__setattr__(self, "output_stride", strides[0])
        if self.output_stride not in strides:
            raise ValueError(
                f"output_stride of {self.backbone} must be one of {strides}, got {self.output_stride!r}"
            )
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.head_channels < 8:
            raise ValueError(f"head_channels must be at least 8, got {self.head_channels}")
        if self.integration not in INTEGRATIONS:
            raise ValueError(f"integration must be one of {INTEGRATIONS}, got {self.integration!r}")
        if self.sharing not in SHARINGS:
            raise ValueError(f"sharing must be one of {SHARINGS}, got {self.sharing!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.integration == "subtraction" and not set(SUBTRACTION_PAIR) <= set(self.sequences):
            raise ValueError(
                f"the subtraction variant needs sequences {SUBTRACTION_PAIR}, got {self.sequences}"
            )

    @property
    def slices_per_sequence(self) -> int:
        """Channels each sequence contributes (the slice and its neighbours)."""
        return 2 * self.preprocess.context + 1

    @property
    def in_channels(self) -> int:
        """Channels of the network input, ``n_sequences * slices_per_sequence``."""
        return len(self.sequences) * self.slices_per_sequence

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``from_dict`` inverts it)."""
        data = asdict(self)
        data["sequences"] = list(self.sequences)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild from :meth:`to_dict`; unknown keys raise ``TypeError``."""
        data = dict(data)
        data["preprocess"] = PreprocessConfig(**data.get("preprocess", {}))
        return cls(**data)
