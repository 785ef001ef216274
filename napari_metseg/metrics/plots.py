"""PNG plots of an evaluation: PR curve, ROC curve, sensitivity by lesion size.

Figures are built on matplotlib's object API with the Agg canvas, never
through ``pyplot``, so plotting works headless and leaves no global figure
state behind (safe inside napari's process too).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from napari_metseg.metrics.evaluate import CaseEvaluation, DatasetEvaluation

logger = logging.getLogger(__name__)

#: Size of every figure, inches; saved at ``DPI``.
FIGURE_SIZE = (5.0, 4.0)
DPI = 120


def plot_pr_curve(
    dataset: DatasetEvaluation, cases: Sequence[CaseEvaluation], path: str | os.PathLike
) -> Path:
    """Pooled detection PR curve (bold) over each case's curve (thin), with mAP and its CI."""
    figure, axes = _figure()
    for case in cases:
        curve = case.pr_curve
        if curve.recall.size and not np.all(np.isnan(curve.recall)):
            axes.step(*_pr_points(curve.recall, curve.precision), where="post", lw=0.6, alpha=0.4)
    pooled = dataset.pr_curve
    label = (
        f"pooled: mAP {dataset.average_precision:.3f} [{dataset.ci_low:.3f}, {dataset.ci_high:.3f}]"
    )
    if pooled.recall.size and not np.all(np.isnan(pooled.recall)):
        axes.step(*_pr_points(pooled.recall, pooled.precision), where="post", lw=2, color="k")
    axes.plot([], [], color="k", lw=2, label=label)
    axes.set(xlabel="sensitivity (lesions)", ylabel="precision (candidates)", xlim=(0, 1.02))
    axes.set(ylim=(0, 1.02), title="Lesion detection")
    axes.legend(loc="lower left", fontsize=8)
    return _save(figure, path)


def plot_roc_curve(
    dataset: DatasetEvaluation, cases: Sequence[CaseEvaluation], path: str | os.PathLike
) -> Path:
    """Voxel ROC curves per case (thin) and pooled (bold); log-scaled false-positive rate."""
    figure, axes = _figure()
    for case in cases:
        roc = case.roc_curve
        axes.plot(roc.fpr, roc.tpr, lw=0.6, alpha=0.4)
    pooled = dataset.roc_curve
    axes.plot(pooled.fpr, pooled.tpr, color="k", lw=2, label=f"mean AUC {dataset.mean_auc:.4f}")
    axes.set_xscale("symlog", linthresh=1e-4)
    axes.set(xlabel="false-positive rate (voxels)", ylabel="true-positive rate (voxels)")
    axes.set(xlim=(0, 1), ylim=(0, 1.02), title="Voxel ROC")
    axes.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def plot_size_sensitivity(dataset: DatasetEvaluation, path: str | os.PathLike) -> Path:
    """Bar chart of detection sensitivity per lesion-diameter stratum, with lesion counts."""
    figure, axes = _figure()
    strata = dataset.size_sensitivity
    positions = np.arange(len(strata))
    heights = np.nan_to_num(strata["sensitivity"].to_numpy(float))
    axes.bar(positions, heights, color="tab:blue")
    for x, height, found, total in zip(
        positions, heights, strata["detected"], strata["lesions"], strict=True
    ):
        axes.text(x, height + 0.02, f"{found}/{total}", ha="center", fontsize=8)
    axes.set_xticks(positions, strata["stratum"].tolist())
    axes.set(xlabel="longest diameter", ylabel="sensitivity", ylim=(0, 1.1))
    axes.set(title="Sensitivity by lesion size")
    return _save(figure, path)


def _pr_points(recall: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start the step curve at recall 0 with the first point's precision."""
    return np.r_[0.0, recall], np.r_[precision[:1], precision]


def _figure() -> tuple[Figure, object]:
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="tight")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    figure.savefig(path)
    logger.debug("wrote %s", path)
    return path
