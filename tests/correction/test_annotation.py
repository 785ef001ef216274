"""The lesions an annotator sees: the model's candidates with their marks applied."""

from __future__ import annotations

import numpy as np
import pytest

from napari_metseg.case import Geometry
from napari_metseg.correction import LESION, NOT_LESION, annotated_lesions, empty_corrections
from napari_metseg.correction.annotation import PAINTED
from napari_metseg.correction.outcome import stroke_outcome
from napari_metseg.errors import GeometryError

GRID = Geometry.from_source((20, 20, 8), np.eye(4))  # internal (8, 20, 20), 1 mm^3 voxels


def _model_lesions() -> np.ndarray:
    probability = np.zeros(GRID.shape, dtype=np.float32)
    probability[1:3, 2:5, 2:5] = 0.8  # a lesion the model finds
    probability[5, 14:16, 14:16] = 0.3  # a false positive
    probability[6, 10, 10] = 0.05  # a faint lesion it misses
    return probability


def test_a_painted_lesion_joins_and_a_rejected_one_leaves_the_table() -> None:
    probability = _model_lesions()
    corrections = empty_corrections(GRID.shape)
    corrections[6, 9:12, 9:12] = LESION  # a 3x3 dab on the missed lesion
    corrections[5, 14:16, 14:16] = NOT_LESION  # every voxel of the false positive
    table, labels = annotated_lesions(probability, corrections, GRID)
    assert len(table) == 2 and table[PAINTED].tolist() == [False, True]
    dab = table.iloc[1]
    assert dab["voxels"] == 9 and dab["confidence"] == pytest.approx(0.05 / 9)  # the model's
    assert labels[6, 10, 10] == dab["label"] and not labels[5].any()
    # the model's own answer is unchanged: it still misses the painted lesion
    outcome = stroke_outcome(corrections, probability)
    assert (outcome.found, outcome.cleared) == (0, 0)


def test_a_mark_on_part_of_a_lesion_keeps_its_component_and_cuts_only_what_is_marked() -> None:
    probability = _model_lesions()
    corrections = empty_corrections(GRID.shape)
    corrections[1, 2, 2] = LESION  # accept a voxel of the found lesion
    corrections[2, 2:5, 2:5] = NOT_LESION  # its lower slice is not lesion
    table, labels = annotated_lesions(probability, corrections, GRID)
    assert table["voxels"].tolist() == [9, 4] and table[PAINTED].tolist() == [True, False]
    assert not labels[2].any()


def test_painted_lesions_stay_below_the_minimum_volume_and_at_any_threshold() -> None:
    probability = _model_lesions()
    corrections = empty_corrections(GRID.shape)
    corrections[6, 10, 10] = LESION  # one voxel: 1 mm^3
    table, _ = annotated_lesions(probability, corrections, GRID, 0.9, min_volume_mm3=5.0)
    assert table["voxels"].tolist() == [1] and table[PAINTED].tolist() == [True]


def test_without_marks_the_table_is_the_models_own() -> None:
    probability = _model_lesions()
    for corrections in (None, empty_corrections(GRID.shape)):
        table, labels = annotated_lesions(probability, corrections, GRID)
        assert table["voxels"].tolist() == [18, 4] and not table[PAINTED].any()
        np.testing.assert_array_equal(labels > 0, probability >= 0.1)


def test_marks_off_the_grid_are_refused() -> None:
    with pytest.raises(GeometryError, match="do not match the case grid"):
        annotated_lesions(_model_lesions(), np.zeros((8, 20, 19), np.uint8), GRID)
