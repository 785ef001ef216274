"""The per-stroke answer of a round: painted lesions found, marked false ones gone."""

from __future__ import annotations

import numpy as np
import pytest

from napari_metseg.correction import LESION, NOT_LESION, empty_corrections
from napari_metseg.correction.outcome import StrokeOutcome, stroke_outcome


def test_a_painted_lesion_counts_once_a_candidate_covers_its_centre() -> None:
    corrections = empty_corrections((6, 20, 20))
    corrections[2, 3:6, 3:6] = LESION  # a dab, found: a candidate covers its centre
    corrections[2, 12:15, 12:15] = LESION  # a dab with a candidate only at its edge
    corrections[4, 3:6, 12:15] = LESION  # a dab nothing answers
    corrections[1, 8, 2:9] = LESION  # a stroke, found at its middle
    probability = np.zeros((6, 20, 20), dtype=np.float32)
    probability[2, 3:5, 3:5] = 0.5
    probability[2, 14, 14] = 0.9
    probability[3, 13, 13] = 0.2  # beside the second dab's centre, one slice up
    probability[4, 4, 13] = 0.09  # under the threshold
    probability[1, 7:10, 4:7] = 0.3
    outcome = stroke_outcome(corrections, probability)
    assert (outcome.painted, outcome.found) == (4, 2)
    assert outcome.summary() == "the model finds 2 of 4 painted lesions"


def test_a_marked_false_positive_is_gone_only_without_any_voxel_left() -> None:
    corrections = empty_corrections((4, 10, 10))
    corrections[1, 0:2, 0:2] = NOT_LESION
    corrections[2, 6:9, 6:9] = NOT_LESION
    probability = np.zeros((4, 10, 10), dtype=np.float32)
    probability[2, 8, 8] = 0.11
    assert stroke_outcome(corrections, probability) == StrokeOutcome(0, 0, 2, 1)
    assert (
        stroke_outcome(corrections, probability).summary()
        == "the model drops 1 of 2 marked false ones"
    )


def test_grids_must_match() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        stroke_outcome(empty_corrections((2, 3, 3)), np.zeros((2, 3, 4)))
