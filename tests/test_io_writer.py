"""write_volume: NIfTI on the source grid, exact affine, masks as small integers, atomic."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_metseg.case import Geometry
from napari_metseg.io import write_volume


def _flipped_oblique_affine() -> np.ndarray:
    """Sagittal-ish voxel order, one axis flipped, rotated 10 degrees, anisotropic."""
    angle = np.deg2rad(10.0)
    rotation = np.array(
        [[1.0, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    permutation = np.array([[0, 0, -1.0], [0, 1.0, 0], [1.0, 0, 0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ permutation @ np.diag([1.1, 0.8, 2.5])
    affine[:3, 3] = [12.0, -30.0, 4.0]
    return affine


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_image_round_trip_keeps_voxel_order_and_world_position(tmp_path, suffix) -> None:
    affine = _flipped_oblique_affine()
    source = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    geometry = Geometry.from_source(source.shape, affine)
    path = write_volume(tmp_path / f"image{suffix}", geometry.to_internal(source), geometry)

    image = nib.load(path)
    np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), source)
    np.testing.assert_allclose(image.affine, affine, atol=1e-6)
    assert image.header.get_sform(coded=True)[1] == 1
    assert image.header.get_qform(coded=True)[1] == 1
    np.testing.assert_allclose(image.header.get_qform(), affine, atol=1e-4)
    assert image.get_data_dtype() == np.float32
    # The world position of a voxel read back equals the internal geometry's.
    internal_index = np.array([1, 4, 2])
    world = geometry.voxel_to_world(internal_index)[0]
    source_index = np.rint(np.linalg.inv(image.affine) @ np.append(world, 1.0))[:3].astype(int)
    assert image.get_fdata()[tuple(source_index)] == pytest.approx(
        geometry.to_internal(source)[tuple(internal_index)]
    )


def test_mask_is_uint8_and_lesion_ids_widen(tmp_path) -> None:
    geometry = Geometry.from_source((4, 4, 4), np.diag([2.0, 2.0, 2.0, 1.0]))
    mask = np.zeros(geometry.shape, dtype=np.float32)
    mask[1, 2, 3] = 1.0
    nib_mask = nib.load(write_volume(tmp_path / "m.nii.gz", mask, geometry, kind="mask"))
    assert nib_mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(nib_mask.dataobj), geometry.to_source(mask))

    ids = np.zeros(geometry.shape, dtype=np.int64)
    ids[0, 0, 0] = 300
    written = nib.load(write_volume(tmp_path / "ids.nii.gz", ids, geometry, kind="mask"))
    assert written.get_data_dtype() == np.uint16
    assert int(np.asanyarray(written.dataobj).max()) == 300


def test_bad_requests_name_the_file_and_leave_nothing_behind(tmp_path) -> None:
    geometry = Geometry.from_source((3, 3, 3), np.eye(4))
    with pytest.raises(ValueError, match=r"m\.nii\.gz.*whole numbers"):
        write_volume(tmp_path / "m.nii.gz", np.full((3, 3, 3), 0.5), geometry, kind="mask")
    with pytest.raises(ValueError, match=r"x\.mha"):
        write_volume(tmp_path / "x.mha", np.zeros((3, 3, 3)), geometry)
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_an_existing_file_atomically(tmp_path) -> None:
    geometry = Geometry.from_source((3, 3, 3), np.eye(4))
    target = tmp_path / "a.nii.gz"
    write_volume(target, np.zeros((3, 3, 3)), geometry)
    write_volume(target, np.ones((3, 3, 3)), geometry)
    assert nib.load(target).get_fdata().min() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]


def test_probability_is_compact_and_keeps_the_mask_at_its_threshold(tmp_path) -> None:
    from napari_metseg.io import read_volume, write_probability
    from napari_metseg.io.writer import PROBABILITY_STEP

    geometry = Geometry.from_source((6, 7, 8), np.eye(4))
    probability = np.random.default_rng(3).random(geometry.shape).astype(np.float32)
    # values straddling 0.10 by less than one storage step, and the exact ends
    near = np.float32(0.1) + np.array([-2e-5, -1e-6, 0.0, 1e-6, 2e-5], dtype=np.float32)
    probability[0, 0, :5] = near
    probability[0, 1, :2] = [0.0, 1.0]
    path = write_probability(tmp_path / "p.nii.gz", probability, geometry, threshold=0.10)
    image = nib.load(path)
    assert image.get_data_dtype() == np.uint16
    back32 = read_volume(path).data  # float32, internal order
    np.testing.assert_array_equal(back32 >= 0.10, probability >= np.float32(0.10))
    mask64 = geometry.to_internal(image.get_fdata() >= 0.10)
    np.testing.assert_array_equal(mask64, probability >= np.float32(0.10))
    np.testing.assert_allclose(back32, probability, atol=PROBABILITY_STEP)
    assert back32[0, 1, 0] == 0.0 and back32[0, 1, 1] == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_probability(tmp_path / "bad.nii.gz", probability + 1.0, geometry)
