"""Case in, files out: the segmentation pipeline that the CLI and the headless demo share."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pandas as pd

from napari_metseg.case import Case
from napari_metseg.engine import Presence, segment
from napari_metseg.io import write_volume
from napari_metseg.lesions import lesion_table, write_lesion_table
from napari_metseg.model import MetsegNet
from napari_metseg.progress import ProgressCallback

logger = logging.getLogger(__name__)


def segment_to_files(
    case: Case,
    model: MetsegNet,
    out: str | Path,
    present: Presence = None,
    device: str = "auto",
    threshold: float = 0.10,
    write_sequences: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> pd.DataFrame:
    """Segment ``case`` and write its results to ``out``; returns the lesion table.

    Files, all on the reference file's own grid: ``probability.nii.gz``,
    ``mask.nii.gz`` (lesion ids in the table's order, 0 background),
    ``lesions.csv``, and with ``write_sequences`` the sequences themselves
    (``<sequence>.nii.gz``, resampled onto the reference grid).
    """
    probability = segment(case, model, present, device, progress=progress, cancel=cancel)
    table, labels = lesion_table(probability, case.geometry, threshold=threshold)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if write_sequences:
        for sequence, image in case.images.items():
            write_volume(out / f"{sequence}.nii.gz", image, case.geometry, kind="image")
    write_volume(out / "probability.nii.gz", probability, case.geometry, kind="image")
    write_volume(out / "mask.nii.gz", labels, case.geometry, kind="mask")
    write_lesion_table(table, out / "lesions.csv")
    logger.info("case %r: %d lesions at threshold %g -> %s", case.name, len(table), threshold, out)
    return table
