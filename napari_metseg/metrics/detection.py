"""Lesion detection as the studies score it: candidates, the 1 mm rule, PR curves, mAP.

Rules settled here (the studies leave them open):

- **Hit test.** A candidate is a true positive when its centre of mass (the
  unweighted centroid of its voxels, in fractional indices) lies within
  ``hit_distance_mm`` (1 mm) of a ground-truth voxel, the voxel taken as the
  box it covers (centre +/- half a spacing), so a centroid inside a lesion is
  at 0 mm whatever the slice thickness (with voxel centres a perfect
  prediction of a 2-slice lesion on 3 mm slices would miss). The distance is
  exact Euclidean mm from the continuous centroid (no distance map sampled
  at a voxel, so no trilinear-vs-nearest choice), per-axis spacing from the
  affine's column lengths (exact for orthogonal grids, i.e. any rotation);
  "within" includes the boundary (``<=``, with 1e-6 mm of slack).
- **Several lesions within reach.** The candidate is matched to the lesion of
  the nearest truth voxel box (the first found on an exact tie).
- **Several candidates on one lesion.** Each is a true positive (precision
  counts candidates), but the lesion is detected once (recall counts lesions,
  at the rank of the most confident candidate hitting it).
- **PR curve and mAP.** Candidates ranked by decreasing confidence; equal
  confidences enter together. The area is the non-interpolated step sum
  ``sum_k (R_k - R_{k-1}) P_k`` (scikit-learn's ``average_precision_score``
  convention), so it is at most the maximum sensitivity. Without ground-truth
  lesions recall, mAP and sensitivity are NaN; without candidates mAP is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial import cKDTree

#: Slack (mm) added to the hit distance so a centroid at exactly 1 mm counts.
DISTANCE_SLACK_MM = 1e-6

#: Default diameter edges (mm) of the size strata: < 3, 3-10, >= 10 mm.
SIZE_EDGES_MM: tuple[float, ...] = (3.0, 10.0)


@dataclass(frozen=True, eq=False)
class PrecisionRecall:
    """A detection precision-recall curve, one point per distinct confidence.

    ``thresholds`` decrease; point ``k`` keeps every candidate with confidence
    ``>= thresholds[k]``. ``average_precision`` is the step-sum area.
    """

    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray
    average_precision: float
    max_sensitivity: float


def precision_recall(
    confidence: np.ndarray, is_tp: np.ndarray, lesion_key: np.ndarray, n_lesions: int
) -> PrecisionRecall:
    """Rank candidates by confidence and score them against ``n_lesions`` lesions.

    ``confidence``, ``is_tp`` and ``lesion_key`` have one entry per candidate;
    ``lesion_key`` identifies the lesion a true positive hit (unique across
    cases when pooling; ignored for false positives). See the module notes for
    the counting rules.
    """
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    is_tp = np.asarray(is_tp, dtype=bool).ravel()
    lesion_key = np.asarray(lesion_key).ravel()
    if not confidence.size == is_tp.size == lesion_key.size:
        raise ValueError(
            f"one value per candidate needed, got {confidence.size} confidences, "
            f"{is_tp.size} flags and {lesion_key.size} lesion keys"
        )
    if n_lesions < 0:
        raise ValueError(f"n_lesions must be >= 0, got {n_lesions}")
    order = np.argsort(-confidence, kind="stable")
    ranked, tp, key = confidence[order], is_tp[order], lesion_key[order]
    first_hit = np.zeros(tp.size, dtype=bool)
    tp_index = np.flatnonzero(tp)
    _, first = np.unique(key[tp_index], return_index=True)
    first_hit[tp_index[first]] = True
    if first.size > n_lesions:
        raise ValueError(f"{first.size} distinct lesions hit, but n_lesions is {n_lesions}")
    ends = np.zeros(0, dtype=np.int64)
    if ranked.size:
        ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    precision = np.cumsum(tp)[ends] / (ends + 1.0)
    hits = np.cumsum(first_hit)[ends]
    if n_lesions == 0:
        recall = np.full(ends.size, math.nan)
        return PrecisionRecall(precision, recall, ranked[ends], math.nan, math.nan)
    recall = hits / n_lesions
    gain = np.diff(np.r_[0.0, recall])
    area = float(np.sum(gain * precision))
    return PrecisionRecall(precision, recall, ranked[ends], area, float(first.size / n_lesions))


def match_candidates(
    candidate_labels: np.ndarray,
    candidates: pd.DataFrame,
    truth_labels: np.ndarray,
    n_truth: int,
    affine: np.ndarray,
    hit_distance_mm: float = 1.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Match candidates to ground-truth lesions; return ``(candidates, lesions)`` records.

    ``candidates`` is a lesion table (:func:`napari_metseg.lesion_table`) whose
    labels are drawn in ``candidate_labels``; ``truth_labels`` holds lesions
    ``1..n_truth``. Candidate records: ``label``, ``confidence``, ``voxels``,
    ``volume_mm3``, ``distance_mm`` (centroid to the nearest truth voxel box,
    ``inf`` without truth), ``is_tp``, ``lesion`` (hit lesion, 0 if none) and
    ``dice`` (candidate vs that lesion, NaN for false positives). Lesion
    records: ``lesion``, ``voxels``, ``detected``, ``dice`` (the lesion vs the
    union of candidates that hit it, 0 if missed); diameters and volumes are
    added by the caller.
    """
    if hit_distance_mm < 0:
        raise ValueError(f"hit_distance_mm must be >= 0, got {hit_distance_mm}")
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    truth_index = np.flatnonzero(truth_labels)
    truth_id = truth_labels.ravel()[truth_index]
    n_candidates = len(candidates)
    centroids = candidates[["centroid_slice", "centroid_row", "centroid_col"]].to_numpy(float)
    distance = np.full(n_candidates, math.inf)
    lesion = np.zeros(n_candidates, dtype=np.int64)
    if truth_index.size and n_candidates:
        voxels = np.stack(np.unravel_index(truth_index, truth_labels.shape), axis=1) * spacing
        distance, lesion = _nearest_voxel_boxes(
            cKDTree(voxels), voxels, truth_id, centroids * spacing, spacing, hit_distance_mm
        )
        lesion[distance > hit_distance_mm + DISTANCE_SLACK_MM] = 0
    is_tp = lesion > 0

    truth_size = np.bincount(truth_id, minlength=n_truth + 1)
    candidate_size = candidates["voxels"].to_numpy(np.int64)
    overlap = overlap_matrix(candidate_labels, truth_labels, n_candidates, n_truth)
    matched = overlap[candidates["label"].to_numpy(np.int64), lesion]
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(is_tp, 2.0 * matched / (candidate_size + truth_size[lesion]), math.nan)

    hit_overlap = np.bincount(lesion[is_tp], weights=matched[is_tp], minlength=n_truth + 1)
    hit_size = np.bincount(lesion[is_tp], weights=candidate_size[is_tp], minlength=n_truth + 1)
    detected = np.bincount(lesion[is_tp], minlength=n_truth + 1)[1:] > 0
    lesion_dice = np.where(
        detected, 2.0 * hit_overlap[1:] / np.maximum(hit_size[1:] + truth_size[1:], 1), 0.0
    )
    candidate_records = pd.DataFrame(
        {
            "label": candidates["label"].to_numpy(np.int64),
            "confidence": candidates["confidence"].to_numpy(float),
            "voxels": candidate_size,
            "volume_mm3": candidates["volume_mm3"].to_numpy(float),
            "distance_mm": distance,
            "is_tp": is_tp,
            "lesion": lesion,
            "dice": dice,
        }
    )
    lesion_records = pd.DataFrame(
        {
            "lesion": np.arange(1, n_truth + 1, dtype=np.int64),
            "voxels": truth_size[1:].astype(np.int64),
            "detected": detected,
            "dice": lesion_dice,
        }
    )
    return candidate_records, lesion_records


def _nearest_voxel_boxes(
    tree: cKDTree,
    voxels_mm: np.ndarray,
    voxel_lesion: np.ndarray,
    points_mm: np.ndarray,
    spacing: np.ndarray,
    hit_distance_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) from each point to the nearest truth voxel box, and that voxel's lesion.

    Positions are indices times spacing (world mm up to a rotation). Voxels
    whose centre lies within ``hit_distance_mm`` plus half a voxel diagonal are
    searched exhaustively, so distances up to the hit range are exact; beyond
    it the box of the voxel with the nearest centre is used (within half a
    voxel diagonal of exact, and always beyond the hit range).
    """
    reach = hit_distance_mm + 0.5 * float(np.linalg.norm(spacing)) + DISTANCE_SLACK_MM
    _, nearest = tree.query(points_mm, k=1)
    distance = _box_distance(points_mm, voxels_mm[nearest], spacing)
    lesion = voxel_lesion[nearest].astype(np.int64)
    for i, found in enumerate(tree.query_ball_point(points_mm, reach)):
        if found:
            near = _box_distance(points_mm[i], voxels_mm[found], spacing)
            best = int(np.argmin(near))
            distance[i], lesion[i] = near[best], voxel_lesion[found[best]]
    return distance, lesion


def _box_distance(points: np.ndarray, centres: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Euclidean mm from points to voxel boxes (centre +/- half a spacing per axis)."""
    gap = np.maximum(np.abs(np.asarray(points) - centres) - 0.5 * spacing, 0.0)
    return np.linalg.norm(np.atleast_2d(gap), axis=-1)


def overlap_matrix(a: np.ndarray, b: np.ndarray, n_a: int, n_b: int) -> np.ndarray:
    """Voxel counts shared by labels of ``a`` (rows ``0..n_a``) and ``b`` (columns ``0..n_b``).

    Only voxels labelled in both volumes are counted; row and column 0 stay 0.
    Dense ``(n_a + 1, n_b + 1)`` int64 array (lesion counts are small).
    """
    both = np.flatnonzero((a.ravel() > 0) & (b.ravel() > 0))
    rows, cols = a.ravel()[both], b.ravel()[both]
    counts = sparse.coo_matrix(
        (np.ones(both.size, dtype=np.int64), (rows, cols)), shape=(n_a + 1, n_b + 1)
    )
    return np.asarray(counts.toarray(), dtype=np.int64)


def sensitivity_by_size(
    diameter_mm: np.ndarray, detected: np.ndarray, edges_mm: Sequence[float] = SIZE_EDGES_MM
) -> pd.DataFrame:
    """Detection sensitivity per lesion-diameter stratum.

    Strata are ``[0, e0)``, ``[e0, e1)``, ..., ``[e_last, inf)`` mm of longest
    diameter (default < 3, 3-10, >= 10 mm: small lesions are the clinical
    problem). Columns: ``stratum`` (text), ``low_mm``, ``high_mm``,
    ``lesions``, ``detected``, ``sensitivity`` (NaN for an empty stratum).
    """
    edges = [float(e) for e in edges_mm]
    if any(e <= 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError(f"size edges must be positive and increasing, got {edges_mm!r}")
    bounds = [0.0, *edges, math.inf]
    diameter = np.asarray(diameter_mm, dtype=np.float64)
    detected = np.asarray(detected, dtype=bool)
    stratum = np.searchsorted(np.asarray(edges), diameter, side="right")
    n = np.bincount(stratum, minlength=len(bounds) - 1)
    hit = np.bincount(stratum[detected], minlength=len(bounds) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = np.where(n > 0, hit / np.maximum(n, 1), math.nan)
    names = [_stratum_name(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False)]
    return pd.DataFrame(
        {
            "stratum": names,
            "low_mm": bounds[:-1],
            "high_mm": bounds[1:],
            "lesions": n.astype(np.int64),
            "detected": hit.astype(np.int64),
            "sensitivity": sensitivity,
        }
    )


def _stratum_name(low: float, high: float) -> str:
    if low == 0.0:
        return f"< {high:g} mm"
    if math.isinf(high):
        return f">= {low:g} mm"
    return f"{low:g}-{high:g} mm"
