"""Fast mode holds the whole case: the band near the threshold, and the cells a round lifts most."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from napari_metseg.case import SEQUENCES, Case, Geometry
from napari_metseg.correction import FinetuneConfig
from napari_metseg.correction.cache import CaseContext
from napari_metseg.correction.hold import CaseHold
from napari_metseg.correction.samples import (
    LESION,
    NOT_LESION,
    empty_corrections,
    select_samples,
)
from napari_metseg.correction.steps import make_batches
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


def _hold(cached, marked_slice: np.ndarray, lowest: float, limit: int = 10**6) -> CaseHold:
    model, cache, _ = cached
    corrections = empty_corrections((5, 32, 32))
    corrections[marked_slice] = LESION
    samples = select_samples(corrections, 32, None, neighbours=0, random_slices=0)
    return CaseHold.find(model, cache, samples, margin=1, lowest=lowest, limit=limit)


def _one_voxel() -> np.ndarray:
    return np.eye(1, 5 * 32 * 32, dtype=bool).reshape(5, 32, 32)


def _logit(probability: float) -> float:
    return math.log(probability / (1 - probability))


def test_the_cells_near_the_marks_are_left_to_the_strokes(cached) -> None:
    whole_slice = np.zeros((5, 32, 32), dtype=bool)
    whole_slice[2] = True  # leaves slices 0 and 4 (1-3 are the marked one and its neighbours)
    everywhere, away = _hold(cached, _one_voxel(), -math.inf), _hold(cached, whole_slice, -math.inf)
    assert everywhere.band_teacher.numel() > away.band_teacher.numel() > 0


def test_the_band_is_the_cells_above_its_floor_the_most_lesion_like_first(cached) -> None:
    cut = float(_hold(cached, _one_voxel(), -math.inf).cells_teacher.median())
    band = _hold(cached, _one_voxel(), cut)
    assert band.band_teacher.numel() > 7
    assert (band.band_teacher > cut).all() and (band.cells_teacher[band.outside] <= cut).all()
    capped = _hold(cached, _one_voxel(), cut, limit=7)
    torch.testing.assert_close(
        capped.band_teacher.sort().values, band.band_teacher.sort().values[-7:]
    )


def test_the_hold_charges_only_a_decoder_that_drops_the_candidates(cached) -> None:
    model, _, threshold = cached
    kept = _hold(cached, _one_voxel(), _logit(threshold))
    lowered = copy.deepcopy(model)
    with torch.no_grad():
        lowered.decoder_parameters()[-1][1] -= 5.0  # the classifier's lesion bias
    assert kept.hold(model, threshold, gap=0.0) == 0.0
    assert kept.hold(lowered, threshold, gap=0.0) > 1.0


def test_the_risers_are_the_cells_under_the_band_a_network_lifts_most(cached) -> None:
    model, cache, _ = cached
    threshold = float(torch.sigmoid(cache.teacher.max() + 0.5))  # no base candidate
    floor = float(torch.quantile(cache.teacher.flatten(), 0.9))
    hold = _hold(cached, _one_voxel(), floor)
    assert hold.hold_risers(model, threshold, gap=0.0) == 0.0  # nothing mined yet
    lifted = copy.deepcopy(model)
    with torch.no_grad():
        lifted.decoder_parameters()[-1][1] += 5.0  # every cell rises by 5 logits
    hold.mine(lifted, 10, threshold, gap=0.0)
    assert hold.risers_teacher.numel() == 10 and hold.outside.sum() > 10
    below = hold.cells_teacher[hold.outside]
    assert (below <= floor).all()
    # the ten chosen are the highest of the cells under the band (a uniform rise)
    torch.testing.assert_close(hold.risers_teacher.sort().values, below.sort().values[-10:])
    assert hold.hold_risers(lifted, threshold, gap=0.0) > 0.0
    assert hold.hold_risers(model, threshold, gap=0.0) == 0.0


def test_lesion_strokes_count_only_with_the_cases_own_sequences(cached) -> None:
    """Under a sequence-dropout draw the painted lesion may be invisible: its marks are
    left free there (neither asked for nor anchored), 'not lesion' marks still count."""
    model, cache, threshold = cached
    corrections = empty_corrections((5, 32, 32))
    corrections[2, 10:13, 10:13] = LESION
    corrections[2, 20:22, 20:22] = NOT_LESION
    samples = select_samples(corrections, 32, None, neighbours=0, random_slices=0)
    config = FinetuneConfig(mode="fast", dropout_draws=2)
    batches = make_batches(model, cache.prepared, samples, config, "fast", cache.device, cache)
    none = np.zeros(0, dtype=np.int64)
    _, marks, _, free = batches.batch(model, np.array([0, 0]), np.array([0, 1]), none)
    own, dropped = marks.numpy()
    assert (own == LESION).sum() == 9 and (dropped == LESION).sum() == 0
    assert (own == NOT_LESION).sum() == (dropped == NOT_LESION).sum() == 4
    assert free[1][torch.from_numpy(own == LESION)].all()
