"""Score one case, or a dataset of cases, the way the studies do.

:func:`evaluate_case` gathers detection (candidates at 0.10, 1 mm rule, mAP,
maximum sensitivity, TP Dice, lesion-wise Dice, sensitivity by size), voxel
scores (ROC AUC, Dice / precision / recall at a threshold) and false-positive
component counts into a frozen :class:`CaseEvaluation` that keeps its
per-candidate and per-lesion records, so :func:`evaluate_dataset` can rank the
candidates of every case together (pooled mAP with a Hanley-McNeil interval).
Detection rules are documented in :mod:`napari_metseg.metrics.detection`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from napari_metseg.case import Geometry
from napari_metseg.errors import GeometryError
from napari_metseg.lesions import (
    label_components,
    lesion_table,
    longest_diameters,
    resolve_geometry,
)
from napari_metseg.metrics.detection import (
    SIZE_EDGES_MM,
    PrecisionRecall,
    match_candidates,
    precision_recall,
    sensitivity_by_size,
)
from napari_metseg.metrics.stats import hanley_mcneil_ci
from napari_metseg.metrics.voxel import (
    RocCurve,
    false_positive_components,
    overlap_scores,
    roc_auc,
    roc_from_histogram,
    voxel_histogram,
    youden_threshold,
)
from napari_metseg.thresholds import CANDIDATE_THRESHOLD

logger = logging.getLogger(__name__)

#: The scalar fields of :class:`CaseEvaluation`, in the order reports list them.
CASE_SUMMARY_KEYS: tuple[str, ...] = (
    "name",
    "threshold",
    "n_lesions",
    "n_candidates",
    "n_true_positives",
    "n_detected",
    "average_precision",
    "max_sensitivity",
    "tp_dice",
    "lesion_dice",
    "auc",
    "dice",
    "precision",
    "recall",
    "false_positives",
    "false_positives_min_volume",
)


@dataclass(frozen=True, eq=False)
class CaseEvaluation:
    """Every score of one case, plus the records needed to pool cases.

    Scalars: counts; ``average_precision`` (mAP, step area), ``max_sensitivity``
    and ``tp_dice`` (mean over true-positive candidates, NaN without one);
    ``lesion_dice`` (mean over truth lesions, missed ones count 0); voxel
    ``auc``, ``dice``, ``precision``, ``recall`` at ``threshold``;
    ``false_positives`` / ``false_positives_min_volume`` (thresholded
    components touching no truth voxel, all / at least ``fp_min_volume_mm3``).
    Records: ``candidates`` (one row per candidate, see
    :func:`~napari_metseg.metrics.detection.match_candidates`), ``lesions``
    (one row per truth lesion with ``volume_mm3`` and ``diameter_mm``),
    ``histogram`` (:func:`~napari_metseg.metrics.voxel.voxel_histogram`).
    """

    name: str
    threshold: float
    candidate_threshold: float
    hit_distance_mm: float
    fp_min_volume_mm3: float
    size_edges_mm: tuple[float, ...]
    n_lesions: int
    n_candidates: int
    n_true_positives: int
    n_detected: int
    average_precision: float
    max_sensitivity: float
    tp_dice: float
    lesion_dice: float
    auc: float
    dice: float
    precision: float
    recall: float
    false_positives: int
    false_positives_min_volume: int
    candidates: pd.DataFrame
    lesions: pd.DataFrame
    histogram: np.ndarray

    @property
    def pr_curve(self) -> PrecisionRecall:
        """This case's detection precision-recall curve."""
        records = self.candidates
        return precision_recall(
            records["confidence"], records["is_tp"], records["lesion"], self.n_lesions
        )

    @property
    def roc_curve(self) -> RocCurve:
        """This case's voxel ROC curve (on the histogram's threshold grid)."""
        return roc_from_histogram(self.histogram)

    @property
    def size_sensitivity(self) -> pd.DataFrame:
        """Sensitivity per lesion-diameter stratum (``size_edges_mm``)."""
        return sensitivity_by_size(
            self.lesions["diameter_mm"], self.lesions["detected"], self.size_edges_mm
        )

    def summary(self) -> dict[str, Any]:
        """The scalar scores as a flat, JSON-ready dict (NaN kept as float NaN)."""
        return {key: _plain(getattr(self, key)) for key in CASE_SUMMARY_KEYS}


def evaluate_case(
    probability: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float] | Geometry,
    affine: np.ndarray | None = None,
    threshold: float = 0.5,
    candidate_threshold: float = CANDIDATE_THRESHOLD,
    hit_distance_mm: float = 1.0,
    fp_min_volume_mm3: float = 10.0,
    size_edges_mm: Sequence[float] = SIZE_EDGES_MM,
    connectivity: int = 26,
    name: str = "case",
) -> CaseEvaluation:
    """Score a probability volume against a truth mask (both ``(slice, row, col)``).

    ``truth`` voxels > 0 are lesion; its lesions are the 26-connected
    components. Candidates are :func:`~napari_metseg.lesion_table` rows at
    ``candidate_threshold`` (0.10 in the studies); voxel scores and false
    positive counts use ``threshold`` (pick it with
    :func:`~napari_metseg.metrics.voxel.youden_threshold` on validation cases).
    ``spacing`` (mm) and ``affine`` (index -> RAS+ mm, default
    ``diag(spacing)``) may come together as a :class:`Geometry`.
    """
    probability = np.asarray(probability)
    truth_mask = np.asarray(truth) > 0
    spacing, affine = resolve_geometry(probability.shape, spacing, affine)
    if truth_mask.shape != probability.shape:
        raise GeometryError(
            f"case {name!r}: truth shape {truth_mask.shape} differs from the probability's "
            f"{probability.shape}"
        )
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold!r}")
    voxel_volume = float(abs(np.linalg.det(affine[:3, :3])))
    histogram = voxel_histogram(probability, truth_mask)

    table, candidate_labels = lesion_table(
        probability, spacing, candidate_threshold, affine=affine, connectivity=connectivity
    )
    truth_labels, n_truth = label_components(truth_mask, connectivity)
    candidates, lesions = match_candidates(
        candidate_labels, table, truth_labels, n_truth, affine, hit_distance_mm
    )
    lesions.insert(2, "volume_mm3", lesions["voxels"] * voxel_volume)
    lesions.insert(3, "diameter_mm", longest_diameters(truth_labels, n_truth, affine))
    curve = precision_recall(
        candidates["confidence"], candidates["is_tp"], candidates["lesion"], n_truth
    )
    prediction = probability >= threshold
    overlap = overlap_scores(prediction, truth_mask)
    tp_dice = candidates.loc[candidates["is_tp"], "dice"]
    result = CaseEvaluation(
        name=name,
        threshold=float(threshold),
        candidate_threshold=float(candidate_threshold),
        hit_distance_mm=float(hit_distance_mm),
        fp_min_volume_mm3=float(fp_min_volume_mm3),
        size_edges_mm=tuple(float(e) for e in size_edges_mm),
        n_lesions=n_truth,
        n_candidates=len(candidates),
        n_true_positives=int(candidates["is_tp"].sum()),
        n_detected=int(lesions["detected"].sum()),
        average_precision=curve.average_precision,
        max_sensitivity=curve.max_sensitivity,
        tp_dice=float(tp_dice.mean()) if len(tp_dice) else math.nan,
        lesion_dice=float(lesions["dice"].mean()) if n_truth else math.nan,
        auc=roc_auc(probability, truth_mask),
        dice=overlap.dice,
        precision=overlap.precision,
        recall=overlap.recall,
        false_positives=false_positive_components(
            prediction, truth_mask, voxel_volume, 0.0, connectivity
        ),
        false_positives_min_volume=false_positive_components(
            prediction, truth_mask, voxel_volume, fp_min_volume_mm3, connectivity
        ),
        candidates=candidates,
        lesions=lesions,
        histogram=histogram,
    )
    logger.debug("%s: %s", name, result.summary())
    return result


@dataclass(frozen=True, eq=False)
class DatasetEvaluation:
    """Scores of a set of cases: pooled detection plus per-case means.

    ``average_precision`` ranks every candidate of every case together;
    ``ci_low`` / ``ci_high`` is its Hanley-McNeil interval (``n1`` = lesions,
    ``n2`` = false-positive candidates); ``max_sensitivity`` is pooled over
    lesions, ``tp_dice`` the mean over all true-positive candidates and
    ``lesion_dice`` over all lesions. ``youden_threshold`` comes from the
    pooled voxel histogram. Per-case voxel scores are averaged (NaN-skipping)
    as ``mean_*``; false positives as counts per case.
    """

    n_cases: int
    n_lesions: int
    n_candidates: int
    n_true_positives: int
    average_precision: float
    ci_low: float
    ci_high: float
    confidence_level: float
    max_sensitivity: float
    tp_dice: float
    lesion_dice: float
    youden_threshold: float
    mean_auc: float
    mean_dice: float
    mean_precision: float
    mean_recall: float
    false_positives_per_case: float
    false_positives_min_volume_per_case: float
    pr_curve: PrecisionRecall
    roc_curve: RocCurve
    size_sensitivity: pd.DataFrame

    def summary(self) -> dict[str, Any]:
        """The scalar scores and the size strata as a JSON-ready dict."""
        scalars = {
            key: _plain(value)
            for key, value in vars(self).items()
            if key not in ("pr_curve", "roc_curve", "size_sensitivity")
        }
        strata = [
            {key: _plain(value) for key, value in row.items()}
            for row in self.size_sensitivity.to_dict("records")
        ]
        return scalars | {"size_sensitivity": strata}


def evaluate_dataset(
    cases: Sequence[CaseEvaluation], confidence_level: float = 0.95
) -> DatasetEvaluation:
    """Pool :class:`CaseEvaluation` results: all candidates ranked together.

    The cases must share ``size_edges_mm``. Lesions stay distinct per case (a
    lesion is keyed by case and id), so recall counts every lesion of the set.
    """
    if not cases:
        raise ValueError("evaluate_dataset needs at least one case")
    edges = {case.size_edges_mm for case in cases}
    if len(edges) > 1:
        raise ValueError(f"cases use different size strata: {sorted(edges)}")
    candidates = pd.concat(
        [case.candidates.assign(case=index) for index, case in enumerate(cases)],
        ignore_index=True,
    )
    lesions = pd.concat([case.lesions for case in cases], ignore_index=True)
    offsets = np.cumsum([0] + [case.n_lesions for case in cases])[:-1]
    keys = candidates["lesion"].to_numpy() + offsets[candidates["case"].to_numpy(np.int64)]
    n_lesions = int(sum(case.n_lesions for case in cases))
    curve = precision_recall(candidates["confidence"], candidates["is_tp"], keys, n_lesions)
    n_tp = int(candidates["is_tp"].sum())
    low, high = hanley_mcneil_ci(
        curve.average_precision, n_lesions, len(candidates) - n_tp, confidence_level
    )
    histogram = np.sum([case.histogram for case in cases], axis=0)
    tp_dice = candidates.loc[candidates["is_tp"], "dice"]
    return DatasetEvaluation(
        n_cases=len(cases),
        n_lesions=n_lesions,
        n_candidates=len(candidates),
        n_true_positives=n_tp,
        average_precision=curve.average_precision,
        ci_low=low,
        ci_high=high,
        confidence_level=confidence_level,
        max_sensitivity=curve.max_sensitivity,
        tp_dice=float(tp_dice.mean()) if len(tp_dice) else math.nan,
        lesion_dice=float(lesions["dice"].mean()) if n_lesions else math.nan,
        youden_threshold=youden_threshold(histogram),
        mean_auc=_nanmean([case.auc for case in cases]),
        mean_dice=_nanmean([case.dice for case in cases]),
        mean_precision=_nanmean([case.precision for case in cases]),
        mean_recall=_nanmean([case.recall for case in cases]),
        false_positives_per_case=float(np.mean([case.false_positives for case in cases])),
        false_positives_min_volume_per_case=float(
            np.mean([case.false_positives_min_volume for case in cases])
        ),
        pr_curve=curve,
        roc_curve=roc_from_histogram(histogram),
        size_sensitivity=sensitivity_by_size(
            lesions["diameter_mm"], lesions["detected"], cases[0].size_edges_mm
        ),
    )


def _nanmean(values: Sequence[float]) -> float:
    array = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(array)) if np.any(~np.isnan(array)) else math.nan


def _plain(value: Any) -> Any:
    """NumPy scalars to Python ones, for JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
