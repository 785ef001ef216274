"""Lesion censoring: simulate annotators who miss lesions (METHOD.md, "Robustness
to missed lesions").

A lesion is a 26-connected component of a 3D truth mask (faces, edges and
corners touch). Two ways of missing them, as in the study:

- ``stochastic``: every lesion is removed independently with probability
  ``rate``;
- ``size``: all lesions of all cases are ranked by volume and the smallest are
  removed until ``round(rate * n_lesions)`` are gone (small lesions are the
  ones experts miss most). Equal volumes are ordered by the seed.

Only voxels of removed lesions change; everything else of a mask is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

#: Censoring modes accepted by :func:`censor_lesions`.
CENSOR_MODES: tuple[str, ...] = ("stochastic", "size")

#: 26-connectivity in 3D.
STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class RemovedLesion:
    """One lesion taken out of a mask.

    ``case``: index of the mask in the input list; ``label``: its component
    number in that mask (``scipy.ndimage.label`` order, from 1); ``volume``:
    voxels, or mm^3 where voxel volumes were given; ``centroid``: mean voxel
    index ``(slice, row, col)``.
    """

    case: int
    label: int
    volume: float
    centroid: tuple[float, float, float]


@dataclass(frozen=True)
class CensorRecord:
    """What :func:`censor_lesions` did: its settings and every lesion removed."""

    mode: str
    rate: float
    seed: int
    n_lesions: int
    removed: tuple[RemovedLesion, ...]

    @property
    def n_removed(self) -> int:
        return len(self.removed)

    @property
    def removed_fraction(self) -> float:
        """Fraction of all lesions removed (0 when there were none)."""
        return self.n_removed / self.n_lesions if self.n_lesions else 0.0

    def to_json(self) -> dict:
        return {
            "mode": self.mode,
            "rate": self.rate,
            "seed": self.seed,
            "n_lesions": self.n_lesions,
            "n_removed": self.n_removed,
            "removed": [
                {
                    "case": lesion.case,
                    "label": lesion.label,
                    "volume": lesion.volume,
                    "centroid": list(lesion.centroid),
                }
                for lesion in self.removed
            ],
        }


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a 3D mask: ``(labels int32, count)``."""
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"a 3D mask (slice, row, col) is needed, got shape {mask.shape}")
    labels, count = ndimage.label(mask > 0, structure=STRUCTURE_26)
    return labels.astype(np.int32, copy=False), int(count)


def censor_lesions(
    masks: Sequence[np.ndarray],
    rate: float,
    mode: str = "stochastic",
    seed: int = 0,
    voxel_volumes: Sequence[float] | None = None,
) -> tuple[list[np.ndarray], CensorRecord]:
    """Remove a fraction ``rate`` of the lesions of ``masks``.

    ``masks``: 3D arrays ``(slice, row, col)``, nonzero = lesion. ``rate`` in
    ``[0, 1]``. ``mode``: ``"stochastic"`` or ``"size"`` (module docstring).
    ``voxel_volumes`` (mm^3 per voxel, one per mask) makes the size ranking
    compare physical volumes when cases differ in spacing; without it,
    voxels are counted. Returns copies of the masks (same dtypes) with the
    removed lesions set to 0, and a :class:`CensorRecord`.
    """
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"censoring rate must lie in [0, 1], got {rate}")
    if mode not in CENSOR_MODES:
        raise ValueError(f"unknown censoring mode {mode!r}; choose one of {list(CENSOR_MODES)}")
    if voxel_volumes is not None and len(voxel_volumes) != len(masks):
        raise ValueError(
            f"{len(voxel_volumes)} voxel volumes given for {len(masks)} masks; one per mask is needed"
        )
    rng = np.random.default_rng(seed)
    labelled = [label_lesions(mask) for mask in masks]
    lesions: list[RemovedLesion] = []
    for case, (labels, count) in enumerate(labelled):
        if count == 0:
            continue
        index = np.arange(1, count + 1)
        sizes = ndimage.sum_labels(np.ones(labels.shape, dtype=np.float64), labels, index)
        scale = 1.0 if voxel_volumes is None else float(voxel_volumes[case])
        centroids = ndimage.center_of_mass(labels > 0, labels, index)
        for label, size, centroid in zip(index, sizes, centroids, strict=True):
            lesions.append(
                RemovedLesion(
                    case, int(label), float(size) * scale, tuple(float(c) for c in centroid)
                )
            )
    if mode == "stochastic":
        chosen = [lesion for lesion in lesions if rng.random() < rate]
    else:
        n_remove = int(round(rate * len(lesions)))
        tie_break = rng.permutation(len(lesions))
        order = np.lexsort((tie_break, [lesion.volume for lesion in lesions]))
        chosen = sorted(
            (lesions[i] for i in order[:n_remove]), key=lambda lesion: (lesion.case, lesion.label)
        )
    censored = [np.array(mask, copy=True) for mask in masks]
    for case in sorted({lesion.case for lesion in chosen}):
        labels = labelled[case][0]
        gone = np.isin(labels, [lesion.label for lesion in chosen if lesion.case == case])
        censored[case][gone] = 0
    record = CensorRecord(mode, rate, int(seed), len(lesions), tuple(chosen))
    logger.info(
        "censoring (%s, rate %.2f, seed %d): removed %d of %d lesions",
        mode,
        rate,
        seed,
        record.n_removed,
        record.n_lesions,
    )
    return censored, record
