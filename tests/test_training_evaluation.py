"""Scoring a network on prepared cases under a presence setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_metseg.case import Geometry
from napari_metseg.errors import SequenceError
from napari_metseg.preprocess import PreparedCase, PreprocessConfig
from napari_metseg.training.datasets import TrainingCase
from napari_metseg.training.evaluation import evaluate_network

CONFIG = PreprocessConfig(size=16, context=1)


class FirstSequenceOracle(nn.Module):
    """Lesion logit = 20 * (channel 1 - 0.5): channel 1 is sequence 0's centre slice
    (context 1), which the test case makes 1 exactly on its lesion."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lesion = 20.0 * (x[:, 1] - 0.5)
        return torch.stack([torch.zeros_like(lesion), lesion], dim=1)


def lesion_case() -> TrainingCase:
    truth = np.zeros((6, 16, 16), dtype=np.uint8)
    truth[2:4, 5:8, 5:8] = 1
    volumes = np.stack([truth, np.zeros_like(truth)]).astype(np.float16)
    geometry = Geometry((6, 16, 16), np.eye(4), (6, 16, 16), np.eye(4))
    prepared = PreparedCase(
        volumes, ("a", "b"), np.array([True, True]), (6, 16, 16), np.ones(6, bool), CONFIG
    )
    return TrainingCase("case", prepared, truth, truth > 0, geometry)


def test_a_network_that_reads_the_lesion_finds_it_only_with_that_sequence_on():
    case, network, cpu = lesion_case(), FirstSequenceOracle(), torch.device("cpu")
    both = np.array([True, True])
    pooled, cases = evaluate_network(network, [case], both, cpu)
    assert pooled.max_sensitivity == 1.0 and pooled.average_precision == 1.0
    assert cases[0].tp_dice == pytest.approx(1.0)
    # sequence 0 off: its channels are zeros, the oracle sees nothing
    pooled, _ = evaluate_network(network, [case], np.array([False, True]), cpu)
    assert pooled.max_sensitivity == 0.0 and pooled.n_lesions == 1


def test_no_case_with_a_present_sequence_is_an_error():
    case = lesion_case()
    case.prepared.present = np.array([True, False])
    with pytest.raises(SequenceError, match="no case"):
        evaluate_network(FirstSequenceOracle(), [case], np.array([False, True]), "cpu")
