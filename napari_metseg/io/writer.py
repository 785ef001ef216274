"""Write an internal volume back to NIfTI on the grid of its source file.

Internal arrays are ordered ``(slice, row, col)``; the reference file may store
its voxels in any order. Writing through :meth:`Geometry.to_source` with the
source affine puts every voxel back at the exact world position it was read
from, so a mask written here overlays the reference scan in any viewer.
``.nii.gz`` files are deflated with ISA-L at level 1 (about 6x zlib's speed,
zlib's level-1 size).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from isal import igzip

from napari_metseg.atomic import atomic_write
from napari_metseg.case import Geometry
from napari_metseg.thresholds import CANDIDATE_THRESHOLD

logger = logging.getLogger(__name__)

#: Accepted ``kind`` values: float images, or masks / label maps of whole numbers.
KINDS: tuple[str, ...] = ("image", "mask")

#: NIfTI sform/qform code written: 1 = scanner-based anatomical coordinates.
XFORM_CODE = 1

#: Probability files: uint16 steps of 2^-15 (``scl_slope``), so 0, 0.5 and 1 are exact.
PROBABILITY_STEP = 2.0**-15

#: ISA-L deflate level of ``.nii.gz`` files (1: fastest, zlib's level-1 size).
GZIP_LEVEL = 1


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
    path = _checked(path)
    if kind not in KINDS:
        raise ValueError(f"{path}: kind must be one of {KINDS}, got {kind!r}")
    array = np.asarray(array_internal)
    data = _as_mask(array, path) if kind == "mask" else array.astype(np.float32)
    return _save(path, data, geometry, f"napari-metseg {kind}")


def write_probability(
    path: str | os.PathLike,
    probability: np.ndarray,
    geometry: Geometry,
    threshold: float | None = CANDIDATE_THRESHOLD,
) -> Path:
    """Write a lesion probability ``[0, 1]`` compactly: uint16 with ``scl_slope`` 2^-15.

    Half of float32's bytes; NIfTI-1 has no float16, and uint8 steps (1/255)
    would tie many voxels in ROC curves and confidence rankings, while steps
    of 2^-15 (3.1e-5, exact in float32) keep them. Readers (nibabel, ITK,
    napari) apply ``scl_slope`` and get floats back. Values round to the nearest step,
    except that no voxel crosses ``threshold``: reading the file back and
    thresholding at it (``>=``, in float32 or float64) gives exactly the mask
    the float32 probability gave, as :func:`~napari_metseg.lesions.lesion_table`
    computed it. Raises ``ValueError`` for values outside ``[0, 1]``.
    """
    path = _checked(path)
    values = np.asarray(probability, dtype=np.float32)
    if values.size and not (
        np.all(np.isfinite(values)) and values.min() >= 0 and values.max() <= 1
    ):
        raise ValueError(f"{path}: a probability must lie in [0, 1]")
    steps = np.rint(values.astype(np.float64) / PROBABILITY_STEP)
    if threshold is not None:
        # the smallest step at or above the float32 threshold the mask was cut at
        first = float(np.ceil(float(np.float32(threshold)) / PROBABILITY_STEP))
        above = values >= np.float32(threshold)
        steps = np.where(above, np.maximum(steps, first), np.minimum(steps, first - 1))
    data = steps.astype(np.uint16)
    return _save(path, data, geometry, "napari-metseg probability", slope=PROBABILITY_STEP)


def _checked(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: only NIfTI (.nii or .nii.gz) is written")
    return path


def _save(
    path: Path, data: np.ndarray, geometry: Geometry, description: str, slope: float | None = None
) -> Path:
    source = geometry.to_source(data)
    image = nib.Nifti1Image(source, geometry.source_affine)
    image.header.set_data_dtype(source.dtype)
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    image.set_sform(geometry.source_affine, code=XFORM_CODE)
    image.set_qform(geometry.source_affine, code=XFORM_CODE)
    image.header.set_xyzt_units(xyz="mm")
    image.header["descrip"] = description.encode()
    payload = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = igzip.compress(payload, GZIP_LEVEL, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: Path(temporary).write_bytes(payload))
    logger.debug("wrote %s %s %s", description, source.shape, path)
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
