"""Lesion censoring on masks whose lesions are placed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from napari_metseg.training.censoring import censor_lesions, label_lesions


def cubes(sizes: list[int], shape=(20, 20, 60)) -> np.ndarray:
    """A mask with one cube lesion of each edge length, spaced apart along columns."""
    mask = np.zeros(shape, dtype=np.uint8)
    col = 1
    for size in sizes:
        mask[1 : 1 + size, 1 : 1 + size, col : col + size] = 1
        col += size + 2
    return mask


def many_dots(n: int) -> np.ndarray:
    """``n`` single-voxel lesions on a grid two voxels apart (never touching)."""
    side = int(np.ceil(n ** (1 / 3)))
    mask = np.zeros((2 * side,) * 3, dtype=bool)
    points = np.argwhere(np.ones((side,) * 3, dtype=bool))[:n] * 2
    mask[tuple(points.T)] = True
    return mask


def test_diagonal_neighbours_are_one_lesion():
    mask = np.zeros((3, 3, 3), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = mask[2, 2, 2] = True  # corners touch only
    assert label_lesions(mask)[1] == 1


def test_stochastic_rate_within_tolerance():
    masks = [many_dots(1000) for _ in range(2)]
    censored, record = censor_lesions(masks, 0.5, "stochastic", seed=3)
    assert record.n_lesions == 2000
    # binomial(2000, 0.5): sd 22; 5 sd is 112
    assert abs(record.n_removed - 1000) < 112
    kept = sum(int(mask.sum()) for mask in censored)
    assert kept == 2000 - record.n_removed


def test_stochastic_is_deterministic_per_seed_and_extremes():
    masks = [many_dots(100)]
    first = censor_lesions(masks, 0.3, seed=1)[1]
    assert first == censor_lesions(masks, 0.3, seed=1)[1]
    assert first != censor_lesions(masks, 0.3, seed=2)[1]
    assert censor_lesions(masks, 0.0)[1].n_removed == 0
    nothing_left, record = censor_lesions(masks, 1.0)
    assert record.n_removed == 100 and not nothing_left[0].any()


def test_size_mode_removes_exactly_the_smallest_across_cases():
    masks = [cubes([1, 4, 2]), cubes([3, 5, 1])]  # volumes 1, 64, 8 | 27, 125, 1
    censored, record = censor_lesions(masks, 0.5, "size", seed=0)
    assert record.n_lesions == 6 and record.n_removed == 3
    assert sorted(lesion.volume for lesion in record.removed) == [1.0, 1.0, 8.0]
    assert [lesion.case for lesion in record.removed] == [0, 0, 1]
    assert label_lesions(censored[0])[1] == 1 and int(censored[0].sum()) == 64
    assert sorted(np.bincount(label_lesions(censored[1])[0].ravel())[1:]) == [27, 125]


def test_size_mode_uses_voxel_volumes_in_mm3():
    masks = [cubes([2]), cubes([3])]  # 8 voxels of 8 mm^3 = 64 mm^3 vs 27 voxels of 1 mm^3
    _, record = censor_lesions(masks, 0.5, "size", voxel_volumes=[8.0, 1.0])
    assert [(lesion.case, lesion.volume) for lesion in record.removed] == [(1, 27.0)]


def test_truth_unchanged_outside_removed_lesions():
    rng = np.random.default_rng(0)
    mask = (rng.random((16, 16, 16)) > 0.97).astype(np.int16) * 2
    labels, _ = label_lesions(mask)
    censored, record = censor_lesions([mask], 0.5, "stochastic", seed=5)
    removed = np.isin(labels, [lesion.label for lesion in record.removed])
    assert censored[0].dtype == mask.dtype
    assert np.array_equal(censored[0][~removed], mask[~removed])
    assert not censored[0][removed].any()
    assert mask.sum() > censored[0].sum()  # the input itself is untouched


def test_record_lists_lesion_positions():
    _, record = censor_lesions([cubes([2, 4])], 0.5, "size")
    assert record.removed[0].centroid == pytest.approx((1.5, 1.5, 1.5))
    assert record.to_json()["n_removed"] == 1 and record.removed_fraction == 0.5


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="1.5"):
        censor_lesions([cubes([1])], 1.5)
    with pytest.raises(ValueError, match="'random'"):
        censor_lesions([cubes([1])], 0.5, "random")
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        censor_lesions([np.zeros((4, 4))], 0.5)
