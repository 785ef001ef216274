"""lesion_table: components, ordering, sizes in mm, world centroids, filters, export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_metseg.case import Geometry
from napari_metseg.errors import GeometryError
from napari_metseg.lesions import (
    COLUMNS,
    label_components,
    lesion_table,
    longest_diameters,
    write_lesion_mask,
    write_lesion_table,
)


def two_lesions() -> np.ndarray:
    """A 2x2x2 block at p = 0.5 and a 1x1x3 bar at p = 0.9 / 0.6 / 0.9 (mean 0.8)."""
    probability = np.zeros((8, 10, 12), dtype=np.float32)
    probability[1:3, 1:3, 1:3] = 0.5
    probability[5, 6, 7:10] = [0.9, 0.6, 0.9]
    return probability


def test_counts_order_volumes_and_probabilities_with_anisotropic_spacing():
    table, labels = lesion_table(two_lesions(), spacing=(3.0, 0.5, 2.0))
    assert list(table.columns) == list(COLUMNS)
    assert table["label"].tolist() == [1, 2]
    # the bar is more confident (mean 0.8) than the block (0.5), so it is lesion 1
    assert table["voxels"].tolist() == [3, 8]
    np.testing.assert_allclose(table["volume_mm3"], [3 * 3.0, 8 * 3.0])
    np.testing.assert_allclose(table["confidence"], [0.8, 0.5], rtol=1e-6)
    np.testing.assert_allclose(table["max_probability"], [0.9, 0.5], rtol=1e-6)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert np.all(labels[5, 6, 7:10] == 1) and np.all(labels[1:3, 1:3, 1:3] == 2)
    assert labels.dtype == np.int32


def test_bounding_box_and_slices_are_half_open_and_inclusive():
    table, _ = lesion_table(two_lesions(), spacing=(1.0, 1.0, 1.0))
    bar, block = table.iloc[0], table.iloc[1]
    assert (bar.slice_start, bar.slice_stop, bar.row_start, bar.row_stop) == (5, 6, 6, 7)
    assert (bar.col_start, bar.col_stop) == (7, 10)
    assert (block.slice_start, block.slice_stop) == (1, 3)


def test_centroids_in_world_coordinates_through_a_non_identity_affine():
    # axes permuted and flipped, with an origin: index (s, r, c) -> (-2c + 10, r, 3s - 5) mm
    affine = np.array(
        [[0.0, 0.0, -2.0, 10.0], [0.0, 1.0, 0.0, 0.0], [3.0, 0.0, 0.0, -5.0], [0, 0, 0, 1]]
    )
    table, _ = lesion_table(two_lesions(), spacing=(3.0, 1.0, 2.0), affine=affine)
    bar = table.iloc[0]
    assert (bar.centroid_slice, bar.centroid_row, bar.centroid_col) == (5.0, 6.0, 8.0)
    np.testing.assert_allclose(
        [bar.centroid_x_mm, bar.centroid_y_mm, bar.centroid_z_mm], [-6.0, 6.0, 10.0]
    )
    block = table.iloc[1]
    np.testing.assert_allclose(
        [block.centroid_x_mm, block.centroid_y_mm, block.centroid_z_mm], [7.0, 1.5, -0.5]
    )


def test_a_geometry_gives_spacing_and_affine():
    # a RAS file of shape (12, 10, 8) with 2 mm slices; internally (8, 10, 12), x = 11 - col
    geometry = Geometry.from_source((12, 10, 8), np.diag([1.0, 1.0, 2.0, 1.0]))
    table, _ = lesion_table(two_lesions(), geometry)
    assert table.iloc[0].centroid_x_mm == pytest.approx(3.0)
    assert table.iloc[0].centroid_z_mm == pytest.approx(10.0)
    assert table.iloc[0].volume_mm3 == pytest.approx(6.0)


def test_diagonal_neighbours_join_with_26_but_not_6_connectivity():
    probability = np.zeros((4, 4, 4), dtype=np.float32)
    probability[0, 0, 0] = probability[1, 1, 1] = 0.7  # corners touch
    probability[3, 3, 3] = 0.7
    assert len(lesion_table(probability, (1, 1, 1)).table) == 2
    assert len(lesion_table(probability, (1, 1, 1), connectivity=6).table) == 3
    assert label_components(probability > 0, 18)[1] == 3


def test_minimum_volume_filter_keeps_lesions_of_exactly_the_limit():
    # 1 mm^3 voxels: sizes 9, 10 and 11 voxels
    probability = np.zeros((3, 12, 12), dtype=np.float32)
    probability[0, 0, 0:9] = 0.5
    probability[1, 4, 0:10] = 0.6
    probability[2, 8, 0:11] = 0.7
    table, labels = lesion_table(probability, (1.0, 1.0, 1.0), min_volume_mm3=10.0)
    assert table["voxels"].tolist() == [11, 10]
    assert labels[0].max() == 0
    assert set(np.unique(labels)) == {0, 1, 2}


def test_threshold_is_inclusive_and_empty_volume_gives_an_empty_table():
    probability = np.zeros((2, 3, 3), dtype=np.float32)
    probability[0, 0, 0] = 0.25
    assert len(lesion_table(probability, (1, 1, 1), threshold=0.25).table) == 1
    table, labels = lesion_table(np.zeros((2, 3, 3)), (1, 1, 1))
    assert table.empty and list(table.columns) == list(COLUMNS)
    assert not labels.any()


def test_equal_confidences_order_by_volume_then_scan_order():
    probability = np.zeros((1, 3, 9), dtype=np.float32)
    probability[0, 0, 0] = 0.5
    probability[0, 2, 0:3] = 0.5
    probability[0, 0, 6] = 0.5
    table, labels = lesion_table(probability, (1, 1, 1))
    assert table["voxels"].tolist() == [3, 1, 1]
    assert labels[0, 0, 0] == 2 and labels[0, 0, 6] == 3


def test_longest_diameter_in_mm():
    labels = np.zeros((3, 12, 5), dtype=np.int32)
    labels[1, 1:11, 2] = 1  # a 10-voxel line along rows
    labels[0, 0, 0] = 2  # a single voxel
    diameters = longest_diameters(labels, 2, np.diag([3.0, 0.5, 2.0, 1.0]))
    # line: 9 voxel steps of 0.5 mm + one voxel width (0.5 mm); single voxel: its longest edge
    np.testing.assert_allclose(diameters, [5.0, 3.0])


def test_longest_diameter_of_a_large_ball_uses_its_hull():
    grid = np.indices((21, 21, 21)) - 10
    ball = (np.sum(grid**2, axis=0) <= 100).astype(np.int32)
    (diameter,) = longest_diameters(ball, 1, np.eye(4))
    # at least the axis extent (21 voxels), at most 20 mm between centres + a voxel diagonal
    assert 21.0 <= diameter <= 20.0 + np.sqrt(3.0)


def brute_force_diameter(labels: np.ndarray, label: int, linear: np.ndarray) -> float:
    """Distance plus voxel width over every pair of the lesion's voxels."""
    points = np.argwhere(labels == label) @ linear.T
    difference = points[:, None] - points[None]
    distance = np.linalg.norm(difference, axis=2)
    with np.errstate(invalid="ignore"):
        extent = np.abs((difference / distance[..., None]) @ linear).sum(axis=2)
    extent[distance == 0] = np.linalg.norm(linear, axis=0).max()
    return float((distance + extent).max())


def test_longest_diameters_equal_all_voxel_pairs_on_an_oblique_grid():
    # blurred noise cut at two levels: many small blobs and a few big irregular ones
    from scipy import ndimage

    rng = np.random.default_rng(3)
    field = ndimage.gaussian_filter(rng.random((14, 20, 18)), 1.5)
    linear = np.array([[0.0, 0.2, 1.3], [0.9, 0.1, 0.0], [0.1, 1.1, 0.3]])
    affine = np.eye(4)
    affine[:3, :3] = linear
    for level in (np.quantile(field, 0.8), np.quantile(field, 0.6)):
        labels, count = label_components(field >= level)
        sizes = np.bincount(labels.ravel())[1:]
        assert sizes.max() > 100 and count > 3
        expected = [brute_force_diameter(labels, k + 1, linear) for k in range(count)]
        np.testing.assert_allclose(longest_diameters(labels, count, affine), expected, rtol=1e-12)


def test_an_all_positive_map_is_one_lesion_measured_corner_to_corner():
    # a bad model's map: every voxel positive, its hull the box's 8 corners
    table, labels = lesion_table(np.full((60, 70, 80), 0.6, np.float32), (2.0, 1.0, 1.0))
    assert len(table) == 1 and labels.min() == 1
    span = np.array([59 * 2.0, 69.0, 79.0])
    width = np.abs(span / np.linalg.norm(span) * [2.0, 1.0, 1.0]).sum()
    np.testing.assert_allclose(table["diameter_mm"], [np.linalg.norm(span) + width])


def test_bad_inputs_name_the_value():
    with pytest.raises(GeometryError, match="3D"):
        lesion_table(np.zeros((4, 4)), (1, 1, 1))
    with pytest.raises(GeometryError, match="spacing"):
        lesion_table(np.zeros((2, 2, 2)), (1, 0, 1))
    with pytest.raises(GeometryError, match="disagrees"):
        lesion_table(np.zeros((2, 2, 2)), (1, 1, 1), affine=np.diag([2.0, 1, 1, 1]))
    with pytest.raises(ValueError, match="threshold"):
        lesion_table(np.zeros((2, 2, 2)), (1, 1, 1), threshold=0.0)
    with pytest.raises(ValueError, match="connectivity"):
        lesion_table(np.zeros((2, 2, 2)), (1, 1, 1), connectivity=8)
    with pytest.raises(ValueError, match="NaN"):
        lesion_table(np.full((2, 2, 2), np.nan), (1, 1, 1))
    with pytest.raises(GeometryError, match="candidates of shape"):
        lesion_table(np.zeros((2, 2, 2)), (1, 1, 1), candidates=np.ones((2, 2, 3), bool))


def test_exports_csv_and_nifti_mask(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    geometry = Geometry.from_source((12, 10, 8), np.diag([1.0, 1.0, 2.0, 1.0]))
    table, labels = lesion_table(two_lesions(), geometry)
    write_lesion_table(table, tmp_path / "lesions.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "lesions.csv"), table, check_dtype=False)
    write_lesion_mask(tmp_path / "mask.nii.gz", labels, geometry)
    stored = np.asarray(nibabel.load(tmp_path / "mask.nii.gz").dataobj)
    np.testing.assert_array_equal(geometry.to_internal(stored), labels)
