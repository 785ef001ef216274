"""The lesions an annotator sees: the model's candidates with their own marks applied.

A mark is the annotator's decision about the case in front of them, and the
mask they review and export must hold it whether or not a round teaches it to
the model: fast rounds find 5 of 7 painted 1-3 voxel lesions and remove none
of 4 marked false positives outright (``bench/correction_loop.py``), and a
lesion the reader painted that vanishes from the table, or a false one they
rejected that stays, is work lost. So a lesion mark joins the candidates (with
the component of the model's candidate it touches), a 'not lesion' mark
leaves them, as scribbles constrain the final mask of image-specific
fine-tuning (BIFSeg, Wang et al. 2018). Whether the *model* now finds a
painted lesion is a separate question, answered by
:func:`~napari_metseg.correction.outcome.stroke_outcome` on its probability
alone, and every metric of the model (the benchmarks, sequence importance)
reads the probability, never the marks.
"""

from __future__ import annotations

import numpy as np

from napari_metseg.case import Geometry
from napari_metseg.correction.samples import LESION, NOT_LESION, check_corrections
from napari_metseg.lesions import LesionTable, lesion_table
from napari_metseg.thresholds import CANDIDATE_THRESHOLD

#: The lesion table's column saying a lesion holds a lesion mark.
PAINTED = "painted"


def annotated_lesions(
    probability: np.ndarray,
    corrections: np.ndarray | None,
    geometry: Geometry,
    threshold: float = CANDIDATE_THRESHOLD,
    min_volume_mm3: float = 0.0,
) -> LesionTable:
    """:func:`~napari_metseg.lesions.lesion_table` of ``probability`` with the marks of
    ``corrections`` (uint8 on the same grid, or None) applied, and a :data:`PAINTED` column.

    Lesion-marked voxels are candidates whatever their probability and their
    lesions stay whatever ``min_volume_mm3``; 'not lesion' voxels are none.
    Confidence stays the model's own (a painted lesion it misses reads low).
    """
    lesion = candidates = None
    if corrections is not None:
        corrections = check_corrections(corrections, np.shape(probability))
        lesion = corrections == LESION
        candidates = ((np.asarray(probability) >= threshold) | lesion) & (corrections != NOT_LESION)
    table, labels = lesion_table(
        probability,
        geometry,
        threshold=threshold,
        min_volume_mm3=min_volume_mm3,
        candidates=candidates,
        kept=lesion,
    )
    table[PAINTED] = (
        False if lesion is None else np.bincount(labels[lesion], minlength=len(table) + 1)[1:] > 0
    )
    return LesionTable(table, labels)
