"""Phantoms drawn differently per case, so a model trained on them holds elsewhere.

A model trained on one generator setting learns its voxel size, contrasts,
noise and lesion look; heads drawn differently (1 mm, other contrasts, ring
lesions, many vessels) then lose most lesions under 5 mm. :func:`randomised`
draws every such setting from the case's seed: voxel size 0.9-1.5 mm,
contrast per tissue and sequence (gain per sequence is drawn by the generator
anyway), bias-field strength, noise level, vessel density, thick-slice FLAIR
in a third of the cases, subtle (low-enhancement) lesions in half and ring
lesions from 3 mm in half. The same seed always gives the same draw.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from napari_metseg.phantom.generate import PhantomConfig

#: Ranges :func:`randomised` draws from (uniform unless said otherwise).
SPACING_MM = (0.9, 1.5)
NOISE = (0.015, 0.08)
BIAS = (0.05, 0.4)
VESSELS = (20, 200)
CONTRAST_JITTER = (0.05, 0.2)
#: FLAIR slice thicknesses of 2D acquisitions, drawn in a third of the cases.
FLAIR_THICKNESS_MM = (3.0, 4.0, 5.0)
#: Enhancement of subtle lesions (the generator's default is 0.3-0.7).
SUBTLE_ENHANCEMENT = (0.12, 0.7)
#: Stream of the settings draw, apart from the generator's own stream of the seed.
_STREAM = 0x5E771


def randomised(seed: int, base: PhantomConfig | None = None) -> tuple[float, PhantomConfig]:
    """``(spacing_mm, config)`` for the phantom of ``seed``; ``base`` keeps its lesion sizes."""
    base = base or PhantomConfig()
    rng = np.random.default_rng([_STREAM, seed])
    spacing = round(float(rng.uniform(*SPACING_MM)), 2)
    thick = rng.random() < 1 / 3
    config = replace(
        base,
        noise=float(rng.uniform(*NOISE)),
        bias=float(rng.uniform(*BIAS)),
        n_vessels=int(rng.integers(VESSELS[0], VESSELS[1] + 1)),
        contrast_jitter=float(rng.uniform(*CONTRAST_JITTER)),
        flair_thickness_mm=float(rng.choice(FLAIR_THICKNESS_MM)) if thick else 0.0,
        enhancement_range=SUBTLE_ENHANCEMENT if rng.random() < 0.5 else base.enhancement_range,
        ring_from_mm=3.0 if rng.random() < 0.5 else base.ring_from_mm,
    )
    return spacing, config
