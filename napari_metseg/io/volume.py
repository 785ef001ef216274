"""The :class:`Volume` type and its readers per format, into internal order ``(slice, row, col)``.

NIfTI goes through nibabel (``img.affine``: the sform or qform nibabel picks);
a ``.nii.gz`` is inflated whole with ISA-L (``isal``, about 1.5x zlib's speed)
and parsed from memory, faster than nibabel's streaming reads. SimpleITK is
imported only for the formats that need it.
NRRD / NHDR / MetaImage / single DICOM files go through SimpleITK, whose arrays
are ``(z, y, x)`` in LPS world coordinates: they are transposed to ``(x, y, z)``
and the affine built from spacing, origin and direction is flipped to RAS. A
folder is read as a DICOM series (:mod:`napari_metseg.io.dicom`); :func:`napari_metseg.io.formats.read_volume`
picks the reader a path needs. Every reader
ends in :meth:`Geometry.from_source` and :meth:`Geometry.to_internal`, so the
world position of each voxel is exactly the file's.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from isal import igzip
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

if TYPE_CHECKING:
    import SimpleITK as sitk

from napari_metseg.case import Geometry
from napari_metseg.errors import GeometryError, ReadError

logger = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True, eq=False)
class Volume:
    """One volume in internal order.

    ``data`` is float32 of shape ``geometry.shape`` ``(slice, row, col)``;
    ``metadata`` holds ``format``, ``dtype`` (the file's), ``description`` and
    format-specific items (NIfTI xform codes, DICOM series UIDs, notes).
    """

    data: np.ndarray
    geometry: Geometry
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


def read_nifti(path: Path, volume_index: int | None) -> Volume:
    try:
        image = _load_nifti(path)
        shape = tuple(int(s) for s in image.shape)
        index = _volume_index(path, shape, volume_index)
        proxy = image.dataobj if index is None else image.dataobj[..., index]
        source = np.asarray(proxy, dtype=np.float32)
    except (
        ImageFileError,
        HeaderDataError,
        OSError,
        EOFError,
        ValueError,
        zlib.error,
        gzip.BadGzipFile,
    ) as error:
        raise ReadError(f"{path}: not a readable NIfTI file ({error})") from error
    source = source.reshape(shape[:3])
    header = image.header
    metadata = {
        "format": "nifti",
        "dtype": str(image.get_data_dtype()),
        "description": _text(header.get("descrip", b"")),
        "sform_code": int(header.get_sform(coded=True)[1] or 0),
        "qform_code": int(header.get_qform(coded=True)[1] or 0),
    }
    if index is not None:
        metadata |= {"volume_index": index, "n_volumes": shape[3]}
    return make_volume(path, source, image.affine, metadata)


def _load_nifti(path: Path) -> nib.Nifti1Image:
    """A NIfTI-1 or -2 image; gzip inflated in one call, plain files memory-mapped."""
    if not path.name.lower().endswith(".gz"):
        return nib.load(path)
    raw = igzip.decompress(path.read_bytes())
    header_size = int.from_bytes(raw[:4], "little") if len(raw) >= 4 else 0
    if header_size not in (348, 540):
        header_size = int.from_bytes(raw[:4], "big")
    kind = nib.Nifti2Image if header_size == 540 else nib.Nifti1Image
    return kind.from_bytes(raw)


def read_itk(path: Path, volume_index: int | None = None) -> Volume:
    """Read one file with SimpleITK (NRRD, NHDR, MetaImage, single DICOM)."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ReadError(f"{path}: not a readable image ({_first_line(error)})") from error
    fmt = {".nrrd": "nrrd", ".nhdr": "nrrd", ".dcm": "dicom"}.get(path.suffix.lower(), "metaimage")
    return volume_from_itk(path, image, {"format": fmt})


def volume_from_itk(
    path: Path, image: sitk.Image, metadata: dict[str, Any], volume_index: int | None = None
) -> Volume:
    """A :class:`Volume` from a SimpleITK image: LPS -> RAS, ``(z, y, x)`` -> ``(x, y, z)``."""
    import SimpleITK as sitk

    size = tuple(int(s) for s in image.GetSize())
    components = image.GetNumberOfComponentsPerPixel()
    if image.GetDimension() == 4 or components > 1:
        n = size[3] if image.GetDimension() == 4 else components
        index = _volume_index(path, size[:3] + (n,), volume_index)
        if image.GetDimension() == 4:
            image = sitk.Extract(image, size[:3] + (0,), (0, 0, 0, index))
        else:
            image = sitk.VectorIndexSelectionCast(image, index)
        metadata = metadata | {"volume_index": index, "n_volumes": n}
    else:
        _volume_index(path, size, volume_index)
    description = next(
        (
            image.GetMetaData(k)
            for k in ("0008|103e", "ITK_InputFilterName")
            if image.HasMetaDataKey(k)
        ),
        "",
    )
    metadata = {
        "dtype": image.GetPixelIDTypeAsString(),
        "description": description.strip(),
    } | metadata
    source = np.transpose(sitk.GetArrayFromImage(image).astype(np.float32, copy=False))
    return make_volume(path, source, itk_affine(image), metadata)


def itk_affine(image: sitk.Image) -> np.ndarray:
    """RAS+ affine of a 3D SimpleITK image, mapping ``(x, y, z)`` indices to mm."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return affine


def make_volume(
    path: Path, source: np.ndarray, affine: np.ndarray, metadata: dict[str, Any]
) -> Volume:
    """Check a source-order 3D array and wrap it, reoriented, with its geometry."""
    if source.ndim != 3 or min(source.shape) < 2:
        raise GeometryError(
            f"{path}: a 2D image (shape {source.shape}); a 3D volume with at least 2 "
            "voxels along every axis is needed"
        )
    bad = int(np.count_nonzero(~np.isfinite(source)))
    if bad:
        raise ReadError(f"{path}: {bad} voxels are NaN or infinite")
    try:
        geometry = Geometry.from_source(source.shape, affine)
    except GeometryError as error:
        raise GeometryError(f"{path}: {error}") from error
    return Volume(geometry.to_internal(source), geometry, path, metadata)


def read_png_stack(folder: Path, spacing_mm: float = 1.0) -> Volume:
    """Stack the PNG slices of ``folder`` (sorted by the numbers in their names).

    PNGs carry no geometry: the stack is taken as axial, ``spacing_mm``
    isotropic, slice index increasing towards superior, rows anterior ->
    posterior and columns patient right -> left (radiological display), which
    is already the internal order.
    """
    from PIL import Image, UnidentifiedImageError

    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() == ".png"),
        key=lambda p: natural_key(p.name),
    )
    if not files:
        raise ReadError(f"{folder}: no PNG slices in this folder")
    slices = []
    for file in files:
        try:
            with Image.open(file) as picture:
                grey = picture.convert("F") if picture.mode not in ("I", "I;16", "F") else picture
                slices.append(np.asarray(grey, dtype=np.float32))
        except (OSError, UnidentifiedImageError) as error:
            raise ReadError(f"{file}: not a readable PNG ({error})") from error
        if slices[-1].shape != slices[0].shape:
            raise ReadError(
                f"{file}: slice shape {slices[-1].shape} differs from {files[0].name} {slices[0].shape}"
            )
    affine = np.zeros((4, 4))
    affine[:3, :3] = np.array([[0, 0, -1.0], [0, -1.0, 0], [1.0, 0, 0]]) * spacing_mm
    affine[3, 3] = 1.0
    metadata = {
        "format": "png",
        "dtype": "uint8/uint16 slices",
        "description": "",
        "n_slices": len(files),
    }
    return make_volume(folder, np.stack(slices), affine, metadata)


def natural_key(name: str) -> list[Any]:
    """Sort key ordering ``2.png`` before ``10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _volume_index(path: Path, shape: tuple[int, ...], volume_index: int | None) -> int | None:
    """The volume to take of a 4D shape, or None for 3D data; errors for >4D or a bad index."""
    if len(shape) < 3:
        raise GeometryError(f"{path}: a 2D image (shape {shape}); a 3D volume is needed")
    if len(shape) == 3 or (len(shape) == 4 and shape[3] == 1 and volume_index in (None, 0)):
        if volume_index not in (None, 0):
            raise ReadError(f"{path}: 3D image, volume_index {volume_index} does not exist")
        return 0 if len(shape) == 4 else None
    if len(shape) > 4:
        raise ReadError(f"{path}: {len(shape)}D image (shape {shape}); only 3D or 4D is read")
    if volume_index is None:
        raise ReadError(
            f"{path}: 4D image with {shape[3]} volumes (shape {shape}); choose one with "
            f"volume_index (0 to {shape[3] - 1})"
        )
    if not 0 <= volume_index < shape[3]:
        raise ReadError(
            f"{path}: volume_index {volume_index} out of range; the file holds {shape[3]} volumes"
        )
    return int(volume_index)


def _text(value: Any) -> str:
    raw = value.item() if hasattr(value, "item") else value
    text = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
    return text.split("\x00")[0].strip()


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if "ERROR" in line or "error" in line]
    return (
        lines[-1] if lines else str(error).splitlines()[0] if str(error) else type(error).__name__
    ).strip()
