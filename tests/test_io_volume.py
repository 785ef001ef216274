"""read_volume on files other packages ship and on files SimpleITK / nibabel write."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_metseg.case import INTERNAL_AXCODES
from napari_metseg.errors import GeometryError, ReadError
from napari_metseg.io import read_volume

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
PYDICOM_DATA = Path(pytest.importorskip("pydicom").__file__).parent / "data" / "test_files"


def _value_at_world(volume, world_ras: np.ndarray) -> float:
    index = np.rint(volume.geometry.world_to_voxel(world_ras)[0]).astype(int)
    np.testing.assert_allclose(volume.geometry.world_to_voxel(world_ras)[0], index, atol=1e-6)
    return float(volume.data[tuple(index)])


def _rotation(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1.0, 0], [-np.sin(a), 0, np.cos(a)]])


@pytest.mark.parametrize(
    ("path", "source_axcodes"),
    [
        (NIBABEL_DATA / "anatomical.nii", ("L", "A", "S")),
        (NIBABEL_DATA / "reoriented_anat_moved.nii", ("R", "A", "S")),
    ],
)
def test_nifti_matches_nibabel_voxel_for_voxel(path: Path, source_axcodes) -> None:
    image = nib.load(path)
    volume = read_volume(path)

    assert volume.data.dtype == np.float32
    assert volume.geometry.axcodes == INTERNAL_AXCODES
    assert volume.geometry.source_axcodes == source_axcodes
    assert volume.metadata["format"] == "nifti"
    expected = image.get_fdata()
    for source_index in ([0, 0, 0], [3, 7, 5], [s - 1 for s in image.shape]):
        world = image.affine[:3, :3] @ source_index + image.affine[:3, 3]
        assert _value_at_world(volume, world) == pytest.approx(expected[tuple(source_index)])


def test_mni_template_from_nilearn_keeps_its_world_coordinates() -> None:
    path = Path(pytest.importorskip("nilearn").__file__).parent / "datasets" / "data"
    path = path / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    image = nib.load(path)
    volume = read_volume(path)
    # MNI origin (anterior commissure) maps to the same voxel value in both readers.
    source_index = np.rint(np.linalg.inv(image.affine) @ [0.0, 0.0, 0.0, 1.0])[:3].astype(int)
    world = image.affine[:3, :3] @ source_index + image.affine[:3, 3]
    assert _value_at_world(volume, world) == pytest.approx(
        float(image.dataobj[tuple(source_index)]), rel=1e-6
    )
    assert volume.geometry.shape == (image.shape[2], image.shape[1], image.shape[0])


def test_4d_nifti_needs_a_volume_index() -> None:
    path = NIBABEL_DATA / "example4d.nii.gz"
    with pytest.raises(ReadError, match=r"example4d\.nii\.gz.*4D.*volume_index"):
        read_volume(path)
    volume = read_volume(path, volume_index=1)
    image = nib.load(path)
    world = image.affine @ [10, 20, 5, 1.0]
    assert _value_at_world(volume, world[:3]) == image.dataobj[10, 20, 5, 1]
    assert volume.metadata["n_volumes"] == 2
    with pytest.raises(ReadError, match="out of range"):
        read_volume(path, volume_index=2)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_simpleitk_formats_with_direction_and_anisotropic_spacing(tmp_path, suffix) -> None:
    array = np.random.default_rng(1).integers(0, 1000, size=(5, 6, 7)).astype(np.int16)
    image = sitk.GetImageFromArray(array)  # (z, y, x) = (5, 6, 7)
    direction = _rotation(20.0) @ np.diag([1.0, -1.0, 1.0])  # rotated, y flipped
    image.SetDirection(tuple(direction.ravel()))
    image.SetSpacing((0.9, 1.3, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(image, str(path))

    volume = read_volume(path)
    assert volume.geometry.axcodes == INTERNAL_AXCODES
    assert sorted(volume.geometry.spacing) == pytest.approx([0.9, 1.3, 2.5])
    for index in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = lps * [-1, -1, 1]
        assert _value_at_world(volume, ras) == array[index[2], index[1], index[0]]


def test_flipped_oblique_nifti_written_by_nibabel(tmp_path) -> None:
    affine = np.eye(4)
    affine[:3, :3] = _rotation(-12.0) @ np.diag([-1.5, 1.0, -2.0])
    affine[:3, 3] = [5.0, 6.0, -7.0]
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "oblique.nii.gz")

    volume = read_volume(tmp_path / "oblique.nii.gz")
    assert volume.geometry.axcodes == INTERNAL_AXCODES
    for index in ([0, 0, 0], [3, 4, 5], [1, 2, 3]):
        world = affine[:3, :3] @ index + affine[:3, 3]
        assert _value_at_world(volume, world) == data[tuple(index)]


def test_dicom_series_shipped_by_nibabel_matches_simpleitk(tmp_path) -> None:
    for name in ("0.dcm", "1.dcm"):
        shutil.copy(NIBABEL_DATA / name, tmp_path / name)
    volume = read_volume(tmp_path)
    reference = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path)))

    assert volume.metadata["format"] == "dicom-series"
    assert volume.geometry.shape == (2, 256, 256)
    for index in [(0, 0, 0), (10, 200, 1), (255, 17, 1)]:
        lps = np.array(reference.TransformIndexToPhysicalPoint(index))
        assert _value_at_world(volume, lps * [-1, -1, 1]) == reference[index]


def _write_series(folder: Path, n_slices: int, uid: str, description: str) -> np.ndarray:
    """A DICOM series of ``n_slices`` 6x8 axial slices, 0.8 x 0.7 mm pixels, 2 mm apart."""
    folder.mkdir(exist_ok=True)
    array = np.arange(n_slices * 6 * 8, dtype=np.int16).reshape(n_slices, 6, 8) + 100 * len(uid)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(n_slices):
        slice_image = sitk.GetImageFromArray(array[z : z + 1])
        position = (-20.0, -30.0, 5.0 + 2.0 * z)
        tags = {
            "0008|0060": "MR",
            "0008|103e": description,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": uid,
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{v:g}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.7\\0.8",
            "0018|0050": "2",
            "0008|0018": f"{uid}.{z + 1}",
        }
        for key, value in tags.items():
            slice_image.SetMetaData(key, value)
        slice_image.SetSpacing((0.8, 0.7, 2.0))
        slice_image.SetOrigin(position)
        writer.SetFileName(str(folder / f"{uid[-3:]}_{z:03d}.dcm"))
        writer.Execute(slice_image)
    return array


def test_dicom_folder_with_two_series(tmp_path, caplog) -> None:
    flair = _write_series(tmp_path, 3, "1.2.826.0.1.3680043.2.1125.101", "AX FLAIR")
    post = _write_series(tmp_path, 4, "1.2.826.0.1.3680043.2.1125.202", "T1 POST")

    largest = read_volume(tmp_path)
    assert largest.metadata["description"] == "T1 POST"
    assert "AX FLAIR" in largest.metadata["note"]
    assert "AX FLAIR" in caplog.text
    assert largest.geometry.spacing == pytest.approx((2.0, 0.7, 0.8))
    # Slice z, row r, col c of the series lies at LPS (-20 + 0.8 c, -30 + 0.7 r, 5 + 2 z).
    lps = np.array([-20.0 + 0.8 * 5, -30.0 + 0.7 * 2, 5.0 + 2.0 * 3])
    assert _value_at_world(largest, lps * [-1, -1, 1]) == post[3, 2, 5]

    chosen = read_volume(tmp_path, series="ax flair")
    assert chosen.geometry.shape == (3, 6, 8)
    assert _value_at_world(chosen, np.array([20.0 - 0.8, 30.0 - 0.7, 7.0])) == flair[1, 1, 1]
    assert read_volume(tmp_path, series="1.2.826.0.1.3680043.2.1125.101").metadata["n_files"] == 3
    with pytest.raises(ReadError, match=r"no series matches 'DWI'.*T1 POST.*AX FLAIR"):
        read_volume(tmp_path, series="DWI")


def test_single_dicom_slice_is_2d() -> None:
    with pytest.raises(GeometryError, match=r"MR_small\.dcm.*2D"):
        read_volume(PYDICOM_DATA / "MR_small.dcm")


@pytest.mark.parametrize("name", ["MR_truncated.dcm"])
def test_corrupt_dicom_file(name) -> None:
    with pytest.raises(ReadError, match=name.replace(".", r"\.")):
        read_volume(PYDICOM_DATA / name)


def test_bad_inputs_name_the_file(tmp_path) -> None:
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b" + bytes(range(200)))
    with pytest.raises(ReadError, match=r"corrupt\.nii\.gz"):
        read_volume(corrupt)

    flat = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 9), np.float32), np.eye(4)), flat)
    with pytest.raises(GeometryError, match=r"flat\.nii.*2D"):
        read_volume(flat)

    holes = np.ones((4, 4, 4), np.float32)
    holes[1, 2, 3] = np.nan
    holes[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(holes, np.eye(4)), tmp_path / "holes.nii.gz")
    with pytest.raises(ReadError, match=r"holes\.nii\.gz: 2 voxels are NaN or infinite"):
        read_volume(tmp_path / "holes.nii.gz")

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ReadError, match=r"notes\.txt: unsupported file type"):
        read_volume(tmp_path / "notes.txt")
    with pytest.raises(ReadError, match=r"missing\.nii: no such file"):
        read_volume(tmp_path / "missing.nii")


def test_read_case_names_dicom_series_by_their_description(tmp_path) -> None:
    from napari_metseg.io import read_case

    _write_series(tmp_path, 3, "1.2.826.0.1.3680043.2.1125.101", "AX FLAIR")
    post = _write_series(tmp_path, 4, "1.2.826.0.1.3680043.2.1125.202", "T1 POST")

    case = read_case(tmp_path)
    assert case.sequences == ("cube_post", "flair")
    assert case.reference == "cube_post"
    np.testing.assert_array_equal(case.geometry.to_source(case.images["cube_post"]), post.T)
    assert "flair: resampled onto the reference grid" in " ".join(case.mapping_notes)
    mapped = read_case(tmp_path, mapping={"bravo": "1.2.826.0.1.3680043.2.1125.101"})
    assert mapped.sequences == ("bravo", "cube_post")
