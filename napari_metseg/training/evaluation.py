"""Score a network on prepared cases with a chosen set of sequences present.

Validation during training and the experiments of ``experiments/reproduce.py``
ask the same question (how well does this network find the lesions of these
cases when only these sequences are switched on?), so both go through
:func:`evaluate_network`. Cases come from
:func:`napari_metseg.training.datasets.prepare_cases`, already normalised,
resized and CLAHE'd (the engine's :class:`~napari_metseg.preprocess.PreparedCase`),
so scoring a network under several presence settings
pre-processes each case once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from napari_metseg.engine import Segmenter
from napari_metseg.errors import SequenceError
from napari_metseg.metrics import CaseEvaluation, DatasetEvaluation, evaluate_case, evaluate_dataset
from napari_metseg.preprocess import restore_slices
from napari_metseg.training.datasets import TrainingCase

#: Slices per forward pass.
EVALUATION_BATCH = 16


def evaluate_network(
    network: nn.Module,
    cases: Sequence[TrainingCase],
    present: np.ndarray,
    device: torch.device | str,
) -> tuple[DatasetEvaluation, list[CaseEvaluation]]:
    """Pooled and per-case scores of ``network`` on ``cases`` with ``present`` sequences on.

    ``present``: bool ``(n_seq,)`` sequences switched on; a sequence a case
    lacks stays off. The engine's :class:`Segmenter` predicts (its precision,
    as the GUI's), probabilities go back to each case's native grid and are
    scored against its ``truth`` (METHOD.md rules: candidates at
    :data:`~napari_metseg.thresholds.CANDIDATE_THRESHOLD`, 1 mm TP rule).
    Cases holding none of the ``present`` sequences are skipped; raises
    :class:`SequenceError` when that leaves no case. Leaves ``network`` in
    eval mode.
    """
    segmenter = Segmenter(network, device, EVALUATION_BATCH)
    evaluations = []
    for case in cases:
        flags = case.present & present
        if not flags.any():
            continue
        probability, _ = segmenter.predict_prepared(replace(case.prepared, present=flags))
        probability = restore_slices(probability, case.truth.shape)
        evaluations.append(evaluate_case(probability, case.truth, case.geometry, name=case.name))
    if not evaluations:
        raise SequenceError("no case holds any of the sequences switched on")
    return evaluate_dataset(evaluations), evaluations
