"""Censor-one-out sequence importance for one case.

With a network trained with sequence dropout, switching one sequence off and
segmenting again shows what that sequence contributes (METHOD.md: the studies
ranked the sequences this way). :func:`sequence_importance` segments a case
with every present sequence, then once without each of them, and compares the
lesion candidates of each run with the full run's: lesions *lost* (a full-run
lesion no voxel of which is a lesion any more), lesions *gained* (a new lesion
touching no full-run lesion) and the change of the mean lesion confidence.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from napari_metseg.case import Case
from napari_metseg.engine import segment
from napari_metseg.errors import SequenceError
from napari_metseg.lesions import lesion_table
from napari_metseg.presence import each_one_off
from napari_metseg.progress import ProgressCallback, check_cancel, no_progress
from napari_metseg.thresholds import CANDIDATE_THRESHOLD

#: The ``off`` value of the row of the run with every present sequence.
NONE_OFF = "none"

#: Progress units of a whole analysis (runs report fractions of it).
_UNITS = 1000

#: Columns of the importance table, in order.
COLUMNS: tuple[str, ...] = (
    "off",
    "lesions",
    "lost",
    "gained",
    "mean_confidence",
    "confidence_change",
)


@dataclass(frozen=True)
class LesionChanges:
    """How two lesion-id volumes of one grid differ: the ids of ``reference``'s lesions
    none of whose voxels is a lesion in the other (``lost``) and of the other's lesions
    none of whose voxels is a lesion in ``reference`` (``gained``)."""

    lost: tuple[int, ...]
    gained: tuple[int, ...]

    def summary(self) -> str:
        """``"3 new lesions, 1 removed"``: the change report of a fine-tuning round."""
        new, gone = len(self.gained), len(self.lost)
        return f"{new} new lesion{'s' * (new != 1)}, {gone} removed"


def compare_lesions(reference: np.ndarray, other: np.ndarray) -> LesionChanges:
    """The lesions lost and gained from ``reference`` to ``other`` (0 is background), by
    overlap; serves the censor-one-out table and the report of a fine-tuning round."""
    reference, other = np.asarray(reference), np.asarray(other)
    if reference.shape != other.shape:
        raise ValueError(f"lesion volumes differ in shape: {reference.shape} vs {other.shape}")
    return LesionChanges(_unmatched(reference, other > 0), _unmatched(other, reference > 0))


def _unmatched(labels: np.ndarray, covered: np.ndarray) -> tuple[int, ...]:
    ids = np.unique(labels[labels > 0])
    hit = np.unique(labels[(labels > 0) & covered])
    return tuple(int(i) for i in np.setdiff1d(ids, hit))


def sequence_importance(
    case: Case,
    model: Any,
    present: Sequence[str] | None = None,
    threshold: float = CANDIDATE_THRESHOLD,
    min_volume_mm3: float = 0.0,
    device: str = "auto",
    baseline: np.ndarray | None = None,
    progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
) -> pd.DataFrame:
    """Segment ``case`` without each present sequence in turn; one row per run.

    ``present`` are the sequences switched on (default: all of the case's);
    at least two are needed. ``baseline`` is the probability volume of the run
    with all of them, when already known (it is then not computed again).
    Lesions come from :func:`napari_metseg.lesions.lesion_table` with
    ``threshold`` and ``min_volume_mm3``.

    Returns the :data:`COLUMNS`: ``off`` (the sequence switched off;
    :data:`NONE_OFF` for the full run, the first row), ``lesions`` found,
    ``lost`` / ``gained`` against the full run (see :func:`compare_lesions`),
    ``mean_confidence`` over the run's lesions (NaN with none) and its
    ``confidence_change`` from the full run's.
    """
    present = tuple(case.sequences if present is None else present)
    if len(present) < 2:
        raise SequenceError(
            f"sequence importance needs at least two present sequences, got {list(present)}"
        )
    runs = [(off or NONE_OFF, subset) for off, subset in each_one_off(present)]
    rows, reference = [], None
    for step, (off, subset) in enumerate(runs):
        check_cancel(cancel)
        if off == NONE_OFF and baseline is not None:
            probability = np.asarray(baseline)
        else:
            probability = segment(
                case,
                model,
                present=subset,
                device=device,
                progress=_run_progress(progress, step, len(runs), off),
                cancel=cancel,
            )
        table, labels = lesion_table(
            probability,
            case.geometry,
            threshold=threshold,
            min_volume_mm3=min_volume_mm3,
        )
        if reference is None:
            reference = labels
        changes = compare_lesions(reference, labels)
        confidence = float(table["confidence"].mean()) if len(table) else float("nan")
        rows.append((off, len(table), len(changes.lost), len(changes.gained), confidence))
    progress(_UNITS, _UNITS, "sequence importance done")
    frame = pd.DataFrame(rows, columns=list(COLUMNS[:-1]))
    frame["confidence_change"] = frame["mean_confidence"] - frame["mean_confidence"].iloc[0]
    return frame


def _run_progress(progress: ProgressCallback, step: int, steps: int, off: str) -> ProgressCallback:
    """Progress of one run as a fraction of all runs, in :data:`_UNITS`."""
    label = "all sequences" if off == NONE_OFF else f"without {off}"

    def report(done: int, total: int, message: str) -> None:
        fraction = (step + done / max(total, 1)) / steps
        progress(round(_UNITS * fraction), _UNITS, f"{label}: {message}")

    return report
