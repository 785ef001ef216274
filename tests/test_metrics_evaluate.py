"""evaluate_case / evaluate_dataset edge cases and pooling; Hanley-McNeil and Wilcoxon."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from napari_metseg.metrics import (
    evaluate_case,
    evaluate_dataset,
    hanley_mcneil_ci,
    precision_recall,
    wilcoxon_rank_sum,
)

SPACING = (2.0, 1.0, 1.0)


def truth_with_lesions() -> np.ndarray:
    """Three lesions: a 2x3x3 block (36 mm^3), a 1x2x2 block (8 mm^3), a single voxel."""
    truth = np.zeros((10, 16, 16), bool)
    truth[2:4, 2:5, 2:5] = True
    truth[7, 10:12, 10:12] = True
    truth[5, 14, 1] = True
    return truth


def test_a_perfect_prediction_scores_one_everywhere():
    truth = truth_with_lesions()
    result = evaluate_case(np.where(truth, 0.9, 0.01).astype(np.float32), truth, SPACING)
    assert (result.n_lesions, result.n_candidates, result.n_detected) == (3, 3, 3)
    assert result.average_precision == 1.0 and result.max_sensitivity == 1.0
    assert result.tp_dice == 1.0 and result.lesion_dice == 1.0
    assert result.dice == 1.0 and result.auc == 1.0
    assert (result.false_positives, result.false_positives_min_volume) == (0, 0)
    # truth lesions in scan order: the 2x3x3 block, the single voxel (slice 5), the 1x2x2 block
    assert result.lesions["volume_mm3"].tolist() == [36.0, 2.0, 8.0]
    # block: corner centres (2, 2, 2) mm apart, plus a voxel's width (2 + 1 + 1) / sqrt(3) along it
    diagonal = 2 * np.sqrt(3) + 4 / np.sqrt(3)
    assert result.lesions["diameter_mm"].tolist() == pytest.approx([diagonal, 2.0, np.sqrt(8)])


def test_no_ground_truth_lesions():
    probability = np.zeros((10, 16, 16), np.float32)
    probability[2, 2:5, 2:5] = 0.8  # 9 voxels, 18 mm^3
    probability[7, 10, 10] = 0.8  # 2 mm^3
    result = evaluate_case(probability, np.zeros_like(probability), SPACING)
    assert result.n_lesions == 0 and result.n_candidates == 2 and result.n_true_positives == 0
    assert math.isnan(result.average_precision) and math.isnan(result.max_sensitivity)
    assert math.isnan(result.auc) and math.isnan(result.recall) and math.isnan(result.lesion_dice)
    assert result.dice == 0.0
    assert (result.false_positives, result.false_positives_min_volume) == (2, 1)
    assert result.size_sensitivity["lesions"].sum() == 0


def test_no_predictions():
    truth = truth_with_lesions()
    result = evaluate_case(np.zeros(truth.shape, np.float32), truth, SPACING)
    assert result.n_candidates == 0
    assert result.average_precision == 0.0 and result.max_sensitivity == 0.0
    assert math.isnan(result.tp_dice) and result.lesion_dice == 0.0
    assert result.dice == 0.0 and math.isnan(result.precision) and result.recall == 0.0
    assert result.auc == 0.5


def test_partial_prediction_by_hand():
    truth = truth_with_lesions()
    probability = np.zeros(truth.shape, np.float32)
    probability[2:4, 2:5, 2:4] = 0.8  # 12 of the 18 voxels of lesion 1
    probability[7, 10:12, 10:12] = 0.3  # lesion 2 at low confidence (below the 0.5 voxel cut)
    probability[8, 0:5, 14] = 0.6  # a 10 mm^3 false positive at 0.6
    result = evaluate_case(probability, truth, SPACING)
    # ranking: lesion 1 (0.8, TP), FP (0.6), lesion 2 (0.3, TP); 3 lesions
    assert result.candidates["is_tp"].tolist() == [True, False, True]
    assert result.average_precision == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3)
    assert result.max_sensitivity == pytest.approx(2 / 3)
    assert result.candidates["dice"].iloc[0] == pytest.approx(2 * 12 / (12 + 18))
    assert result.tp_dice == pytest.approx((0.8 + 1.0) / 2)
    assert result.lesion_dice == pytest.approx((0.8 + 1.0 + 0.0) / 3)
    # voxels at 0.5: 12 TP, 5 FP, 18 - 12 + 4 + 1 = 11 FN
    assert result.dice == pytest.approx(2 * 12 / (2 * 12 + 5 + 11))
    assert (result.false_positives, result.false_positives_min_volume) == (1, 1)
    strata = result.size_sensitivity.set_index("stratum")
    # diameters 5.8, 2.0 and 2.8 mm: the two small ones, of which the 1x2x2 block was found
    assert strata.loc["< 3 mm", "lesions"] == 2 and strata.loc["< 3 mm", "detected"] == 1
    assert strata.loc["3-10 mm", "sensitivity"] == 1.0


def test_evaluate_dataset_ranks_every_candidate_together():
    truth = truth_with_lesions()
    good = evaluate_case(np.where(truth, 0.9, 0.0).astype(np.float32), truth, SPACING, name="a")
    weak = np.zeros(truth.shape, np.float32)
    weak[2:4, 2:5, 2:5] = 0.4
    weak[0, 15, 15] = 0.95  # a confident false positive
    other = evaluate_case(weak, truth, SPACING, name="b")
    pooled = evaluate_dataset([good, other])
    assert (pooled.n_cases, pooled.n_lesions, pooled.n_candidates) == (2, 6, 5)
    # lesion 1 of case a and lesion 1 of case b are different lesions: 4 of 6 found
    assert pooled.max_sensitivity == pytest.approx(4 / 6)
    direct = precision_recall(
        [0.9, 0.9, 0.9, 0.95, 0.4], [True, True, True, False, True], [1, 2, 3, 0, 4], 6
    )
    assert pooled.average_precision == pytest.approx(direct.average_precision)
    assert pooled.ci_low <= pooled.average_precision <= pooled.ci_high
    assert pooled.tp_dice == 1.0
    assert pooled.false_positives_per_case == 0.5
    summary = json.loads(json.dumps(pooled.summary()))
    assert summary["n_lesions"] == 6 and len(summary["size_sensitivity"]) == 3
    with pytest.raises(ValueError, match="at least one"):
        evaluate_dataset([])


def test_hanley_mcneil_interval_by_hand():
    # A = 0.9, 50 and 50: SE^2 = (0.09 + 49 (0.81818 - 0.81) + 49 (0.85263 - 0.81)) / 2500
    low, high = hanley_mcneil_ci(0.9, 50, 50)
    assert (high - low) / 2 == pytest.approx(1.959964 * 0.032124, rel=1e-4)
    assert hanley_mcneil_ci(1.0, 10, 0) == (1.0, 1.0)
    assert hanley_mcneil_ci(0.999, 2, 2)[1] == 1.0  # clipped
    assert all(math.isnan(v) for v in hanley_mcneil_ci(math.nan, 3, 3))
    with pytest.raises(ValueError, match="area"):
        hanley_mcneil_ci(1.5, 3, 3)


def test_wilcoxon_rank_sum_matches_scipy_and_drops_nan():
    a = [0.81, 0.75, 0.92, 0.66, math.nan, 0.88]
    b = [0.52, 0.61, 0.47, 0.70, 0.58]
    result = wilcoxon_rank_sum(a, b)
    expected = stats.mannwhitneyu(
        [v for v in a if not math.isnan(v)], b, use_continuity=False, method="asymptotic"
    )
    assert result.p_value == pytest.approx(expected.pvalue)
    assert (result.n_a, result.n_b) == (5, 5) and result.statistic > 0
    assert wilcoxon_rank_sum(a, b, alternative="greater").p_value < 0.05
    with pytest.raises(ValueError, match="at least one"):
        wilcoxon_rank_sum([math.nan], b)
