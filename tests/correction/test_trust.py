"""The trust region of a correction round, down to the runaway case of issue #13."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_metseg.case import Geometry
from napari_metseg.correction import (
    LESION,
    FinetuneConfig,
    TrustRegion,
    empty_corrections,
    finetune,
)
from napari_metseg.correction.trust import away_from_strokes, lesion_growth
from napari_metseg.engine import Segmenter
from napari_metseg.errors import RunawayError
from napari_metseg.lesions import label_components
from napari_metseg.model import load_model
from napari_metseg.phantom import make_phantom
from napari_metseg.preprocess import prepare_case, restore_slices


def test_the_margin_is_in_millimetres_per_axis() -> None:
    spacing = np.diag([3.0, 1.0, 1.0, 1.0])  # (slice, row, col) steps of 3, 1, 1 mm
    geometry = Geometry((20, 40, 40), spacing, (20, 40, 40), spacing)
    corrections = empty_corrections(geometry.shape)
    corrections[10, 20, 20] = LESION
    away = away_from_strokes(corrections, geometry, margin_mm=6.0)
    assert not away[10, 20, 26] and away[10, 20, 27]
    assert not away[12, 20, 20] and away[13, 20, 20]


def test_growth_counts_candidate_volume_away_from_the_strokes_only() -> None:
    base = np.zeros((4, 10, 10), np.float32)
    base[0, :2, :2] = 0.5
    new = base.copy()
    new[3, 5:, 5:] = 0.2  # 25 voxels of new lesion, away
    new[1, 0, 0] = 0.9  # near the stroke: not counted
    away = np.ones_like(base, dtype=bool)
    away[1] = False
    region = TrustRegion(growth_factor=1.5, growth_mm3=10, component_mm3=8.0)
    growth, sprouted = lesion_growth(new, base, away, 2.0, region)
    assert np.array_equal(sprouted, (new >= 0.1) & away & (base < 0.1))
    assert (growth.base_mm3, growth.new_mm3, growth.allowed_mm3) == (8.0, 58.0, 22.0)
    # the 25-voxel block is new; the grown voxel near the strokes is not counted
    assert (growth.new_candidates, growth.allowed_candidates) == (1, region.extra_components)
    assert not growth.within and "cm^3" in growth.describe()


def test_a_sprinkle_of_small_new_candidates_leaves_the_region() -> None:
    """Little volume, many new candidates: the count bound catches what the volume misses."""
    base = np.zeros((10, 40, 40), np.float32)
    new = base.copy()
    for i in range(3):
        new[2 * i, 4 * i : 4 * i + 3, :3] = 0.5  # three 9-voxel candidates
    away = np.ones_like(base, dtype=bool)
    base[0, :3, :3] = 0.5  # the first one was there before: not new
    region = TrustRegion(growth_mm3=1000.0, extra_components=1, component_mm3=9.0)
    growth, _ = lesion_growth(new, base, away, 1.0, region)
    assert growth.new_mm3 <= growth.allowed_mm3 and growth.new_candidates == 2
    assert not growth.within
    assert lesion_growth(new, base, away, 1.0, replace(region, extra_components=2))[0].within


def test_by_default_specks_have_their_own_small_count() -> None:
    """Issue #13: the user saw '12 new lesions' after a round, so specks count too; but
    the bundled model's full-mode round on one dab was refused for two 1-3 voxel specks,
    and fast rounds that lift a faint painted lesion sprout up to three."""
    base = np.zeros((8, 20, 20), np.float32)
    base[0, :3, :3] = 0.5
    new = base.copy()
    new[3, 10, 10] = new[5, 2, 15] = new[6, 17, 3] = 0.2  # three one-voxel specks
    away = np.ones_like(base, dtype=bool)
    region = TrustRegion()
    growth, sprouted = lesion_growth(new, base, away, 1.0, region)
    assert (growth.new_specks, growth.new_candidates) == (3, 0) and growth.within
    assert np.array_equal(np.flatnonzero(sprouted.any(axis=(1, 2))), [3, 5, 6])  # held on retry
    new[7, 15, 15] = 0.2  # a fourth speck
    growth, _ = lesion_growth(new, base, away, 1.0, region)
    assert growth.new_specks == region.extra_specks + 1 and not growth.within
    assert "4 new specks" in growth.describe()
    new[7, 15, 15] = 0.0
    new[7, 10:13, 10:14] = 0.2  # 12 mm^3: a candidate of the false-positive size
    growth, _ = lesion_growth(new, base, away, 1.0, region)
    assert (growth.new_specks, growth.new_candidates) == (3, 1) and growth.within


def test_a_base_speck_grown_to_the_false_positive_size_counts_as_new() -> None:
    """On an H200 a full-mode round took a case from 4.5 to 9.5 false positives of
    10 mm^3 or more while only candidates out of nothing counted: base specks grew."""
    base = np.zeros((6, 20, 20), np.float32)
    base[2, :2, :2] = 0.5  # a 4 mm^3 speck
    base[4, 10:14, 10:14] = 0.5  # a 16 mm^3 candidate
    new = base.copy()
    new[2, :3, :4] = 0.5  # the speck grown to 12 mm^3
    new[4, 10:16, 10:16] = 0.5  # the candidate grown: the volume bound's business
    away = np.ones_like(base, dtype=bool)
    region = TrustRegion(extra_components=0)
    growth, held = lesion_growth(new, base, away, 1.0, region)
    assert (growth.new_candidates, growth.new_specks) == (1, 0) and not growth.within
    assert np.array_equal(np.flatnonzero(held.any(axis=(1, 2))), [2])
    new[2] = base[2]
    assert lesion_growth(new, base, away, 1.0, region)[0].within


def test_lost_base_candidates_are_counted_and_marked_for_the_retry() -> None:
    base = np.zeros((6, 20, 20), np.float32)
    base[1, :3, :3] = 0.5
    base[4, 10:12, 10:12] = 0.5
    new = base.copy()
    new[4] = 0.0  # the second base candidate is gone
    away = np.ones_like(base, dtype=bool)
    growth, held = lesion_growth(new, base, away, 1.0, TrustRegion())
    assert growth.lost_candidates == 1 and growth.within  # reported, not bounded by default
    assert np.array_equal(np.flatnonzero(held.any(axis=(1, 2))), [4])
    assert not lesion_growth(new, base, away, 1.0, TrustRegion(lost_components=0))[0].within


@pytest.fixture(scope="module")
def sample_case():
    """The sample case, the bundled model, its prediction, and a 1-voxel lesion it missed."""
    case = make_phantom(7, spacing=1.5)
    model = load_model()
    prepared = prepare_case(case, model.config.sequences, config=model.config.preprocess)
    stack, _ = Segmenter(model, "cpu").predict_prepared(prepared)
    base = restore_slices(stack, prepared.native_shape)
    truth, count = label_components(case.truth > 0)
    candidates, _ = label_components(base >= 0.10)
    sizes = np.bincount(truth.ravel())
    missed = [i for i in range(1, count + 1) if sizes[i] == 1 and not candidates[truth == i].any()]
    assert missed, "the sample case should hold a 1-voxel lesion the bundled model misses"
    return case, model, prepared, base, truth, missed[0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "full"])
def test_one_dab_on_a_one_voxel_lesion_stays_inside_the_bound(sample_case, mode) -> None:
    """Issue #13: a 3x3 stroke on a missed 1-voxel lesion once turned the brain into a lesion.

    Fast mode must take the round, at its own settings as the workbench runs it
    (with the bundled v7 its first attempt leaves the trust region by step 100,
    and the retry at half the step passes; at 30 steps every attempt grew two
    2-voxel base specks past the false-positive size). Full mode trains every weight: with the bundled model
    even its smallest retry grows two base specks of the sample case past the
    false-positive size (1.25e-6 would be needed), so it may refuse instead, which
    leaves the model as it was and says what to do.
    """
    case, model, prepared, base, truth, lesion = sample_case
    z, r, c = np.argwhere(truth == lesion)[0]
    corrections = empty_corrections(case.shape)
    corrections[z, r - 1 : r + 2, c - 1 : c + 2] = LESION
    config = FinetuneConfig(mode=mode, device="cpu", iterations=10 if mode == "full" else None)
    try:
        result = finetune(case, model, corrections, config, prepared=prepared, reference=base)
    except RunawayError as refusal:
        assert mode == "full", str(refusal)
        assert "the model is unchanged" in str(refusal) and "new candidates" in str(refusal)
        return
    trust = config.trust
    away = away_from_strokes(corrections, case.geometry, trust.margin_mm)
    volume = case.geometry.voxel_volume
    new = np.count_nonzero((result.probability >= 0.10) & away) * volume
    old = np.count_nonzero((base >= 0.10) & away) * volume
    assert new <= trust.growth_factor * old + trust.growth_mm3
    assert result.growth.within
    assert np.count_nonzero(result.probability >= 0.10) < 2 * np.count_nonzero(base >= 0.10) + 2000
