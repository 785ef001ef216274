"""The synthetic case generator: determinism, lesions, contrasts, background."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from napari_metseg.case import SEQUENCES
from napari_metseg.cli import main
from napari_metseg.io import read_case
from napari_metseg.phantom import (
    PhantomConfig,
    generate_phantom,
    make_phantom,
    randomised,
    write_phantom,
)
from napari_metseg.phantom.acquisition import thick_slices
from napari_metseg.phantom.anatomy import load_anatomy

SPACING = 3.0  # tiny cases: 63 x 78 x 66 voxels


@pytest.fixture(scope="module")
def phantom():
    # mid-sized lesions, so every one has voxels well inside it at 3 mm
    return generate_phantom(7, n_lesions=8, spacing=SPACING, config=_config())


def _config(**changes) -> PhantomConfig:
    return PhantomConfig(diameter_range_mm=(9.0, 16.0), **changes)


def _anatomy_internal(phantom, name):
    anatomy = load_anatomy(SPACING)
    return phantom.case.geometry.to_internal(np.asarray(getattr(anatomy, name)))


def _ball(phantom, centre_mm, radius_mm):
    """Bool mask of voxels within ``radius_mm`` of a world point."""
    geometry = phantom.case.geometry
    grid = np.indices(geometry.shape).reshape(3, -1).T
    distance = np.linalg.norm(geometry.voxel_to_world(grid) - centre_mm, axis=1)
    return (distance <= radius_mm).reshape(geometry.shape)


def _local_white_matter(phantom, centre_mm):
    """White matter within 35 mm of a lesion, clear of every lesion's oedema."""
    mask = _ball(phantom, centre_mm, 35.0) & (_anatomy_internal(phantom, "wm") > 0.95)
    for lesion in phantom.lesions:
        mask &= ~_ball(phantom, lesion.centre_mm, lesion.oedema_mm + 2 * SPACING)
    return mask


def test_same_seed_same_case_and_different_seeds_differ():
    first = make_phantom(3, spacing=SPACING)
    again = make_phantom(3, spacing=SPACING)
    other = make_phantom(4, spacing=SPACING)
    for sequence in SEQUENCES:
        np.testing.assert_array_equal(first.images[sequence], again.images[sequence])
        assert not np.array_equal(first.images[sequence], other.images[sequence])
    np.testing.assert_array_equal(first.truth, again.truth)


def test_case_layout_and_geometry(phantom):
    case = phantom.case
    assert case.sequences == SEQUENCES
    assert case.reference == "bravo"
    assert case.truth.dtype == np.uint8 and set(np.unique(case.truth)) == {0, 1}
    assert case.geometry.spacing == pytest.approx((SPACING,) * 3)
    assert case.geometry.axcodes == ("S", "P", "L")
    for image in case.images.values():
        assert image.dtype == np.float32 and image.shape == case.shape


def test_truth_has_one_component_per_lesion_each_at_its_centre(phantom):
    labels, count = ndimage.label(phantom.case.truth, structure=np.ones((3, 3, 3)))
    assert count == len(phantom.lesions) == 8
    geometry = phantom.case.geometry
    hit = set()
    for lesion in phantom.lesions:
        index = np.rint(geometry.world_to_voxel(lesion.centre_mm)[0]).astype(int)
        hit.add(int(labels[tuple(index)]))
    assert hit == set(range(1, count + 1))


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_default_lesion_count_and_sizes_within_range(seed):
    result = generate_phantom(seed, spacing=SPACING)
    assert 1 <= len(result.lesions) <= 30
    for lesion in result.lesions:
        assert 2.0 * 0.5 <= 2 * lesion.radius_mm <= 30.0
    _, count = ndimage.label(result.case.truth, structure=np.ones((3, 3, 3)))
    assert count == len(result.lesions)


def test_thirty_lesions_fit_and_bad_counts_are_refused():
    result = generate_phantom(11, n_lesions=30, spacing=SPACING)
    _, count = ndimage.label(result.case.truth, structure=np.ones((3, 3, 3)))
    assert count == 30
    with pytest.raises(ValueError, match="31"):
        generate_phantom(0, n_lesions=31, spacing=SPACING)
    with pytest.raises(ValueError, match="0"):
        generate_phantom(0, n_lesions=0, spacing=SPACING)


def test_lesions_enhance_on_bravo_and_cube_post_not_cube_pre(phantom):
    ratios = {sequence: [] for sequence in SEQUENCES}
    for lesion in phantom.lesions:
        if lesion.kind != "solid":
            continue
        core = _ball(phantom, lesion.centre_mm, 0.5 * lesion.radius_mm)
        white = _local_white_matter(phantom, lesion.centre_mm)
        for sequence, image in phantom.case.images.items():
            ratios[sequence].append(image[core].mean() / image[white].mean())
    assert len(ratios["bravo"]) >= 3
    assert min(ratios["bravo"]) > 1.1
    assert min(ratios["cube_post"]) > 1.25
    assert max(ratios["cube_pre"]) < 0.9
    # cube_post separates lesions from white matter better than bravo
    assert np.mean(ratios["cube_post"]) > np.mean(ratios["bravo"])


def test_oedema_is_bright_on_flair_only_around_lesions(phantom):
    oedema = phantom.oedema & (_anatomy_internal(phantom, "wm") > 0.8)
    assert oedema.sum() > 20
    near_lesion = np.zeros_like(oedema)
    for lesion in phantom.lesions:
        near_lesion |= _ball(phantom, lesion.centre_mm, lesion.oedema_mm + SPACING)
    assert not (oedema & ~near_lesion).any()
    assert not (oedema & (phantom.case.truth > 0)).any()
    white = np.zeros_like(oedema)
    for lesion in phantom.lesions:
        white |= _local_white_matter(phantom, lesion.centre_mm)
    ratio = {s: im[oedema].mean() / im[white].mean() for s, im in phantom.case.images.items()}
    assert ratio["flair"] > 1.4
    assert ratio["bravo"] < 0.95 and ratio["cube_pre"] < 0.95 and ratio["cube_post"] < 0.95


def test_vessels_are_bright_on_bravo_only(phantom):
    vessels = phantom.vessels
    assert vessels.sum() > 50
    parenchyma = (_anatomy_internal(phantom, "gm") + _anatomy_internal(phantom, "wm")) > 0.9
    parenchyma &= ~ndimage.binary_dilation(vessels | (phantom.case.truth > 0), iterations=2)
    contrast = {
        sequence: image[vessels].mean() / image[parenchyma].mean()
        for sequence, image in phantom.case.images.items()
    }
    assert contrast["bravo"] > 1.15
    assert contrast["cube_pre"] < 1.0 and contrast["cube_post"] < 1.0 and contrast["flair"] < 1.0


def test_background_outside_the_head_is_exactly_zero(phantom):
    head = _anatomy_internal(phantom, "head")
    # partial-volume edge voxels (one voxel) plus misregistration (a few mm)
    near_head = ndimage.distance_transform_edt(~head) * SPACING <= SPACING + 6.0
    for sequence, image in phantom.case.images.items():
        assert not image[~near_head].any(), sequence
        assert (image[head] > 0).mean() > 0.99, sequence
    assert (~near_head).mean() > 0.3
    assert not phantom.case.truth[~head].any()


def test_default_settings_leave_earlier_phantoms_unchanged(phantom):
    # the appearance knobs at their defaults draw nothing: same case as before they existed
    again = generate_phantom(7, n_lesions=8, spacing=SPACING, config=_config(ring_from_mm=6.0))
    np.testing.assert_array_equal(again.case.images["flair"], phantom.case.images["flair"])


def test_randomised_settings_are_deterministic_and_cover_the_ranges():
    draws = [randomised(seed) for seed in range(60)]
    assert randomised(3) == draws[3]
    spacings = [spacing for spacing, _ in draws]
    assert 0.9 <= min(spacings) < 1.05 and 1.35 < max(spacings) <= 1.5
    configs = [config for _, config in draws]
    assert 10 < sum(c.flair_thickness_mm > 0 for c in configs) < 35
    assert 15 < sum(c.ring_from_mm == 3.0 for c in configs) < 45
    assert 15 < sum(c.enhancement_range[0] < 0.3 for c in configs) < 45
    assert len({c.n_vessels for c in configs}) > 30 and len({c.noise for c in configs}) == 60


def test_contrast_jitter_and_thick_flair_change_only_their_sequences(phantom):
    jittered = generate_phantom(
        7, n_lesions=8, spacing=SPACING, config=_config(contrast_jitter=0.2)
    )
    assert not np.allclose(jittered.case.images["cube_post"], phantom.case.images["cube_post"])
    np.testing.assert_array_equal(jittered.case.truth, phantom.case.truth)
    image = np.zeros((4, 4, 12), np.float32)
    image[..., 6] = 1.0
    thick = thick_slices(image, spacing=1.0, thickness_mm=3.0)
    assert thick.shape == image.shape
    # a thin bright plane spreads over a slab: a third as bright, as much in all
    assert thick[0, 0].max() == pytest.approx(1 / 3) and thick[0, 0].sum() == pytest.approx(1.0)
    assert thick_slices(image, spacing=1.0, thickness_mm=1.2) is image


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="diameter_range_mm"):
        PhantomConfig(diameter_range_mm=(5.0, 2.0))
    with pytest.raises(ValueError, match="noise"):
        PhantomConfig(noise=-0.1)
    with pytest.raises(ValueError, match="enhancement_range"):
        PhantomConfig(enhancement_range=(0.0, 0.5))


def test_write_phantom_round_trips_through_read_case(tmp_path):
    out = write_phantom(tmp_path / "case", seed=3, n_lesions=4, spacing=SPACING, name="p3")
    assert out == tmp_path / "case"
    names = {f"p3_{s}.nii.gz" for s in (*SEQUENCES, "seg")}
    assert {p.name for p in out.iterdir()} == names | {"p3_lesions.json"}

    expected = make_phantom(3, n_lesions=4, spacing=SPACING)
    case = read_case(out)
    assert set(case.sequences) == set(SEQUENCES)
    np.testing.assert_allclose(case.geometry.affine, expected.geometry.affine, atol=1e-5)
    np.testing.assert_allclose(case.images["cube_post"], expected.images["cube_post"], atol=1e-5)
    np.testing.assert_array_equal(case.truth, expected.truth)
    record = json.loads((out / "p3_lesions.json").read_text())
    assert record["seed"] == 3 and record["n_lesions"] == 4 and len(record["lesions"]) == 4
    assert {"centre_mm", "radius_mm", "kind"} <= set(record["lesions"][0])


def test_cli_phantom_writes_a_readable_case(tmp_path):
    assert (
        main(
            ["phantom", "--out", str(tmp_path), "--seed", "2", "--n-lesions", "3", "--spacing", "4"]
        )
        == 0
    )
    assert read_case(tmp_path).truth is not None
    with pytest.raises(SystemExit):
        main(["phantom", "--out", str(tmp_path), "--seed", "2", "--n-lesions", "31"])
