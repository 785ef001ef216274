"""Hard negatives: the training slices where the network draws lesion where there is none.

Slices with lesions are over-sampled (METHOD.md), so the network sees a plain
slice rarely, and the few plain slices that look like lesion rarer still. The
bundled v7 drew 36.9 false-positive candidates per unseen phantom without
``cube_post`` (5.4 with all four), most of them vessels, which enhance like a
lesion on ``bravo``: a vessel-bearing slice is one plain slice among thousands.
:func:`false_positive_slices` finds, with the network being trained, the
plain slices that carry such a false positive under the case's own sequences or
with any one of them switched off (the subsets sequence dropout trains for),
and :class:`~napari_metseg.training.sampling.SliceSampler` draws them
``TrainConfig.hard_negatives`` times as often as the other plain slices.
Lesion slices are left out: they are drawn ``oversample`` times as often
already, and a false positive beside a lesion is trained on with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from napari_metseg.engine import Segmenter
from napari_metseg.presence import each_one_off
from napari_metseg.thresholds import CANDIDATE_THRESHOLD
from napari_metseg.training.datasets import TrainingCase
from napari_metseg.training.evaluation import EVALUATION_BATCH

#: Pixels (network grid) at the threshold a slice must hold to count: one stray pixel is
#: noise, a candidate of the 10 mm^3 the false-positive count uses covers a few.
MIN_PIXELS = 4


def false_positive_slices(
    network: nn.Module,
    cases: Sequence[TrainingCase],
    sequences: Sequence[str],
    device: torch.device | str,
    threshold: float = CANDIDATE_THRESHOLD,
) -> list[np.ndarray]:
    """Per case, bool ``(n_slices,)``: the tissue slices without lesion where ``network``
    puts ``MIN_PIXELS`` or more pixels at ``threshold`` or above, with the case's
    ``sequences`` (channel order) or with any one of them switched off. Leaves ``network``
    in eval mode."""
    segmenter = Segmenter(network, device, EVALUATION_BATCH)
    hard = []
    for case in cases:
        found = np.zeros(case.mask.shape[0], dtype=bool)
        own = list(np.asarray(sequences)[case.present])
        plain = replace(case.prepared, tissue=case.tissue & ~case.lesion_slices)
        for _, subset in each_one_off(own):
            flags = np.isin(sequences, subset)
            probability, _ = segmenter.predict_prepared(replace(plain, present=flags))
            pixels = np.count_nonzero(probability >= threshold, axis=(1, 2))
            found |= pixels >= MIN_PIXELS
        hard.append(found)
    return hard
