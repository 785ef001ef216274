"""Which reader a path needs: the file suffixes each format takes, and :func:`read_volume`.

The one entry point for a single volume; it sits above the per-format readers
(:mod:`napari_metseg.io.volume`, :mod:`napari_metseg.io.dicom`), so neither of
them imports the other's caller.
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_metseg.errors import ReadError
from napari_metseg.io.volume import Volume, read_itk, read_nifti

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
ITK_SUFFIXES: tuple[str, ...] = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
#: Every single-file format :func:`read_volume` takes.
VOLUME_SUFFIXES: tuple[str, ...] = NIFTI_SUFFIXES + ITK_SUFFIXES


def read_volume(
    path: str | os.PathLike, volume_index: int | None = None, series: str | None = None
) -> Volume:
    """Read a NIfTI, NRRD/NHDR, MHA/MHD or DICOM file, or a DICOM series folder.

    ``volume_index`` picks one volume of a 4D file (or one component of a
    vector image); a 4D file without it is an error. ``series`` picks a DICOM
    series in a folder by SeriesInstanceUID or SeriesDescription (default: the
    largest, with a note listing the others).

    Raises :class:`ReadError` for missing, unreadable or corrupt files, 4D data
    without ``volume_index`` and NaN/inf voxels; :class:`GeometryError` for 2D
    images.
    """
    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path}: no such file or folder")
    if path.is_dir():
        from napari_metseg.io.dicom import read_dicom_series  # SimpleITK only when needed

        return read_dicom_series(path, series=series)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path, volume_index)
    if name.endswith(ITK_SUFFIXES):
        return read_itk(path, volume_index)
    raise ReadError(
        f"{path}: unsupported file type; expected one of {', '.join(VOLUME_SUFFIXES)} "
        "or a DICOM series folder"
    )
