"""Case in, files out: the segmentation pipeline that the CLI, the cohort and the demo share."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from napari_metseg.case import Case
from napari_metseg.engine import Presence, Segmentation, SegmentationInfo, Segmenter
from napari_metseg.io import write_probability, write_volume
from napari_metseg.lesions import lesion_table, write_lesion_table
from napari_metseg.model import MetsegNet
from napari_metseg.progress import ProgressCallback
from napari_metseg.thresholds import CANDIDATE_THRESHOLD

logger = logging.getLogger(__name__)

#: The file whose presence marks a finished case (written last).
RECORD = "segmentation.json"


@dataclass(frozen=True)
class SegmentedFiles:
    """What :func:`segment_to_files` wrote: the lesion ``table``, how the case was
    segmented (``info``: device, precision, skipped slices, seconds per stage)
    and the folder."""

    table: pd.DataFrame
    info: SegmentationInfo
    out: Path


def segment_to_files(
    case: Case,
    model: MetsegNet | Segmenter,
    out: str | Path,
    present: Presence = None,
    device: str = "auto",
    threshold: float = CANDIDATE_THRESHOLD,
    write_sequences: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> SegmentedFiles:
    """Segment ``case`` and write its results to ``out`` (see :func:`write_results`).

    ``model`` may be a ready :class:`Segmenter` (its device wins over ``device``); a
    model runs as a batch-norm-folded copy (``Segmenter(..., fold_batchnorm=True)``).
    """
    segmenter = (
        model if isinstance(model, Segmenter) else Segmenter(model, device, fold_batchnorm=True)
    )
    segmentation = segmenter(case, present, progress, cancel)
    return write_results(case, segmentation, out, threshold, write_sequences)


def write_results(
    case: Case,
    segmentation: Segmentation,
    out: str | Path,
    threshold: float = CANDIDATE_THRESHOLD,
    write_sequences: bool = False,
    stages: dict[str, float] | None = None,
) -> SegmentedFiles:
    """Find the lesions of a segmentation and write every result file to ``out``.

    Files, all on the reference file's own grid: ``probability.nii.gz``
    (uint16 steps of 2^-15 through ``scl_slope``; thresholding it at
    ``threshold`` gives exactly ``mask.nii.gz``'s voxels, see
    :func:`~napari_metseg.io.write_probability`), ``mask.nii.gz`` (lesion ids
    in the table's order, 0 background), ``lesions.csv``, and last
    ``segmentation.json`` (the :class:`SegmentationInfo` with the seconds of
    every stage, the threshold and the lesion count, so a result says which
    sequences and device made it; a cohort takes its presence as "done").
    With ``write_sequences``, also the sequences themselves
    (``<sequence>.nii.gz``, resampled onto the reference grid). ``stages``
    adds earlier stages (e.g. ``read``) to the record.
    """
    probability, info = segmentation.probability, segmentation.info
    started = time.perf_counter()
    table, labels = lesion_table(probability, case.geometry, threshold=threshold)
    components = time.perf_counter() - started
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if write_sequences:
        for sequence, image in case.images.items():
            write_volume(out / f"{sequence}.nii.gz", image, case.geometry, kind="image")
    write_probability(out / "probability.nii.gz", probability, case.geometry, threshold)
    write_volume(out / "mask.nii.gz", labels, case.geometry, kind="mask")
    write_lesion_table(table, out / "lesions.csv")
    times = {**(stages or {}), **info.stages, "components": components}
    times["write"] = time.perf_counter() - started
    info = SegmentationInfo(**{**asdict(info), "stages": times})
    record = {"case": case.name, "threshold": threshold, "lesions": len(table), **asdict(info)}
    record["volume_mm3"] = float(table["volume_mm3"].sum())
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    logger.info(
        "case %r: %d lesions at threshold %g with %s on %s (%.1f s, %d of %d slices skipped) -> %s",
        case.name,
        len(table),
        threshold,
        ", ".join(info.present),
        info.device,
        info.seconds,
        info.skipped,
        info.slices,
        out,
    )
    return SegmentedFiles(table, info, out)
