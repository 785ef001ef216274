"""The cases of a dataset folder, for cohort segmentation (names only, nothing read).

:func:`list_cases` recognises, in this order:

- an nnU-Net raw dataset: ``CASE_0000.nii.gz`` ... files next to (or one level
  under) a ``dataset.json``, in the folder itself or its ``imagesTr`` /
  ``imagesTs``: one case per ``CASE`` prefix, given as its files;
- a folder that is itself one case (volume files or BrainMetShare PNG folders
  directly inside, or DICOM files): that one case;
- otherwise every visible sub-folder is a case (BraTS-METS, BrainMetShare,
  our own layout, one DICOM folder per case), named by the sub-folder.

Which file plays which sequence is decided later, per case, by
:func:`napari_metseg.io.scan_case`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from napari_metseg.errors import ReadError
from napari_metseg.io.formats import VOLUME_SUFFIXES
from napari_metseg.io.plans import BRAINMETSHARE, PathOrPaths

_NNUNET = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(\.gz)?$", re.IGNORECASE)


def list_cases(folder: str | os.PathLike) -> list[tuple[str, PathOrPaths]]:
    """``(name, input)`` of every case under ``folder``, sorted by name.

    ``input`` is what :func:`~napari_metseg.io.read_case` takes: a case folder
    or, for nnU-Net datasets, the case's list of channel files. Raises
    :class:`ReadError` for a missing folder or one holding no case.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReadError(f"{folder}: not a folder of cases")
    nnunet = _nnunet_cases(folder)
    if nnunet:
        return nnunet
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if any(_is_case_content(p) for p in entries):
        return [(folder.name, folder)]
    cases = [(p.name, p) for p in entries if p.is_dir()]
    if not cases:
        raise ReadError(f"{folder}: no case folders, volume files or nnU-Net cases found")
    return cases


def _nnunet_cases(folder: Path) -> list[tuple[str, PathOrPaths]]:
    for images in (folder / "imagesTs", folder / "imagesTr", folder):
        if not images.is_dir():
            continue
        if not any((base / "dataset.json").is_file() for base in (images, images.parent)):
            continue
        grouped: dict[str, list[Path]] = {}
        for path in sorted(images.iterdir()):
            match = _NNUNET.match(path.name)
            if match and path.is_file():
                grouped.setdefault(match["case"], []).append(path)
        if grouped:
            return [(name, files) for name, files in sorted(grouped.items())]
    return []


def _is_case_content(path: Path) -> bool:
    """A volume file, a BrainMetShare PNG folder or a DICOM file: the folder is one case."""
    name = path.name.lower()
    if path.is_file():
        return name.endswith(VOLUME_SUFFIXES) or name.endswith(".dcm")
    return path.name in BRAINMETSHARE and any(p.suffix.lower() == ".png" for p in path.iterdir())
