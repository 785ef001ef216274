"""read_case: layouts, mapping, reference grid, resampling, registration, errors; metseg info."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from napari_metseg.cli import main
from napari_metseg.errors import GeometryError, ReadError, SequenceError
from napari_metseg.io import read_case, write_volume
from napari_metseg.io.naming import guess_role

SHAPE = (8, 10, 12)


def _affine(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), flip_x: bool = False) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    if flip_x:
        affine[0, 0] *= -1
    affine[:3, 3] = origin
    return affine


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _volume(value: float) -> np.ndarray:
    """A distinct constant-plus-ramp volume, so sequences can be told apart."""
    return (value + np.arange(np.prod(SHAPE)).reshape(SHAPE) / 1000.0).astype(np.float32)


def _truth() -> np.ndarray:
    truth = np.zeros(SHAPE, np.uint8)
    truth[2:4, 3:6, 4:7] = 1
    return truth


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("case_cube_pre", "cube_pre"),
        ("case_cube_post", "cube_post"),
        ("t1ce", "cube_post"),
        ("t1c", "cube_post"),
        ("t1n", "cube_pre"),
        ("AX_MPRAGE", "bravo"),
        ("ir-fspgr_post", "bravo"),
        ("T2_FLAIR", "flair"),
        ("t2f", "flair"),
        ("precontrast", "cube_pre"),
        ("lesion_mask", "truth"),
        ("t2w", "t2w"),
    ],
)
def test_name_guessing_precedence(name, role) -> None:
    assert guess_role(name)[0] == role


def test_our_own_file_names_with_an_oblique_flipped_reference(tmp_path) -> None:
    angle = np.deg2rad(8.0)
    affine = _affine((1.0, 1.2, 2.0), (10.0, -5.0, 3.0), flip_x=True)
    affine[:3, :3] = (
        np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
        @ affine[:3, :3]
    )
    values = {"bravo": 1.0, "cube_pre": 2.0, "cube_post": 3.0, "flair": 4.0}
    for sequence, value in values.items():
        _save(tmp_path / f"pt7_{sequence}.nii.gz", _volume(value), affine)
    _save(tmp_path / "pt7_seg.nii.gz", _truth(), affine)
    (tmp_path / "pt7_lesions.json").write_text("{}")

    case = read_case(tmp_path)
    assert case.name == "pt7"
    assert case.sequences == ("bravo", "cube_pre", "cube_post", "flair")
    assert case.reference == "bravo"
    for sequence, value in values.items():
        np.testing.assert_allclose(case.geometry.to_source(case.images[sequence]), _volume(value))
    assert case.truth.dtype == np.uint8
    assert "ignored pt7_lesions.json: not an MR volume of a known layout" in case.mapping_notes
    assert "cube_pre: pt7_cube_pre.nii.gz (name matched 'cube_pre')" in case.mapping_notes

    # Mask round trip: nibabel reads the written truth with the reference's affine and voxel order.
    written = nib.load(
        write_volume(tmp_path / "out_mask.nii.gz", case.truth, case.geometry, kind="mask")
    )
    np.testing.assert_allclose(
        written.affine, nib.load(tmp_path / "pt7_bravo.nii.gz").affine, atol=1e-5
    )
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), _truth())


def test_brats_mets_names(tmp_path) -> None:
    stem = "BraTS-MET-00002-000"
    for suffix, value in {"t1n": 1.0, "t1c": 2.0, "t2w": 3.0, "t2f": 4.0}.items():
        _save(tmp_path / f"{stem}-{suffix}.nii.gz", _volume(value), _affine())
    _save(tmp_path / f"{stem}-seg.nii.gz", _truth() * 3, _affine())

    case = read_case(tmp_path)
    assert case.name == stem
    assert set(case.sequences) == {"cube_pre", "cube_post", "flair", "t2w"}
    assert case.reference == "cube_post"
    assert case.images["cube_pre"].min() == pytest.approx(1.0)
    assert case.images["flair"].min() == pytest.approx(4.0)
    assert "t2w: kept in the case, not used by the model" in case.mapping_notes
    assert case.truth.max() == 3


def test_nnunet_raw_layout_with_labels(tmp_path) -> None:
    images = tmp_path / "Dataset001_Mets" / "imagesTr"
    for channel, value in enumerate([1.0, 2.0, 3.0]):
        _save(images / f"MET_017_{channel:04d}.nii.gz", _volume(value), _affine())
    _save(images.parent / "labelsTr" / "MET_017.nii.gz", _truth(), _affine())
    channels = {"0": "T1", "1": "T1Gd", "2": "FLAIR"}
    (images.parent / "dataset.json").write_text(json.dumps({"channel_names": channels}))

    case = read_case(images)
    assert case.name == "MET_017"
    assert case.sequences == ("cube_pre", "cube_post", "flair")
    assert case.images["cube_post"].min() == pytest.approx(2.0)
    assert case.truth.sum() == _truth().sum()
    assert any("nnU-Net channel 1 'T1Gd'" in note for note in case.mapping_notes)

    _save(images / "MET_018_0000.nii.gz", _volume(9.0), _affine())
    with pytest.raises(ReadError, match="2 nnU-Net cases"):
        read_case(images)
    # The files of one case, given explicitly.
    explicit = read_case(sorted(images.glob("MET_017_*.nii.gz")))
    assert explicit.sequences == ("cube_pre", "cube_post", "flair")


def test_brainmetshare_png_folders(tmp_path, caplog) -> None:
    for folder, value in {"0": 10, "1": 20, "2": 30, "3": 40}.items():
        (tmp_path / folder).mkdir()
        for index in (1, 2, 10):  # natural order: 1, 2, 10
            pixels = np.full((6, 7), value + index, np.uint8)
            Image.fromarray(pixels).save(tmp_path / folder / f"{index}.png")
    (tmp_path / "seg").mkdir()
    for index in (1, 2, 10):
        mask = np.zeros((6, 7), np.uint8)
        mask[2, 3] = 255 if index == 2 else 0
        Image.fromarray(mask).save(tmp_path / "seg" / f"{index}.png")

    with caplog.at_level(logging.WARNING):
        case = read_case(tmp_path)
    assert case.sequences == ("bravo", "cube_pre", "cube_post", "flair")
    assert case.shape == (3, 6, 7)
    assert case.geometry.spacing == pytest.approx((1.0, 1.0, 1.0))
    np.testing.assert_array_equal(case.images["cube_post"][:, 0, 0], [31, 32, 40])
    assert case.truth[1, 2, 3] == 1 and case.truth.sum() == 1
    assert any("1 mm isotropic" in note for note in case.mapping_notes)
    assert "no geometry" in caplog.text


def test_mapping_overrides_guessing_from_dict_and_json(tmp_path) -> None:
    _save(tmp_path / "scan_a.nii.gz", _volume(1.0), _affine())
    _save(tmp_path / "scan_b.nii.gz", _volume(2.0), _affine())
    _save(tmp_path / "flair.nii.gz", _volume(3.0), _affine())

    case = read_case(tmp_path, mapping={"bravo": "scan_b.nii.gz", "cube_pre": "*_a.nii*"})
    assert case.images["bravo"].min() == pytest.approx(2.0)
    assert case.images["cube_pre"].min() == pytest.approx(1.0)
    assert case.images["flair"].min() == pytest.approx(3.0)  # still guessed

    mapping_file = tmp_path.parent / "mapping.json"
    mapping_file.write_text(json.dumps({"flair": "scan_a.nii.gz"}))
    case = read_case(tmp_path, mapping=mapping_file)
    assert case.images["flair"].min() == pytest.approx(1.0)
    assert any("ignored flair.nii.gz: looks like flair" in note for note in case.mapping_notes)

    with pytest.raises(
        SequenceError, match=r"unknown sequence 't1'.*bravo, cube_pre, cube_post, flair"
    ):
        read_case(tmp_path, mapping={"t1": "scan_a.nii.gz"})
    with pytest.raises(SequenceError, match=r"matches no input"):
        read_case(tmp_path, mapping={"bravo": "nothing_*.nii"})


def test_shifted_and_coarser_sequence_is_resampled_in_physical_space(tmp_path) -> None:
    reference = _affine((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    _save(tmp_path / "c_bravo.nii.gz", _volume(1.0), reference)
    # flair: 2 mm voxels, shifted by 1.5 mm, holds the linear field f(x, y, z) = x + 2y + 3z.
    coarse = _affine((2.0, 2.0, 2.0), (-1.5, -2.0, -2.0))
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (6, 7, 8)], indexing="ij"), -1)
    world = grid @ coarse[:3, :3].T + coarse[:3, 3]
    field = (world @ [1.0, 2.0, 3.0]).astype(np.float32)
    _save(tmp_path / "c_flair.nii.gz", field, coarse)
    truth = np.zeros((6, 7, 8), np.uint8)
    truth[2, 3, 3] = 1
    _save(tmp_path / "c_seg.nii.gz", truth, coarse)

    case = read_case(tmp_path)
    assert case.images["flair"].shape == case.shape
    points = case.geometry.voxel_to_world(np.argwhere(np.ones(case.shape, bool)))
    expected = (points @ [1.0, 2.0, 3.0]).reshape(case.shape)
    inside = np.all((points >= [-1.5, -2.0, -2.0]) & (points <= [8.5, 10.0, 12.0]), axis=1)
    inside = inside.reshape(case.shape)
    np.testing.assert_allclose(case.images["flair"][inside], expected[inside], atol=1e-4)
    # Nearest neighbour keeps the mask binary; its voxels lie within the coarse voxel's box.
    assert set(np.unique(case.truth)) == {0, 1}
    hit = case.geometry.voxel_to_world(np.argwhere(case.truth > 0))
    centre = coarse[:3, :3] @ [2, 3, 3] + coarse[:3, 3]
    assert np.all(np.abs(hit - centre) <= 1.0 + 1e-6)
    assert any("flair: resampled onto the reference grid" in n for n in case.mapping_notes)


def test_rigid_registration_recovers_a_shift(tmp_path) -> None:
    shape = (24, 24, 24)
    grid = np.stack(np.meshgrid(*[np.arange(n) * 2.0 for n in shape], indexing="ij"), -1)

    def blob(centre):
        return (
            100 * np.exp(-np.sum((grid - centre) ** 2, -1) / 60.0)
            + 40 * np.exp(-np.sum((grid - np.add(centre, (8, -6, 4))) ** 2, -1) / 20.0)
        ).astype(np.float32)

    affine = _affine((2.0, 2.0, 2.0))
    _save(tmp_path / "r_bravo.nii.gz", blob((22.0, 24.0, 20.0)), affine)
    _save(tmp_path / "r_cube_post.nii.gz", blob((25.0, 22.0, 21.0)), affine)  # moved (3, -2, 1) mm

    plain = read_case(tmp_path)
    registered = read_case(tmp_path, register=True)
    bravo = registered.images["bravo"]
    error_before = np.abs(plain.images["cube_post"] - bravo).mean()
    error_after = np.abs(registered.images["cube_post"] - bravo).mean()
    assert error_after < 0.2 * error_before
    assert any("rigidly registered" in note for note in registered.mapping_notes)


def test_bad_case_inputs_raise_clear_errors(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReadError, match=r"empty: empty folder"):
        read_case(empty)

    far = tmp_path / "far"
    _save(far / "x_bravo.nii.gz", _volume(1.0), _affine())
    _save(far / "x_flair.nii.gz", _volume(1.0), _affine(origin=(500.0, 0.0, 0.0)))
    with pytest.raises(
        GeometryError, match=r"x_flair\.nii\.gz and x_bravo\.nii\.gz do not overlap"
    ):
        read_case(far)

    odd = tmp_path / "odd"
    _save(odd / "x_bravo.nii.gz", _volume(1.0), _affine())
    _save(odd / "x_localizer.nii.gz", _volume(1.0), _affine())
    case = read_case(odd)
    assert case.sequences == ("bravo",)
    assert "ignored x_localizer.nii.gz: no sequence recognised in its name" in case.mapping_notes
    with pytest.raises(SequenceError, match=r"x_localizer\.nii\.gz: no sequence recognised"):
        read_case([odd / "x_bravo.nii.gz", odd / "x_localizer.nii.gz"])

    with pytest.raises(SequenceError, match=r"reference 'flair' is not in case"):
        read_case(odd, reference="flair")

    twice = tmp_path / "twice"
    _save(twice / "a_flair.nii.gz", _volume(1.0), _affine())
    _save(twice / "b_flair.nii.gz", _volume(1.0), _affine())
    with pytest.raises(SequenceError, match=r"several inputs look like flair"):
        read_case(twice)


def test_metseg_info_prints_sequences_reference_and_notes(tmp_path, capsys) -> None:
    _save(tmp_path / "p_cube_post.nii.gz", _volume(1.0), _affine((1.0, 1.0, 2.0), flip_x=True))
    _save(tmp_path / "p_flair.nii.gz", _volume(2.0), _affine((2.0, 2.0, 2.0)))
    _save(tmp_path / "p_seg.nii.gz", _truth(), _affine((1.0, 1.0, 2.0), flip_x=True))

    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cube_post [reference]:" in out
    assert "orientation: internal SPL, file LAS" in out
    assert "spacing:  2 x 1 x 1 mm" in out
    assert "resampled onto the reference" in out
    assert "truth:" in out and "p_seg.nii.gz" in out

    assert (
        main(["info", str(tmp_path), "--reference", "flair", "--mapping", "bravo=p_cube_post*"])
        == 0
    )
    out = capsys.readouterr().out
    assert "flair [reference]:" in out
    assert "bravo: p_cube_post.nii.gz (mapping 'p_cube_post*')" in out

    assert main(["info", str(tmp_path), "--mapping", "t1=p_flair.nii.gz"]) == 2
    assert "unknown sequence 't1'" in capsys.readouterr().err
