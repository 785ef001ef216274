"""Detection and segmentation metrics of the studies, and their statistics.

- :mod:`~napari_metseg.metrics.detection`: candidates vs lesions (1 mm rule),
  precision-recall curves, mAP, sensitivity by lesion size;
- :mod:`~napari_metseg.metrics.voxel`: ROC AUC, Dice / precision / recall,
  Youden threshold, false-positive components;
- :mod:`~napari_metseg.metrics.stats`: Hanley-McNeil intervals, Wilcoxon rank-sum;
- :mod:`~napari_metseg.metrics.evaluate`: :func:`evaluate_case` and
  :func:`evaluate_dataset`, which combine them.
"""

from __future__ import annotations

from napari_metseg.metrics.detection import (
    PrecisionRecall,
    match_candidates,
    precision_recall,
    sensitivity_by_size,
)
from napari_metseg.metrics.evaluate import (
    CaseEvaluation,
    DatasetEvaluation,
    evaluate_case,
    evaluate_dataset,
)
from napari_metseg.metrics.stats import RankSumResult, hanley_mcneil_ci, wilcoxon_rank_sum
from napari_metseg.metrics.voxel import (
    OverlapScores,
    RocCurve,
    false_positive_components,
    overlap_scores,
    roc_auc,
    voxel_histogram,
    youden_threshold,
)

__all__ = [
    "CaseEvaluation",
    "DatasetEvaluation",
    "OverlapScores",
    "PrecisionRecall",
    "RankSumResult",
    "RocCurve",
    "evaluate_case",
    "evaluate_dataset",
    "false_positive_components",
    "hanley_mcneil_ci",
    "match_candidates",
    "overlap_scores",
    "precision_recall",
    "roc_auc",
    "sensitivity_by_size",
    "voxel_histogram",
    "wilcoxon_rank_sum",
    "youden_threshold",
]
