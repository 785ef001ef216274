"""Case in, files out: the segmentation pipeline that the CLI and the headless demo share."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from napari_metseg.case import Case
from napari_metseg.engine import Presence, SegmentationInfo, Segmenter
from napari_metseg.io import write_volume
from napari_metseg.lesions import lesion_table, write_lesion_table
from napari_metseg.model import MetsegNet
from napari_metseg.progress import ProgressCallback

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentedFiles:
    """What :func:`segment_to_files` wrote: the lesion ``table``, how the case was
    segmented (``info``: device, precision, skipped slices, seconds) and the folder."""

    table: pd.DataFrame
    info: SegmentationInfo
    out: Path


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
) -> SegmentedFiles:
    """Segment ``case`` and write its results to ``out``.

    Files, all on the reference file's own grid: ``probability.nii.gz``,
    ``mask.nii.gz`` (lesion ids in the table's order, 0 background),
    ``lesions.csv``, ``segmentation.json`` (the :class:`SegmentationInfo`
    and threshold, so a result says which sequences and device made it), and
    with ``write_sequences`` the sequences themselves (``<sequence>.nii.gz``,
    resampled onto the reference grid).
    """
    segmentation = Segmenter(model, device)(case, present, progress, cancel)
    probability, info = segmentation.probability, segmentation.info
    table, labels = lesion_table(probability, case.geometry, threshold=threshold)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if write_sequences:
        for sequence, image in case.images.items():
            write_volume(out / f"{sequence}.nii.gz", image, case.geometry, kind="image")
    write_volume(out / "probability.nii.gz", probability, case.geometry, kind="image")
    write_volume(out / "mask.nii.gz", labels, case.geometry, kind="mask")
    write_lesion_table(table, out / "lesions.csv")
    record = {"case": case.name, "threshold": threshold, "lesions": len(table), **asdict(info)}
    (out / "segmentation.json").write_text(json.dumps(record, indent=2) + "\n")
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
