"""Score a network on prepared cases with a chosen set of sequences present.

Validation during training and the experiments of ``experiments/reproduce.py``
ask the same question (how well does this network find the lesions of these
cases when only these sequences are switched on?), so both go through
:func:`evaluate_network`. Cases come from
:func:`napari_metseg.training.datasets.prepare_cases`, already normalised,
resized and CLAHE'd, so scoring a network under several presence settings
pre-processes each case once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from napari_metseg.errors import SequenceError
from napari_metseg.metrics import CaseEvaluation, DatasetEvaluation, evaluate_case, evaluate_dataset
from napari_metseg.model import apply_presence
from napari_metseg.preprocess import restore_slices, stack_25d
from napari_metseg.training.datasets import TrainingCase

#: Slices per forward pass.
EVALUATION_BATCH = 16


def predict_case(
    network: nn.Module,
    case: TrainingCase,
    present: np.ndarray,
    context: int,
    device: torch.device,
    amp: bool = False,
) -> np.ndarray:
    """Lesion probability ``(n_slices, size, size)`` on the network grid (non-tissue: 0).

    ``present``: bool ``(n_seq,)`` sequences switched on; a sequence the case
    lacks stays off. ``amp``: float16 autocast (CUDA).
    """
    flags = torch.from_numpy(case.present & present)
    probability = np.zeros(case.mask.shape, dtype=np.float32)
    slices = np.flatnonzero(case.tissue)
    network.eval()
    with torch.inference_mode():
        for start in range(0, slices.size, EVALUATION_BATCH):
            chunk = slices[start : start + EVALUATION_BATCH]
            x = torch.from_numpy(stack_25d(case.volumes, chunk, context).astype(np.float32))
            x = apply_presence(x, flags.expand(chunk.size, -1)).to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = network(x)
            probability[chunk] = torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy()
    return probability


def evaluate_network(
    network: nn.Module,
    cases: Sequence[TrainingCase],
    present: np.ndarray,
    context: int,
    device: torch.device,
    amp: bool = False,
) -> tuple[DatasetEvaluation, list[CaseEvaluation]]:
    """Pooled and per-case scores of ``network`` on ``cases`` with ``present`` sequences on.

    Probabilities go back to each case's native grid and are scored against
    its ``truth`` (METHOD.md rules: 0.10 candidates, 1 mm TP rule). Cases
    holding none of the ``present`` sequences are skipped; raises
    :class:`SequenceError` when that leaves no case.
    """
    evaluations = []
    for case in cases:
        if not (case.present & present).any():
            continue
        probability = predict_case(network, case, present, context, device, amp)
        probability = restore_slices(probability, case.truth.shape)
        evaluations.append(evaluate_case(probability, case.truth, case.geometry, name=case.name))
    if not evaluations:
        raise SequenceError("no case holds any of the sequences switched on")
    return evaluate_dataset(evaluations), evaluations
