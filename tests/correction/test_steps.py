"""Fast mode holds every base candidate of the case, not only those on the sampled slices."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_metseg.case import SEQUENCES, Case, Geometry
from napari_metseg.correction.cache import CaseContext
from napari_metseg.correction.samples import LESION, empty_corrections, select_samples
from napari_metseg.correction.steps import KeptCells
from napari_metseg.model import load_model
from napari_metseg.preprocess import prepare_case

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cached(tiny_model_path):
    rng = np.random.default_rng(3)
    images = {name: rng.random((5, 32, 32), dtype=np.float32) for name in SEQUENCES}
    case = Case(images, Geometry((5, 32, 32), np.eye(4), (5, 32, 32), np.eye(4)), name="noise")
    model = load_model(tiny_model_path)
    prepared = prepare_case(case, model.config.sequences, config=model.config.preprocess)
    cache = CaseContext.build(model, prepared, torch.device("cpu"))
    # a candidate threshold that half of the case's voxels pass
    threshold = float(torch.sigmoid(torch.quantile(cache.teacher.flatten(), 0.5)))
    return model, cache, threshold


def _kept(cached, marked_slice: np.ndarray) -> KeptCells:
    model, cache, threshold = cached
    corrections = empty_corrections((5, 32, 32))
    corrections[marked_slice] = LESION
    samples = select_samples(corrections, 32, None, neighbours=0, random_slices=0)
    return KeptCells.find(model, cache, samples, margin=1, threshold=threshold)


def test_the_cells_near_the_marks_are_left_to_the_strokes(cached) -> None:
    one_voxel = np.zeros((5, 32, 32), dtype=bool)
    one_voxel[0, 0, 0] = True
    whole_slice = np.zeros((5, 32, 32), dtype=bool)
    whole_slice[2] = True  # leaves slices 0 and 4 (1-3 are the marked one and its neighbours)
    everywhere, away = _kept(cached, one_voxel), _kept(cached, whole_slice)
    assert everywhere.teacher.numel() > away.teacher.numel() > 0


def test_the_hold_charges_only_a_decoder_that_drops_the_candidates(cached) -> None:
    model, _, threshold = cached
    kept = _kept(cached, np.eye(1, 5 * 32 * 32, dtype=bool).reshape(5, 32, 32))
    lowered = copy.deepcopy(model)
    with torch.no_grad():
        lowered.decoder_parameters()[-1][1] -= 5.0  # the classifier's lesion bias
    assert kept.hold(model, threshold, gap=0.0) == 0.0
    assert kept.hold(lowered, threshold, gap=0.0) > 1.0
