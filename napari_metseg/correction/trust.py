"""The trust region of a fine-tuning round: what may change away from the strokes.

A correction round is told about a few voxels. Near them the prediction
should change (that is the point); far from them a good round adds at most
the few lesions it learned to recognise from the painted ones. So after
training, the new prediction is compared with the base model's on the voxels
farther than ``margin_mm`` from every stroke: the lesion volume there (voxels
at or above the candidate threshold) may grow to at most ``growth_factor``
times the base's plus ``growth_mm3``. A round over the bound is retried with
smaller steps, and refused with a clear message when even those run away, so
the annotator never sees a runaway model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_metseg.case import Geometry
from napari_metseg.correction.samples import UNMARKED
from napari_metseg.lesions import CANDIDATE_THRESHOLD


@dataclass(frozen=True)
class TrustRegion:
    """Bound on the lesion volume a round may add away from its strokes (module docstring).

    The defaults are the correction benchmark's targets: at most 1.5x the
    base's volume plus 2 cm^3, beyond 15 mm of any stroke (a large lesion
    painted at its centre stays inside that margin).
    """

    margin_mm: float = 15.0
    growth_factor: float = 1.5
    growth_mm3: float = 2000.0
    threshold: float = CANDIDATE_THRESHOLD

    def __post_init__(self) -> None:
        if self.margin_mm < 0 or self.growth_factor < 1 or self.growth_mm3 < 0:
            raise ValueError(
                "margin_mm and growth_mm3 must be >= 0 and growth_factor >= 1, got "
                f"{self.margin_mm}, {self.growth_mm3}, {self.growth_factor}"
            )
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")


@dataclass(frozen=True)
class Growth:
    """Lesion volume (mm^3) away from the strokes, before and after a round, and the bound."""

    base_mm3: float
    new_mm3: float
    allowed_mm3: float

    @property
    def within(self) -> bool:
        return self.new_mm3 <= self.allowed_mm3

    def describe(self) -> str:
        return (
            f"{self.new_mm3 / 1000:.1f} cm^3 of lesion away from the strokes "
            f"(base model {self.base_mm3 / 1000:.1f} cm^3, allowed {self.allowed_mm3 / 1000:.1f})"
        )


def away_from_strokes(corrections: np.ndarray, geometry: Geometry, margin_mm: float) -> np.ndarray:
    """Bool volume: voxels farther than ``margin_mm`` (per axis) from every marked voxel.

    The margin is a box in millimetres around each stroke (cheap on a whole
    case, and a lesion painted at its centre fits it).
    """
    near = corrections != UNMARKED
    radius = [int(np.ceil(margin_mm / step)) for step in geometry.spacing]
    for axis, reach in enumerate(radius):
        if reach:
            near = ndimage.maximum_filter1d(near, size=2 * reach + 1, axis=axis)
    return ~near


def lesion_growth(
    probability: np.ndarray,
    base: np.ndarray,
    away: np.ndarray,
    voxel_mm3: float,
    region: TrustRegion,
) -> Growth:
    """How much lesion ``probability`` holds on ``away`` compared with ``base`` (case grid)."""
    before = float(np.count_nonzero((base >= region.threshold) & away)) * voxel_mm3
    after = float(np.count_nonzero((probability >= region.threshold) & away)) * voxel_mm3
    if not np.isfinite(probability).all():  # a diverged round: NaN compares as no lesion
        after = float("inf")
    return Growth(before, after, region.growth_factor * before + region.growth_mm3)
