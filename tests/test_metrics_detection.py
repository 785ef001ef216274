"""Detection: the 1 mm rule in mm, matching rules, PR curves and AP, size strata."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from napari_metseg.lesions import label_components, lesion_table
from napari_metseg.metrics.detection import match_candidates, precision_recall, sensitivity_by_size


def match(probability, truth, spacing, hit_distance_mm=1.0):
    affine = np.diag([*spacing, 1.0])
    table, labels = lesion_table(probability, spacing, affine=affine)
    truth_labels, n_truth = label_components(truth)
    return match_candidates(labels, table, truth_labels, n_truth, affine, hit_distance_mm)


def one_voxel_case(candidate_index):
    truth = np.zeros((9, 20, 20), bool)
    truth[4, 10, 10] = True
    probability = np.zeros((9, 20, 20), np.float32)
    probability[candidate_index] = 0.8
    return probability, truth


@pytest.mark.parametrize(
    ("candidate", "spacing", "distance", "is_tp"),
    [
        # 2 rows away at 0.5 mm: centres 1.0 mm apart, 0.75 mm to the voxel's box
        ((4, 12, 10), (3.0, 0.5, 0.5), 0.75, True),
        # 3 rows away at 0.5 mm: 1.25 mm, a miss although only 3 voxels away
        ((4, 13, 10), (3.0, 0.5, 0.5), 1.25, False),
        # the next slice at 3 mm: 1.5 mm, a miss although only 1 voxel away
        ((5, 10, 10), (3.0, 0.5, 0.5), 1.5, False),
        # the next slice at 1.5 mm: exactly 0.75 + 0.75 = 1.5 centre-to-centre, 0.75 to the box
        ((5, 10, 10), (1.5, 1.0, 1.0), 0.75, True),
        # columns carry the thick spacing: 1 column at 2 mm is 1 mm from the box (boundary hit)
        ((4, 10, 11), (0.5, 0.5, 2.0), 1.0, True),
    ],
)
def test_the_1_mm_rule_measures_in_mm_not_voxels(candidate, spacing, distance, is_tp):
    candidates, lesions = match(*one_voxel_case(candidate), spacing)
    assert candidates["distance_mm"].iloc[0] == pytest.approx(distance)
    assert bool(candidates["is_tp"].iloc[0]) is is_tp
    assert bool(lesions["detected"].iloc[0]) is is_tp


def test_a_centroid_between_thick_slices_inside_the_lesion_is_at_zero_mm():
    truth = np.zeros((6, 6, 6), bool)
    truth[2:4, 2:4, 2:4] = True  # centroid at slice 2.5: 2.5 mm from both slice centres
    candidates, _ = match(truth.astype(np.float32), truth, (5.0, 1.0, 1.0))
    assert candidates["distance_mm"].iloc[0] == 0.0 and candidates["is_tp"].iloc[0]


def test_a_candidate_within_reach_of_two_lesions_goes_to_the_nearest():
    truth = np.zeros((1, 1, 12), bool)
    truth[0, 0, [2, 6]] = True  # lesions 1 (col 2) and 2 (col 6)
    probability = np.zeros((1, 1, 12), np.float32)
    probability[0, 0, 4:7] = 0.9  # centroid at col 5: 2.5 mm from lesion 1's box, 0.5 from 2's
    candidates, lesions = match(probability, truth, (1.0, 1.0, 1.0), hit_distance_mm=3.0)
    assert candidates["lesion"].tolist() == [2]
    assert candidates["distance_mm"].iloc[0] == pytest.approx(0.5)
    assert lesions["detected"].tolist() == [False, True]
    # the candidate (3 voxels) overlaps lesion 2 (1 voxel) in 1 voxel: Dice 2 * 1 / (3 + 1)
    assert candidates["dice"].iloc[0] == pytest.approx(0.5)
    assert lesions["dice"].tolist() == pytest.approx([0.0, 0.5])


def test_two_candidates_on_one_lesion_are_both_true_positives_but_recall_counts_it_once():
    truth = np.zeros((1, 3, 12), bool)
    truth[0, 1, 0:12] = True  # one 12 mm lesion
    probability = np.zeros((1, 3, 12), np.float32)
    probability[0, 1, 0:3] = 0.9
    probability[0, 1, 6:9] = 0.6
    candidates, lesions = match(probability, truth, (1.0, 1.0, 1.0))
    assert candidates["is_tp"].tolist() == [True, True]
    assert candidates["lesion"].tolist() == [1, 1]
    # each candidate alone: 2 * 3 / (3 + 12); lesion-wise: their union, 2 * 6 / (6 + 12)
    assert candidates["dice"].tolist() == pytest.approx([0.4, 0.4])
    assert lesions["dice"].iloc[0] == pytest.approx(2 / 3)
    curve = precision_recall(candidates["confidence"], candidates["is_tp"], candidates["lesion"], 1)
    assert curve.precision.tolist() == [1.0, 1.0]
    assert curve.recall.tolist() == [1.0, 1.0]
    assert curve.average_precision == 1.0


def direct_average_precision(confidence, is_tp, lesion, n_lesions):
    """AP by brute force: precision and recall at every distinct confidence, step sum."""
    area, previous_recall = 0.0, 0.0
    for threshold in sorted(set(confidence), reverse=True):
        kept = [i for i, c in enumerate(confidence) if c >= threshold]
        precision = sum(is_tp[i] for i in kept) / len(kept)
        recall = len({lesion[i] for i in kept if is_tp[i]}) / n_lesions
        area += (recall - previous_recall) * precision
        previous_recall = recall
    return area


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_average_precision_matches_a_direct_computation(seed):
    rng = np.random.default_rng(seed)
    n = 40
    confidence = np.round(rng.uniform(0.1, 1.0, n), 1)  # ties
    is_tp = rng.random(n) < 0.5
    lesion = np.where(is_tp, rng.integers(1, 15, n), 0)  # some lesions hit twice
    n_lesions = 20
    curve = precision_recall(confidence, is_tp, lesion, n_lesions)
    expected = direct_average_precision(list(confidence), list(is_tp), list(lesion), n_lesions)
    assert curve.average_precision == pytest.approx(expected, abs=1e-12)
    assert curve.max_sensitivity == len(set(lesion[is_tp])) / n_lesions


@pytest.mark.parametrize("seed", [0, 1])
def test_average_precision_matches_scikit_learn_scaled_by_the_missed_lesions(seed):
    rng = np.random.default_rng(seed)
    n = 50
    confidence = rng.uniform(0.1, 1.0, n)
    is_tp = rng.random(n) < 0.6
    lesion = np.where(is_tp, np.cumsum(is_tp), 0)  # every true positive hits its own lesion
    n_lesions = int(is_tp.sum()) + 7  # 7 lesions never found
    curve = precision_recall(confidence, is_tp, lesion, n_lesions)
    expected = average_precision_score(is_tp, confidence) * is_tp.sum() / n_lesions
    assert curve.average_precision == pytest.approx(expected, abs=1e-12)


def test_precision_recall_edge_cases():
    empty = precision_recall(np.zeros(0), np.zeros(0, bool), np.zeros(0, int), 3)
    assert empty.average_precision == 0.0 and empty.max_sensitivity == 0.0
    no_lesions = precision_recall(np.array([0.5]), np.array([False]), np.array([0]), 0)
    assert math.isnan(no_lesions.average_precision) and math.isnan(no_lesions.max_sensitivity)
    assert no_lesions.precision.tolist() == [0.0]
    with pytest.raises(ValueError, match="n_lesions"):
        precision_recall(np.array([0.5, 0.4]), np.array([True, True]), np.array([1, 2]), 1)


def test_sensitivity_by_size_strata():
    diameters = np.array([1.0, 2.9, 3.0, 9.99, 10.0, 20.0])
    detected = np.array([True, False, True, True, False, True])
    strata = sensitivity_by_size(diameters, detected)
    assert strata["stratum"].tolist() == ["< 3 mm", "3-10 mm", ">= 10 mm"]
    assert strata["lesions"].tolist() == [2, 2, 2]
    assert strata["detected"].tolist() == [1, 2, 1]
    assert strata["sensitivity"].tolist() == [0.5, 1.0, 0.5]
    assert math.isnan(sensitivity_by_size(np.array([1.0]), np.array([True]))["sensitivity"][2])
    with pytest.raises(ValueError, match="increasing"):
        sensitivity_by_size(diameters, detected, (10.0, 3.0))
