"""A case: named MR sequences on one reference grid, with its geometry.

Internal arrays are always ordered ``(slice, row, col)`` with the slice axis the
axial axis of the reference scan. Readers reorient every volume to the
orientation codes :data:`INTERNAL_AXCODES` (superior, posterior, left: axial
slices shown as a radiologist reads them), keeping the exact voxel-to-world
affine, and remember the file's own voxel order so that predictions are written
back on exactly the grid of the source file.

World coordinates are RAS+ millimetres (the NIfTI convention). napari receives
an affine to DICOM/ITK patient coordinates (LPS) in ``(z, y, x)`` order, which
for axis-aligned scans is a positive diagonal: spacing and origin, no flips.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from napari_metseg.errors import GeometryError, SequenceError

#: The sequences the method was built for, in the network's channel order.
SEQUENCES: tuple[str, ...] = ("bravo", "cube_pre", "cube_post", "flair")

#: Orientation of internal arrays: axis 0 inferior->superior, rows
#: anterior->posterior, columns patient right->left.
INTERNAL_AXCODES: tuple[str, str, str] = ("S", "P", "L")

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True, eq=False)
class Geometry:
    """The reference grid of a case.

    ``affine`` maps internal voxel indices ``(slice, row, col)`` to RAS+ world
    millimetres. ``source_affine`` and ``source_shape`` describe the grid as
    stored in the reference file, so :meth:`to_source` can undo the
    reorientation when writing results.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray

    def __post_init__(self) -> None:
        affine = _checked_affine(self.affine, "affine")
        source_affine = _checked_affine(self.source_affine, "source_affine")
        if len(self.shape) != 3 or len(self.source_shape) != 3:
            raise GeometryError(
                f"a 3D grid is needed, got shape {self.shape} (source {self.source_shape})"
            )
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "source_affine", source_affine)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "source_shape", tuple(int(s) for s in self.source_shape))

    @classmethod
    def from_source(cls, source_shape: tuple[int, ...], source_affine: np.ndarray) -> Geometry:
        """The internal grid of a volume stored with ``source_affine``."""
        source_affine = _checked_affine(source_affine, "source_affine")
        transform = _source_to_internal(source_affine)
        shape = tuple(int(source_shape[int(axis)]) for axis in np.argsort(transform[:, 0]))
        affine = source_affine @ nib.orientations.inv_ornt_aff(transform, source_shape[:3])
        return cls(shape, affine, tuple(source_shape[:3]), source_affine)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``(slice, row, col)``."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def origin(self) -> tuple[float, float, float]:
        """RAS+ world position (mm) of the centre of voxel ``(0, 0, 0)``."""
        return tuple(float(v) for v in self.affine[:3, 3])

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit world directions of the axes."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Orientation codes of the internal axes (``('S', 'P', 'L')`` unless oblique)."""
        return tuple(nib.aff2axcodes(self.affine))

    @property
    def source_axcodes(self) -> tuple[str, str, str]:
        """Orientation codes of the axes as stored in the source file."""
        return tuple(nib.aff2axcodes(self.source_affine))

    @property
    def napari_affine(self) -> np.ndarray:
        """Affine from internal indices to LPS world ``(z, y, x)`` mm, for napari layers."""
        lps = _RAS_TO_LPS @ self.affine
        return lps[[2, 1, 0, 3]]

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm^3."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def to_internal(self, source_array: np.ndarray) -> np.ndarray:
        """Reorder a volume stored on the source grid into internal order."""
        if tuple(source_array.shape[:3]) != self.source_shape:
            raise GeometryError(
                f"array shape {source_array.shape} does not match the source grid {self.source_shape}"
            )
        transform = _source_to_internal(self.source_affine)
        return np.ascontiguousarray(nib.orientations.apply_orientation(source_array, transform))

    def to_source(self, internal_array: np.ndarray) -> np.ndarray:
        """Reorder an internal volume back into the source file's voxel order."""
        if tuple(internal_array.shape[:3]) != self.shape:
            raise GeometryError(
                f"array shape {internal_array.shape} does not match the reference grid {self.shape}"
            )
        back = nib.orientations.ornt_transform(
            nib.orientations.axcodes2ornt(INTERNAL_AXCODES),
            nib.orientations.io_orientation(self.source_affine),
        )
        return np.ascontiguousarray(nib.orientations.apply_orientation(internal_array, back))

    def world_to_voxel(self, points_ras: np.ndarray) -> np.ndarray:
        """RAS+ mm points ``(n, 3)`` to fractional internal indices ``(n, 3)``."""
        points = np.atleast_2d(np.asarray(points_ras, dtype=np.float64))
        inverse = np.linalg.inv(self.affine)
        return points @ inverse[:3, :3].T + inverse[:3, 3]

    def voxel_to_world(self, indices: np.ndarray) -> np.ndarray:
        """Internal indices ``(n, 3)`` to RAS+ mm points ``(n, 3)``."""
        indices = np.atleast_2d(np.asarray(indices, dtype=np.float64))
        return indices @ self.affine[:3, :3].T + self.affine[:3, 3]

    def same_grid(self, other: Geometry, atol_mm: float = 1e-3) -> bool:
        """True when both grids have the same shape and affine (within ``atol_mm``)."""
        return self.shape == other.shape and bool(
            np.allclose(self.affine, other.affine, atol=atol_mm)
        )

    def summary(self) -> str:
        """One line for ``metseg info`` and layer tooltips."""
        spacing = " x ".join(f"{s:.3g}" for s in self.spacing)
        return (
            f"shape {self.shape} (slice, row, col), spacing {spacing} mm, "
            f"orientation {''.join(self.axcodes)} (file {''.join(self.source_axcodes)})"
        )


def _checked_affine(affine: np.ndarray, name: str) -> np.ndarray:
    value = np.asarray(affine, dtype=np.float64)
    if value.shape != (4, 4) or not np.all(np.isfinite(value)):
        raise GeometryError(f"{name} must be a finite 4x4 matrix, got {value!r}")
    if abs(np.linalg.det(value[:3, :3])) < 1e-9:
        raise GeometryError(f"{name} is singular (zero voxel size?): {value.tolist()}")
    return value


def _source_to_internal(source_affine: np.ndarray) -> np.ndarray:
    return nib.orientations.ornt_transform(
        nib.orientations.io_orientation(source_affine),
        nib.orientations.axcodes2ornt(INTERNAL_AXCODES),
    )


@dataclass
class Case:
    """Named sequences resampled onto one reference grid, plus an optional truth mask.

    ``images`` maps sequence names (``bravo``, ``cube_pre``, ``cube_post``,
    ``flair`` for the bundled model; any subset) to float32 arrays of shape
    ``geometry.shape``. ``sources`` records the file each one came from, and
    ``mapping_notes`` how a reader decided which file plays which sequence.
    """

    images: dict[str, np.ndarray]
    geometry: Geometry
    truth: np.ndarray | None = None
    name: str = "case"
    reference: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    mapping_notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.images:
            raise SequenceError(f"case {self.name!r} holds no sequence")
        for sequence, image in self.images.items():
            if image.ndim != 3:
                raise GeometryError(
                    f"sequence {sequence!r} of case {self.name!r} is {image.ndim}D; a 3D volume is needed"
                )
            if tuple(image.shape) != self.geometry.shape:
                raise GeometryError(
                    f"sequence {sequence!r} has shape {image.shape}, but the reference grid of "
                    f"case {self.name!r} is {self.geometry.shape}; resample it first"
                )
        if self.truth is not None and tuple(self.truth.shape) != self.geometry.shape:
            raise GeometryError(
                f"truth mask shape {self.truth.shape} does not match the reference grid "
                f"{self.geometry.shape} of case {self.name!r}"
            )
        if not self.reference:
            self.reference = next(iter(self.images))

    @property
    def sequences(self) -> tuple[str, ...]:
        """Names of the sequences this case holds."""
        return tuple(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the reference grid ``(slice, row, col)``."""
        return self.geometry.shape


def fingerprint(images: Mapping[str, np.ndarray]) -> str:
    """A digest of named images: their names and voxels.

    Cases on identical grids still differ here (every BraTS case is
    240 x 240 x 155 at one affine), so state keyed by it, such as a case's
    correction workspace, never passes from one patient to another. Every
    second voxel along each axis is hashed (and every shape): a few tens of
    milliseconds for a 1 mm four-sequence case.
    """
    digest = hashlib.sha256()
    for name in sorted(images):
        digest.update(name.encode())
        image = np.asarray(images[name])
        sample = np.ascontiguousarray(image[(slice(None, None, 2),) * image.ndim], np.float32)
        digest.update(repr(image.shape).encode() + sample.tobytes())
    return digest.hexdigest()
