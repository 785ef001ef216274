"""Read a DICOM series folder with SimpleITK (GDCM), choosing among several series."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from napari_metseg.errors import ReadError
from napari_metseg.io.volume import Volume, volume_from_itk

logger = logging.getLogger(__name__)

_DESCRIPTION = "0008|103e"
_MODALITY = "0008|0060"


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series of a folder: its UID, description and slice files."""

    uid: str
    description: str
    files: tuple[str, ...]

    def label(self) -> str:
        return f"{self.description or '(no description)'} [{self.uid}, {len(self.files)} files]"


def list_series(folder: Path) -> list[SeriesInfo]:
    """The DICOM series GDCM finds directly in ``folder`` (largest first)."""
    found = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        found.append(SeriesInfo(uid, _tag(files[0], _DESCRIPTION), files))
    return sorted(found, key=lambda s: (-len(s.files), s.uid))


def choose_series(folder: Path, found: list[SeriesInfo], series: str | None) -> SeriesInfo:
    """The series matching ``series`` (UID, or description ignoring case), else the largest."""
    listing = "; ".join(s.label() for s in found)
    if not found:
        raise ReadError(f"{folder}: no DICOM series in this folder")
    if series is None:
        if len(found) > 1:
            logger.warning(
                "%s holds %d DICOM series; reading the largest, %s (others: %s). "
                "Pick one with series=UID or description.",
                folder,
                len(found),
                found[0].label(),
                "; ".join(s.label() for s in found[1:]),
            )
        return found[0]
    matches = [s for s in found if s.uid == series] or [
        s for s in found if s.description.lower() == series.strip().lower()
    ]
    if len(matches) == 1:
        return matches[0]
    problem = "several series match" if matches else "no series matches"
    raise ReadError(f"{folder}: {problem} {series!r}; series found: {listing}")


def read_dicom_series(folder: Path, series: str | None = None) -> Volume:
    """Read one series of ``folder`` (see :func:`choose_series`) as a :class:`Volume`."""
    found = list_series(folder)
    chosen = choose_series(folder, found, series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise ReadError(f"{folder}: DICOM series {chosen.uid} is not readable ({error})") from error
    metadata = {
        "format": "dicom-series",
        "series_uid": chosen.uid,
        "description": chosen.description,
        "modality": _tag(chosen.files[0], _MODALITY),
        "n_files": len(chosen.files),
    }
    if len(found) > 1:
        metadata["note"] = (
            f"{len(found)} series in the folder; read {chosen.label()}; others: "
            + "; ".join(s.label() for s in found if s is not chosen)
        )
    return volume_from_itk(folder, image, metadata)


def _tag(file: str, key: str) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return ""
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""
