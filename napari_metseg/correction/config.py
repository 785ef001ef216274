"""Settings of a fine-tuning round (the terms of the objective are in ``objective``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from napari_metseg.correction.objective import UNMARKED_MODES
from napari_metseg.correction.trust import TrustRegion

#: Fine-tuning modes; ``auto`` is ``full`` on CUDA and ``fast`` elsewhere.
MODES: tuple[str, ...] = ("auto", "fast", "full")
#: Default learning rate per mode (AdamW). Fast: with the whole-case hold of the base
#: candidates, 1e-3 sprouted specks that took 2.75 attempts per round (12 s on the sample
#: case); 2.5e-4, where those attempts ended, took 1.5-2.33 with the same lesions found
#: on the correction benchmark, and with the 128-channel bundled model and the trust
#: region's two counts 1.0 (1.1-4.5 s per round on 2 CPU cores). Full: on the sample
#: case even 2.5e-6 grew two base specks past 10 mm^3 (the trust region refuses).
DEFAULT_LR = {"fast": 2.5e-4, "full": 2e-5}


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning round (the objective's terms are in ``objective``).

    ``iterations`` AdamW steps of ``batch_size`` samples at ``lr`` (None:
    :data:`DEFAULT_LR` of the mode); corrected slices are ``oversample``
    times as likely as the neighbouring ones (``neighbours`` per side);
    ``random_slices`` other slices join every step (fast mode: drawn afresh
    from the whole case; full mode: fixed samples). ``lesion_margin``: pixels
    of the network grid around lesion strokes left out of the anchor.
    ``trust`` bounds what may change away from the strokes; ``backoffs``
    retries, each with half the step size, before a round is refused. ``dropout_rate``: sequence dropout probability;
    ``dropout_draws``: presence draws per sample (the first is the case's own).
    """

    mode: str = "auto"
    unmarked: str = "teacher"
    alpha: float = 3.0
    beta: float = 0.1
    keep_threshold: float = 0.5
    stroke_share: float = 0.5
    stroke_target: float = 0.9
    lesion_margin: int = 3
    anchor_weight: float = 1.0
    hold_weight: float = 1000.0
    hold_gap: float = 2.0
    iterations: int = 20
    batch_size: int = 2
    lr: float | None = None
    weight_decay: float = 0.0
    neighbours: int = 1
    random_slices: int = 2
    oversample: float = 3.0
    dropout_rate: float = 0.25
    dropout_draws: int = 2
    trust: TrustRegion = TrustRegion()
    backoffs: int = 2
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.unmarked not in UNMARKED_MODES:
            raise ValueError(
                f"unmarked must be one of {list(UNMARKED_MODES)}, got {self.unmarked!r}"
            )
        for name in ("iterations", "batch_size", "dropout_draws"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must lie in [0, 1), got {self.dropout_rate}")
        if self.oversample <= 0 or not 0 < self.stroke_share <= 1:
            raise ValueError(
                "oversample must be > 0 and stroke_share in (0, 1], got "
                f"{self.oversample}, {self.stroke_share}"
            )
        if not 0 < self.stroke_target < 1 or self.lesion_margin < 0:
            raise ValueError(
                "stroke_target must lie in (0, 1) and lesion_margin be >= 0, got "
                f"{self.stroke_target}, {self.lesion_margin}"
            )
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.backoffs < 0:
            raise ValueError(f"backoffs must be >= 0, got {self.backoffs}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        data = dict(data)
        if isinstance(data.get("trust"), dict):
            data["trust"] = TrustRegion(**data["trust"])
        return cls(**data)
