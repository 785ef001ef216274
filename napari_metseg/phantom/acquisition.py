"""Per-case variations of how a phantom is acquired: tissue contrast and slice thickness.

Real heads differ from the generator's fixed contrast table (scanner, field
strength, sequence parameters), and FLAIR is often a 2D acquisition of 3-5 mm
slices. A network trained on one table and on isotropic FLAIR learns those
exact intensities and edges; these variations take that crutch away.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Entries of a contrast table that are intensities or gains (not vessel factors).
_INTENSITIES = (
    "gm",
    "wm",
    "csf",
    "scalp",
    "lesion",
    "necrosis",
    "oedema",
    "mimic",
    "enhancing_gain",
)


def jitter_contrast(
    table: dict[str, float], rng: np.random.Generator, sigma: float
) -> dict[str, float]:
    """``table`` with each tissue intensity times an independent log-normal factor.

    ``sigma`` is the factor's log standard deviation (0.1: about +-10 %).
    """
    factors = rng.lognormal(0.0, sigma, size=len(_INTENSITIES))
    return table | {
        name: table[name] * float(f) for name, f in zip(_INTENSITIES, factors, strict=True)
    }


def thick_slices(image: np.ndarray, spacing: float, thickness_mm: float) -> np.ndarray:
    """``image`` as a 2D acquisition of axial slices ``thickness_mm`` thick.

    Each slab of ``thickness / spacing`` grid planes along the last (inferior-
    superior) axis is averaged, then the slab centres are interpolated back to
    the grid: partial volume across slices and blurred through-plane edges.
    """
    planes = max(1, round(thickness_mm / spacing))
    if planes == 1:
        return image
    depth = image.shape[-1]
    slabs = ndimage.uniform_filter1d(image, planes, axis=-1, mode="nearest")
    centres = np.arange(planes // 2, depth, planes)
    coarse = slabs[..., centres]
    position = np.clip((np.arange(depth) - centres[0]) / planes, 0, len(centres) - 1)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, len(centres) - 1)
    weight = (position - lower).astype(np.float32)
    return (coarse[..., lower] * (1 - weight) + coarse[..., upper] * weight).astype(np.float32)
