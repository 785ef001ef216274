"""Voxel metrics: AUC against scikit-learn, Dice by hand, Youden, false-positive components."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from napari_metseg.metrics.voxel import (
    false_positive_components,
    overlap_scores,
    roc_auc,
    roc_from_histogram,
    voxel_histogram,
    youden_threshold,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_scikit_learn_on_random_volumes_with_ties(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random((6, 20, 20)) < 0.1
    # quantised probabilities: many ties inside and across classes
    probability = np.round(np.clip(rng.normal(0.3 + 0.3 * truth, 0.2), 0, 1), 2)
    probability = probability.astype(np.float32)
    expected = roc_auc_score(truth.ravel(), probability.ravel())
    assert roc_auc(probability, truth) == pytest.approx(expected, abs=1e-12)


def test_auc_is_nan_without_one_class_and_one_for_a_perfect_ranking():
    probability = np.linspace(0, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    assert math.isnan(roc_auc(probability, np.zeros((2, 3, 4), bool)))
    assert roc_auc(probability, probability > 0.5) == 1.0
    assert roc_auc(probability, probability < 0.5) == 0.0


def test_dice_precision_recall_by_hand():
    prediction = np.zeros((1, 1, 6), bool)
    truth = np.zeros((1, 1, 6), bool)
    prediction[0, 0, [0, 1, 2]] = True
    truth[0, 0, [1, 2, 3, 4]] = True
    scores = overlap_scores(prediction, truth)
    assert (scores.true_positive, scores.false_positive, scores.false_negative) == (2, 1, 2)
    assert scores.dice == pytest.approx(4 / 7)
    assert scores.precision == pytest.approx(2 / 3)
    assert scores.recall == pytest.approx(1 / 2)


def test_overlap_edge_cases():
    empty = np.zeros((2, 2, 2), bool)
    full = np.ones((2, 2, 2), bool)
    both_empty = overlap_scores(empty, empty)
    assert both_empty.dice == 1.0 and math.isnan(both_empty.precision)
    nothing_predicted = overlap_scores(empty, full)
    assert nothing_predicted.dice == 0.0 and nothing_predicted.recall == 0.0
    assert math.isnan(nothing_predicted.precision)
    assert math.isnan(overlap_scores(full, empty).recall)


def test_roc_curve_from_the_histogram_counts_voxels_at_or_above_each_threshold():
    probability = np.array([0.05, 0.2, 0.5, 0.7, 0.3, 0.5, 0.9, 1.0]).reshape(1, 2, 4)
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool).reshape(1, 2, 4)
    histogram = voxel_histogram(probability, truth)
    assert histogram.sum() == 8 and histogram[1].sum() == 4
    roc = roc_from_histogram(histogram)
    at = int(np.flatnonzero(np.isclose(roc.thresholds, 0.5))[0])
    # p >= 0.5: positives 0.5, 0.9, 1.0 (3 of 4); negatives 0.5, 0.7 (2 of 4)
    assert (roc.tpr[at], roc.fpr[at]) == (0.75, 0.5)
    assert (roc.tpr[0], roc.fpr[0], roc.tpr[-1], roc.fpr[-1]) == (1.0, 1.0, 0.0, 0.0)


def test_youden_threshold_separates_the_classes_at_the_smallest_best_threshold():
    negatives = np.array([0.0, 0.1, 0.25])
    positives = np.array([0.6, 0.8, 0.95])
    probability = np.r_[negatives, positives].reshape(1, 1, 6)
    truth = np.r_[np.zeros(3), np.ones(3)].astype(bool).reshape(1, 1, 6)
    assert youden_threshold(voxel_histogram(probability, truth)) == pytest.approx(0.251)
    with pytest.raises(ValueError, match="probabilities"):
        voxel_histogram(probability + 1.0, truth)


def test_false_positive_components_with_and_without_the_size_limit():
    truth = np.zeros((4, 20, 20), bool)
    truth[1, 1:4, 1:4] = True
    prediction = np.zeros_like(truth)
    prediction[1, 3:6, 3:6] = True  # overlaps the truth: not a false positive
    prediction[3, 10, 0:5] = True  # 5 voxels
    prediction[0, 15, 0:6] = True  # 6 voxels
    prediction[1, 16, 6] = True  # touches the 6-voxel bar at a corner: joins it (26-conn.)
    # voxels of 2 mm^3: components of 10 and 14 mm^3
    assert false_positive_components(prediction, truth, 2.0) == 2
    assert false_positive_components(prediction, truth, 2.0, min_volume_mm3=10.0) == 2
    assert false_positive_components(prediction, truth, 2.0, min_volume_mm3=12.0) == 1
    assert false_positive_components(prediction, truth, 2.0, connectivity=6) == 3
    assert false_positive_components(np.zeros_like(truth), truth, 2.0) == 0
