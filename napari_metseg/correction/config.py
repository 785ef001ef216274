"""Settings of a fine-tuning round (the terms of the objective are in ``objective``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from napari_metseg.correction.objective import UNMARKED_MODES
from napari_metseg.correction.trust import TrustRegion

#: Fine-tuning modes; ``auto`` is ``full`` on CUDA and ``fast`` elsewhere.
MODES: tuple[str, ...] = ("auto", "fast", "full")
#: What a round's ``lr``, ``iterations``, ``hold_weight`` and ``stroke_share`` are when left
#: at None, per mode. Fast (correction benchmark, 4 held-out phantoms, 2 CPU cores): with
#: the band of the case held in every step (``hold.CaseHold``), the strokes at a share of
#: 0.8 and the bag centred (``centre_bias``), one round with the trust region's counts
#: lifted found 5 of 7 dabbed 1-3 voxel lesions at a hold weight of 100, with false
#: positives >= 10 mm^3 at the base's; 3 of 7 at 400; 7 of 7 at 20, with 1.5 more false
#: positives per case. Within the trust region, 100 finds 5 of 7 (the former defaults: 2;
#: 3 with two new specks allowed instead of three, ``trust.TrustRegion``). Those were
#: v4's numbers; with the bundled v7, 100 finds 2 of 6 (1 of 6 dabbed large lesions),
#: 50 finds 4 of 6 (3 of 6) and 25 4 of 6 (2 of 6, with refusals), but below 100 a round
#: loses an unpainted lesion the base model found, so 100 stays; a stroke share of 0.9
#: changed nothing. Those were rounds of 100 steps; with up to 300, checked every 100
#: (``stages``), v7 finds 6 of 6 and 5 of 6, and 12 of 15 after five rounds; with up to
#: 500, 15 of 15 (``stages``). A step of 2e-3 for up to 750 steps instead of 3e-3 for 500
#: (the same distance) finds 6 of 6 large ones too, and answers the sample case's dab
#: at its first attempt (``stages``).
#: Full: on the sample case even 2.5e-6 grew two base specks past 10 mm^3 (the trust
#: region refuses).
MODE_DEFAULTS: dict[str, dict[str, float]] = {
    "fast": {"lr": 2e-3, "iterations": 750, "hold_weight": 100.0, "stroke_share": 0.8},
    "full": {"lr": 2e-5, "iterations": 20, "hold_weight": 1000.0, "stroke_share": 0.5},
}


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning round (the objective's terms are in ``objective``).

    Up to ``iterations`` AdamW steps of ``batch_size`` samples at ``lr``, the
    case checked every ``check_every`` of them (``stages``); an attempt that
    answers every stroke within the trust region runs on to win back a base
    candidate it lost away from them until ``recover_until`` steps
    (``lr``, ``iterations``, ``hold_weight`` and ``stroke_share`` None: :data:`MODE_DEFAULTS`
    of the mode the round runs in, :meth:`for_mode`); corrected slices are ``oversample``
    times as likely as the neighbouring ones (``neighbours`` per side);
    ``random_slices`` other slices join every step (fast mode: drawn afresh
    from the whole case; full mode: fixed samples). ``lesion_margin``: pixels
    of the network grid around lesion strokes left out of the anchor.
    ``centre_bias``: logits per squared network pixel by which a lesion
    stroke's bag prefers voxels near its centre (``objective.stroke_peaks``).
    Fast mode holds, in every step, the band of the case: the cells within
    ``hold_band`` logits under the candidate threshold or ``hold_gap`` under
    the faintest lesion stroke, at most ``band_cells`` of them, at
    ``hold_weight``; and ``risers``, the cells under the band the network
    lifts most, re-mined every ``mine_every`` steps, at ``riser_weight``.
    ``trust`` bounds what may change away from the strokes; ``backoffs``
    retries, each with half the step size, before a round is refused.
    ``dropout_rate``: sequence dropout probability; ``dropout_draws``:
    presence draws per sample (the first is the case's own).
    """

    mode: str = "auto"
    unmarked: str = "teacher"
    alpha: float = 3.0
    beta: float = 0.1
    keep_threshold: float = 0.5
    stroke_share: float | None = None
    stroke_target: float = 0.9
    centre_bias: float = 0.5
    lesion_margin: int = 3
    anchor_weight: float = 1.0
    hold_weight: float | None = None
    hold_gap: float = 2.0
    hold_band: float = 6.0
    band_cells: int = 40000
    risers: int = 2000
    mine_every: int = 20
    riser_weight: float = 10.0
    iterations: int | None = None
    check_every: int = 100
    recover_until: int = 450
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
        for name in (
            "iterations",
            "check_every",
            "batch_size",
            "dropout_draws",
            "mine_every",
            "band_cells",
        ):
            if (getattr(self, name) or 1) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must lie in [0, 1), got {self.dropout_rate}")
        if self.oversample <= 0 or not 0 < (self.stroke_share or 1) <= 1:
            raise ValueError(
                "oversample must be > 0 and stroke_share in (0, 1], got "
                f"{self.oversample}, {self.stroke_share}"
            )
        if not 0 < self.stroke_target < 1 or self.lesion_margin < 0:
            raise ValueError(
                "stroke_target must lie in (0, 1) and lesion_margin be >= 0, got "
                f"{self.stroke_target}, {self.lesion_margin}"
            )
        if (self.lr or 1) <= 0 or (self.hold_weight or 0) < 0:
            raise ValueError(
                f"lr must be > 0 and hold_weight >= 0, got {self.lr}, {self.hold_weight}"
            )
        if self.backoffs < 0:
            raise ValueError(f"backoffs must be >= 0, got {self.backoffs}")

    def for_mode(self, mode: str) -> FinetuneConfig:
        """This config with ``mode`` (fast or full) and its :data:`MODE_DEFAULTS` where left None."""
        unset = {
            name: value
            for name, value in MODE_DEFAULTS[mode].items()
            if getattr(self, name) is None
        }
        unset["iterations"] = int(unset.get("iterations", self.iterations))
        return replace(self, mode=mode, **unset)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        data = dict(data)
        if isinstance(data.get("trust"), dict):
            data["trust"] = TrustRegion(**data["trust"])
        return cls(**data)
