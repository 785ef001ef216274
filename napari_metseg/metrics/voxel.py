"""Voxel-level scores: ROC AUC, Dice / precision / recall, Youden threshold, false positives.

The ROC AUC is exact (Mann-Whitney form, ties counted half): the background
voxels are sorted once in their own dtype and every lesion voxel is located
among them with a binary search (no float64 copy, no ranking of the volume). ROC curves and the Youden
threshold come from a fixed histogram of probabilities (``HISTOGRAM_BINS``
bins on [0, 1]), which also pools exactly over cases: thresholds are chosen on
that 0.001 grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from napari_metseg.lesions import label_components

#: Probability bins of the voxel histograms; thresholds live on ``k / HISTOGRAM_BINS``.
HISTOGRAM_BINS = 1000


def roc_auc(probability: np.ndarray, truth: np.ndarray) -> float:
    """Exact voxel-wise ROC AUC: P(p_lesion > p_background) + 0.5 P(equal).

    ``probability`` and ``truth`` (boolean or 0/1) share a shape. NaN when the
    truth holds no lesion voxel or no background voxel.
    """
    p = np.asarray(probability).ravel()
    t = np.asarray(truth, dtype=bool).ravel()
    if p.size != t.size:
        raise ValueError(f"probability has {p.size} voxels, truth {t.size}")
    positive = p[t]
    negative = np.sort(p[~t])
    if positive.size == 0 or negative.size == 0:
        return math.nan
    below = np.searchsorted(negative, positive, side="left")
    through = np.searchsorted(negative, positive, side="right")
    lower = int(below.sum(dtype=np.int64))
    ties = int((through - below).sum(dtype=np.int64))
    return (lower + 0.5 * ties) / (positive.size * negative.size)


def voxel_histogram(probability: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Counts of background (row 0) and lesion (row 1) voxels per probability bin.

    Shape ``(2, HISTOGRAM_BINS)``, int64; bin ``k`` holds ``k/B <= p < (k+1)/B``
    (``p = 1`` in the last bin). Histograms of several cases add up.
    """
    p = np.asarray(probability, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=bool).ravel()
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(f"probabilities must lie in [0, 1], got [{p.min()}, {p.max()}]")
    index = np.minimum((p * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)
    index += HISTOGRAM_BINS * t
    counts = np.bincount(index, minlength=2 * HISTOGRAM_BINS)
    return counts.reshape(2, HISTOGRAM_BINS).astype(np.int64)


@dataclass(frozen=True, eq=False)
class RocCurve:
    """ROC points at thresholds ``k / HISTOGRAM_BINS`` (``k = 0..B``), decreasing FPR."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def roc_from_histogram(histogram: np.ndarray) -> RocCurve:
    """The ROC curve of a (pooled) :func:`voxel_histogram`; NaN rates if a class is empty."""
    negative, positive = (np.asarray(row, dtype=np.float64) for row in histogram)
    kept_neg = np.r_[np.cumsum(negative[::-1])[::-1], 0.0]
    kept_pos = np.r_[np.cumsum(positive[::-1])[::-1], 0.0]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = kept_neg / negative.sum()
        tpr = kept_pos / positive.sum()
    thresholds = np.arange(HISTOGRAM_BINS + 1) / HISTOGRAM_BINS
    return RocCurve(fpr, tpr, thresholds)


def youden_threshold(histogram: np.ndarray) -> float:
    """The threshold maximising Youden's J = TPR - FPR (choose it on validation cases).

    ``histogram`` is one case's or several cases' summed
    :func:`voxel_histogram`; the answer lies on the ``1 / HISTOGRAM_BINS`` grid
    in ``(0, 1]`` (the smallest such threshold on ties). NaN without lesion or
    background voxels.
    """
    roc = roc_from_histogram(histogram)
    youden = (roc.tpr - roc.fpr)[1:]
    if np.all(np.isnan(youden)):
        return math.nan
    return float(roc.thresholds[1 + int(np.nanargmax(youden))])


@dataclass(frozen=True)
class OverlapScores:
    """Voxel overlap at one threshold: counts and Dice / precision / recall.

    Dice is 1 when prediction and truth are both empty; precision is NaN
    without predicted voxels, recall NaN without truth voxels.
    """

    dice: float
    precision: float
    recall: float
    true_positive: int
    false_positive: int
    false_negative: int


def overlap_scores(prediction: np.ndarray, truth: np.ndarray) -> OverlapScores:
    """Dice, precision and recall of a binary ``prediction`` against a binary ``truth``."""
    predicted = np.asarray(prediction, dtype=bool)
    actual = np.asarray(truth, dtype=bool)
    if predicted.shape != actual.shape:
        raise ValueError(f"prediction shape {predicted.shape} differs from truth {actual.shape}")
    tp = int(np.count_nonzero(predicted & actual))
    fp = int(np.count_nonzero(predicted)) - tp
    fn = int(np.count_nonzero(actual)) - tp
    dice = 1.0 if tp + fp + fn == 0 else 2.0 * tp / (2 * tp + fp + fn)
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    return OverlapScores(dice, precision, recall, tp, fp, fn)


def false_positive_components(
    prediction: np.ndarray,
    truth: np.ndarray,
    voxel_volume_mm3: float,
    min_volume_mm3: float = 0.0,
    connectivity: int = 26,
) -> int:
    """Components of a binary ``prediction`` that touch no truth voxel, of at least ``min_volume_mm3``.

    The studies count false positives per patient this way, with no size limit
    and with a 10 mm^3 minimum, on the thresholded map with 26-connectivity.
    """
    labels, count = label_components(prediction, connectivity)
    if count == 0:
        return 0
    sizes = np.bincount(labels.ravel(), minlength=count + 1) * voxel_volume_mm3
    touching = np.zeros(count + 1, dtype=bool)
    touching[labels[np.asarray(truth, dtype=bool)]] = True
    keep = ~touching & (sizes >= min_volume_mm3)
    return int(np.count_nonzero(keep[1:]))
