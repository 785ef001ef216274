"""Write an internal volume back to NIfTI on the grid of its source file.

Internal arrays are ordered ``(slice, row, col)``; the reference file may store
its voxels in any order. Writing through :meth:`Geometry.to_source` with the
source affine puts every voxel back at the exact world position it was read
from, so a mask written here overlays the reference scan in any viewer.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_metseg.case import Geometry

logger = logging.getLogger(__name__)

#: Accepted ``kind`` values: float images, or masks / label maps of whole numbers.
KINDS: tuple[str, ...] = ("image", "mask")

#: NIfTI sform/qform code written: 1 = scanner-based anatomical coordinates.
XFORM_CODE = 1


def write_volume(
    path: str | os.PathLike,
    array_internal: np.ndarray,
    geometry: Geometry,
    kind: str = "image",
) -> Path:
    """Write ``array_internal`` (shape ``geometry.shape``) as ``.nii`` / ``.nii.gz``.

    Images are stored as float32. Masks (``kind="mask"``) must
    hold non-negative whole numbers and are stored as uint8, or uint16 / uint32
    when a label exceeds 255 (lesion id maps). Both sform and qform carry
    ``geometry.source_affine`` (code 1, scanner). The file appears atomically:
    it is written to a temporary file in the same folder and renamed.

    Returns the path written.
    """
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: only NIfTI (.nii or .nii.gz) is written")
    if kind not in KINDS:
        raise ValueError(f"{path}: kind must be one of {KINDS}, got {kind!r}")
    array = np.asarray(array_internal)
    data = _as_mask(array, path) if kind == "mask" else array.astype(np.float32)
    source = geometry.to_source(data)

    image = nib.Nifti1Image(source, geometry.source_affine)
    image.header.set_data_dtype(source.dtype)
    image.set_sform(geometry.source_affine, code=XFORM_CODE)
    image.set_qform(geometry.source_affine, code=XFORM_CODE)
    image.header.set_xyzt_units(xyz="mm")
    image.header["descrip"] = f"napari-metseg {kind}".encode()

    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        nib.save(image, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    logger.debug("wrote %s %s %s", kind, source.shape, path)
    return path


def _as_mask(array: np.ndarray, path: Path) -> np.ndarray:
    """The smallest unsigned integer array holding the mask's labels exactly."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.size and not np.all(np.isfinite(array)):
        raise ValueError(f"{path}: a mask must not hold NaN or infinite values")
    if array.size and (array.min() < 0 or not np.array_equal(array, np.rint(array))):
        raise ValueError(f"{path}: a mask must hold non-negative whole numbers (labels)")
    largest = int(array.max()) if array.size else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if largest <= np.iinfo(dtype).max:
            return array.astype(dtype)
    raise ValueError(f"{path}: label {largest} does not fit in 32 bits")
