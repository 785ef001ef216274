"""Geometry and Case: reorientation keeps world coordinates exact and is reversible."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_metseg.case import INTERNAL_AXCODES, Case, Geometry, fingerprint
from napari_metseg.errors import GeometryError, SequenceError


def _oblique_affine() -> np.ndarray:
    """A flipped, permuted, slightly rotated, anisotropic affine (LAS-like sagittal order)."""
    angle = np.deg2rad(7.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1]]
    )
    permutation = np.array([[0, 0, -1.0], [1.0, 0, 0], [0, 1.0, 0]])  # i->A, j->S, k->L
    affine = np.eye(4)
    affine[:3, :3] = rotation @ permutation @ np.diag([0.9, 1.2, 3.0])
    affine[:3, 3] = [40.0, -20.0, 15.0]
    return affine


@pytest.mark.parametrize("affine", [np.diag([1.0, 2.0, 3.0, 1.0]), _oblique_affine()])
def test_internal_order_keeps_world_coordinates(affine: np.ndarray) -> None:
    shape = (6, 7, 8)
    source = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    geometry = Geometry.from_source(shape, affine)
    internal = geometry.to_internal(source)

    assert internal.shape == geometry.shape
    assert geometry.axcodes == INTERNAL_AXCODES
    # Every voxel value sits at the same world position in both orders.
    source_index = np.array([2, 5, 3])
    world = affine[:3, :3] @ source_index + affine[:3, 3]
    internal_index = np.rint(geometry.world_to_voxel(world)[0]).astype(int)
    assert internal[tuple(internal_index)] == source[tuple(source_index)]
    np.testing.assert_allclose(geometry.voxel_to_world(internal_index)[0], world, atol=1e-9)
    np.testing.assert_array_equal(geometry.to_source(internal), source)


def test_spacing_origin_and_napari_affine_for_a_ras_volume() -> None:
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-5.0, -10.0, 20.0]
    geometry = Geometry.from_source((10, 12, 8), affine)

    assert geometry.shape == (8, 12, 10)
    assert geometry.spacing == pytest.approx((3.0, 2.0, 1.0))
    assert geometry.voxel_volume == pytest.approx(6.0)
    # LPS (z, y, x): positive diagonal = spacing, translation = LPS position of voxel 0.
    napari_affine = geometry.napari_affine
    np.testing.assert_allclose(np.diag(napari_affine)[:3], [3.0, 2.0, 1.0])
    corner_ras = geometry.voxel_to_world([[0, 0, 0]])[0]
    np.testing.assert_allclose(
        napari_affine[:3, 3], [corner_ras[2], -corner_ras[1], -corner_ras[0]]
    )


def test_orientation_codes_match_nibabel() -> None:
    affine = _oblique_affine()
    geometry = Geometry.from_source((6, 7, 8), affine)
    assert geometry.source_axcodes == nib.aff2axcodes(affine)


def test_geometry_rejects_bad_affines_and_2d_grids() -> None:
    with pytest.raises(GeometryError, match="singular"):
        Geometry.from_source((4, 4, 4), np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(GeometryError, match="finite"):
        Geometry((4, 4, 4), np.full((4, 4), np.nan), (4, 4, 4), np.eye(4))
    with pytest.raises(GeometryError, match="3D"):
        Geometry((4, 4), np.eye(4), (4, 4), np.eye(4))


def test_case_validates_shapes() -> None:
    geometry = Geometry.from_source((4, 5, 6), np.eye(4))
    image = np.zeros(geometry.shape, np.float32)
    case = Case(images={"flair": image}, geometry=geometry)
    assert case.reference == "flair"
    assert case.sequences == ("flair",)

    with pytest.raises(GeometryError, match="bravo"):
        Case(images={"bravo": np.zeros((4, 5, 7), np.float32)}, geometry=geometry)
    with pytest.raises(GeometryError, match="2D"):
        Case(images={"bravo": np.zeros((4, 5), np.float32)}, geometry=geometry)
    with pytest.raises(GeometryError, match="truth"):
        Case(images={"flair": image}, geometry=geometry, truth=np.zeros((1, 1, 1), np.uint8))
    with pytest.raises(SequenceError):
        Case(images={}, geometry=geometry)


def test_fingerprint_tells_apart_images_on_one_grid() -> None:
    image = np.arange(4 * 6 * 6, dtype=np.float32).reshape(4, 6, 6)
    assert fingerprint({"flair": image}) == fingerprint({"flair": image.copy()})
    changed = image.copy()
    changed[2, 2, 2] += 1.0
    assert fingerprint({"flair": changed}) != fingerprint({"flair": image})
    assert fingerprint({"bravo": image}) != fingerprint({"flair": image})
    assert fingerprint({"flair": image[:, :5]}) != fingerprint({"flair": image[:, :6]})
