"""Put a volume onto a reference grid in physical space, optionally after rigid registration.

Both grids are internal-order geometries (affines to RAS+ mm). The voxel of the
reference at index ``p`` samples the moving volume at
``inv(A_moving) @ T @ A_reference @ p``, where ``T`` is identity or the rigid
transform found by :func:`register_rigid` (reference world -> moving world).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from napari_metseg.case import Geometry
from napari_metseg.errors import GeometryError

if TYPE_CHECKING:
    import SimpleITK as sitk

logger = logging.getLogger(__name__)

_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def world_bounds(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """RAS+ mm axis-aligned box ``(low, high)`` covering every voxel, half a voxel beyond centres."""
    corners = np.array(np.meshgrid(*[(-0.5, s - 0.5) for s in geometry.shape], indexing="ij"))
    world = geometry.voxel_to_world(corners.reshape(3, -1).T)
    return world.min(axis=0), world.max(axis=0)


def check_overlap(
    moving: Geometry, reference: Geometry, moving_name: str, reference_name: str
) -> None:
    """Raise :class:`GeometryError` when the two grids share no physical space."""
    low_m, high_m = world_bounds(moving)
    low_r, high_r = world_bounds(reference)
    if np.any(np.minimum(high_m, high_r) <= np.maximum(low_m, low_r)):
        raise GeometryError(
            f"{moving_name} and {reference_name} do not overlap in physical space: "
            f"{moving_name} spans {_box(low_m, high_m)}, {reference_name} spans "
            f"{_box(low_r, high_r)} (RAS mm); are they from the same patient and session?"
        )


def resample_to(
    data: np.ndarray,
    moving: Geometry,
    reference: Geometry,
    order: int = 1,
    transform: np.ndarray | None = None,
) -> np.ndarray:
    """``data`` (shape ``moving.shape``) resampled onto ``reference.shape``.

    ``order`` 1 is trilinear (images), 0 nearest neighbour (masks, labels keep
    their values). ``transform`` is a 4x4 RAS+ mm map from reference world to
    moving world (identity when None). Outside the moving volume the result is 0.
    """
    if transform is None and moving.same_grid(reference):
        return data
    world = np.eye(4) if transform is None else np.asarray(transform, dtype=np.float64)
    matrix = np.linalg.inv(moving.affine) @ world @ reference.affine
    output_dtype = np.float32 if order > 0 else data.dtype
    return ndimage.affine_transform(
        data,
        matrix[:3, :3],
        offset=matrix[:3, 3],
        output_shape=reference.shape,
        order=order,
        mode="constant",
        cval=0.0,
        output=output_dtype,
    )


def to_sitk(data: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image (LPS) of an internal-order array at its exact world position."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(data, dtype=np.float32))
    # sitk index (x, y, z) = internal (col, row, slice): reverse the affine's columns.
    matrix = (_RAS_LPS @ geometry.affine)[:3, :3][:, ::-1]
    spacing = np.linalg.norm(matrix, axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in (matrix / spacing).ravel()))
    image.SetOrigin(tuple(float(v) for v in (_RAS_LPS @ geometry.affine)[:3, 3]))
    return image


def register_rigid(
    fixed: np.ndarray,
    fixed_geometry: Geometry,
    moving: np.ndarray,
    moving_geometry: Geometry,
    iterations: int = 100,
    seed: int = 0,
) -> np.ndarray:
    """Rigid (Euler 3D) registration by Mattes mutual information; returns a 4x4 RAS map.

    The result maps reference (fixed) world mm to moving world mm, the form
    :func:`resample_to` takes. Two resolution levels (shrink 2, 1), geometric
    centre initialisation, seeded sampling so reruns agree.
    """
    import SimpleITK as sitk

    fixed_image = to_sitk(fixed, fixed_geometry)
    moving_image = to_sitk(moving, moving_geometry)
    initial = sitk.CenteredTransformInitializer(
        fixed_image,
        moving_image,
        sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.GEOMETRY,
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.7
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    result = method.Execute(fixed_image, moving_image)
    logger.debug(
        "rigid registration: metric %.4f after %d iterations (%s)",
        method.GetMetricValue(),
        method.GetOptimizerIteration(),
        method.GetOptimizerStopConditionDescription(),
    )
    return _ras_matrix(result)


def _ras_matrix(transform: sitk.Transform) -> np.ndarray:
    """4x4 RAS map of a SimpleITK (LPS) rigid transform, read off four mapped points."""
    points = np.vstack([np.zeros(3), np.eye(3)])
    mapped = np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in points])
    lps = np.eye(4)
    lps[:3, 3] = mapped[0]
    lps[:3, :3] = (mapped[1:] - mapped[0]).T
    return _RAS_LPS @ lps @ _RAS_LPS


def _box(low: np.ndarray, high: np.ndarray) -> str:
    return " x ".join(f"[{a:.1f}, {b:.1f}]" for a, b in zip(low, high, strict=True))
