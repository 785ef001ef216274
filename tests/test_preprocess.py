"""Pre-processing: normalisation, resize, CLAHE, 2.5D stacks, presence."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from skimage.exposure import equalize_adapthist

from napari_metseg.case import Case, Geometry
from napari_metseg.errors import GeometryError, ReadError, SequenceError
from napari_metseg.preprocess import (
    PreprocessConfig,
    clahe_slices,
    normalise_volume,
    prepare_case,
    resize_slices,
    restore_slices,
    stack_25d,
)

SHAPE = (6, 20, 30)


def _case(names=("bravo", "flair"), shape=SHAPE, seed=0) -> Case:
    rng = np.random.default_rng(seed)
    images = {}
    for name in names:
        volume = rng.uniform(10.0, 200.0, size=shape).astype(np.float32)
        volume[0] = 0.0  # an empty slice, as above the head
        images[name] = volume
    geometry = Geometry(shape, np.eye(4), shape, np.eye(4))
    return Case(images, geometry, name="tiny")


def test_prepare_case_shapes_presence_and_absent_zeros():
    prepared = prepare_case(_case(), config=PreprocessConfig(size=16))
    assert prepared.volumes.shape == (4, 6, 16, 16)
    assert prepared.volumes.dtype == np.float32
    assert prepared.sequences == ("bravo", "cube_pre", "cube_post", "flair")
    assert prepared.present.tolist() == [True, False, False, True]
    assert prepared.native_shape == SHAPE
    # absent sequences are exact zeros, present ones are not
    assert not prepared.volumes[1].any() and not prepared.volumes[2].any()
    assert prepared.volumes[0, 1:].min() >= 0.0 and prepared.volumes[0, 1:].max() == 1.0
    # the empty first slice stays empty and is not tissue
    assert not prepared.volumes[:, 0].any()
    assert prepared.tissue.tolist() == [False] + [True] * 5


def test_present_switches_sequences_off_list_and_mapping():
    case = _case()
    by_list = prepare_case(case, present=[False, True, True, True], config=PreprocessConfig(size=8))
    assert by_list.present.tolist() == [False, False, False, True]
    assert not by_list.volumes[0].any()
    by_map = prepare_case(case, present={"flair": False}, config=PreprocessConfig(size=8))
    assert by_map.present.tolist() == [True, False, False, False]
    assert not by_map.volumes[3].any()


def test_no_sequence_present_raises_sequence_error():
    with pytest.raises(SequenceError, match="none of the sequences"):
        prepare_case(_case(), present={"bravo": False, "flair": False})
    with pytest.raises(SequenceError, match="none of the sequences"):
        prepare_case(_case(names=("t2w",)))


def test_bad_presence_raises_sequence_error():
    with pytest.raises(SequenceError, match="3 entries"):
        prepare_case(_case(), present=[True, True, True])
    with pytest.raises(SequenceError, match="t1c"):
        prepare_case(_case(), present={"t1c": True})


def test_unused_case_sequences_are_ignored_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="napari_metseg.preprocess"):
        prepared = prepare_case(_case(names=("bravo", "t2w")), config=PreprocessConfig(size=8))
    assert prepared.present.tolist() == [True, False, False, False]
    assert "t2w" in caplog.text


def test_nan_voxels_raise_read_error_naming_the_sequence():
    case = _case()
    case.images["flair"][3, 4, 5] = np.nan
    with pytest.raises(ReadError, match=r"'flair'.*1 non-finite"):
        prepare_case(case)


def test_normalise_volume_is_robust_to_a_hot_voxel():
    volume = np.zeros((1, 10, 100), dtype=np.float32)
    volume[0, :, :] = np.linspace(0.0, 100.0, 100)
    volume[0, 0, 0] = 1e6  # one hot voxel must not squash the rest
    out = normalise_volume(volume)
    assert out.max() == 1.0
    assert out[0, 5, 50] == pytest.approx(50.5 / 99.5, rel=0.02)
    assert normalise_volume(np.zeros((2, 3, 3))).sum() == 0.0


def test_clahe_is_skimage_per_slice_and_slices_are_independent():
    rng = np.random.default_rng(1)
    stack = rng.random((3, 32, 32)).astype(np.float32)
    out = clahe_slices(stack)
    for z in range(3):
        np.testing.assert_allclose(out[z], equalize_adapthist(stack[z]), atol=1e-6)
    assert out.min() >= 0.0 and out.max() <= 1.0
    changed = stack.copy()
    changed[1] = changed[1] ** 3
    out_changed = clahe_slices(changed)
    np.testing.assert_array_equal(out_changed[[0, 2]], out[[0, 2]])
    assert not np.allclose(out_changed[1], out[1])


def test_stack_25d_sequence_major_with_edge_padding():
    # value = 10 * sequence + slice, so every channel says where it came from
    volumes = (10 * np.arange(2)[:, None] + np.arange(3)[None, :]).astype(np.float32)
    volumes = volumes[:, :, None, None] * np.ones((1, 1, 2, 2), dtype=np.float32)
    stacks = stack_25d(volumes, [0, 2], context=2)
    assert stacks.shape == (2, 10, 2, 2)
    assert stacks[:, :, 0, 0].tolist() == [
        [0, 0, 0, 1, 2, 10, 10, 10, 11, 12],
        [0, 1, 2, 2, 2, 10, 11, 12, 12, 12],
    ]
    assert stack_25d(volumes, [1], context=0)[:, :, 0, 0].tolist() == [[1, 11]]
    with pytest.raises(ValueError, match=r"\[3\]"):
        stack_25d(volumes, [3])


def test_restore_slices_round_trip_on_a_smooth_image():
    rows, cols = 40, 52
    r, c = np.meshgrid(np.linspace(0, 1, rows), np.linspace(0, 1, cols), indexing="ij")
    native = np.stack([np.sin(2 * r + 1.5 * c + k) for k in range(3)]).astype(np.float32)
    small = resize_slices(native, 64, 64)
    assert small.shape == (3, 64, 64)
    back = restore_slices(small, (3, rows, cols))
    assert back.shape == (3, rows, cols) and back.dtype == np.float32
    assert np.abs(back - native).max() < 0.02
    with pytest.raises(GeometryError, match="slice counts"):
        restore_slices(small, (4, rows, cols))


def test_resize_of_a_constant_is_constant_and_identity_when_same_size():
    ones = np.ones((2, 30, 17), dtype=np.float32)
    np.testing.assert_allclose(resize_slices(ones, 8, 64), 1.0, atol=1e-6)
    np.testing.assert_array_equal(resize_slices(ones, 30, 17), ones)


def test_config_validates_values():
    with pytest.raises(ValueError, match="-1"):
        PreprocessConfig(context=-1)
    with pytest.raises(ValueError, match="1.5"):
        PreprocessConfig(clahe_clip_limit=1.5)
