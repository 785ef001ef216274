"""The npe2 reader, writers and sample data, through a real napari viewer."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_metseg._napari import napari_get_reader
from napari_metseg.case import SEQUENCES
from napari_metseg.phantom import write_phantom

PLUGIN = "napari-metseg"


@pytest.fixture(scope="module")
def case_folder(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("case"), 5, n_lesions=2, spacing=4.0, name="p")


def test_reader_declines_what_it_does_not_handle(tmp_path):
    (tmp_path / "notes.txt").write_text("not a volume")
    (tmp_path / "empty").mkdir()
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path / "missing.nii.gz")) is None
    assert napari_get_reader(str(tmp_path / "empty")) is None
    assert napari_get_reader(str(tmp_path)) is None


def test_reader_accepts_volumes_and_case_folders(case_folder):
    assert callable(napari_get_reader(str(case_folder / "p_bravo.nii.gz")))
    assert callable(napari_get_reader(str(case_folder)))
    assert callable(napari_get_reader([str(case_folder / "p_flair.nii.gz")]))


@pytest.mark.gui
def test_case_folder_opens_as_sequences_and_truth(make_napari_viewer, case_folder):
    viewer = make_napari_viewer()
    viewer.open(str(case_folder), plugin=PLUGIN)
    # file names stay the layer names; the metadata says which sequence each one plays
    assert [layer.name for layer in viewer.layers] == [f"p_{s}" for s in SEQUENCES] + ["p_seg"]
    assert [layer.metadata["sequence"] for layer in viewer.layers] == [*SEQUENCES, None]
    source = nib.load(case_folder / "p_bravo.nii.gz")
    for layer in viewer.layers:
        geometry = layer.metadata["geometry"]
        np.testing.assert_allclose(layer.affine.affine_matrix, geometry.napari_affine)
        np.testing.assert_allclose(layer.metadata["affine_ras"], geometry.affine)
        assert layer.metadata["axcodes"] == "SPL"
        assert layer.metadata["source_axcodes"] == "".join(nib.aff2axcodes(source.affine))
    bravo = viewer.layers["p_bravo"]
    assert bravo.metadata["role"] == "image" and bravo.metadata["sequence"] == "bravo"
    assert viewer.layers["p_seg"].metadata["role"] == "truth"
    assert viewer.layers["p_seg"].data.max() >= 1
    # voxel (i, j, k) of the file lies where napari shows its internal voxel, in LPS (z, y, x)
    corner = np.array(source.shape) - 1
    ras = source.affine @ np.append(corner, 1.0)
    lps_zyx = np.array([ras[2], -ras[1], -ras[0]])
    internal = np.round(bravo.world_to_data(lps_zyx)).astype(int)
    assert np.isclose(
        bravo.data[tuple(internal)], np.asarray(source.dataobj)[tuple(corner)], rtol=1e-5
    )
    spacing = np.linalg.norm(bravo.affine.affine_matrix[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, 4.0)


@pytest.mark.gui
def test_single_volume_opens_as_one_layer(make_napari_viewer, case_folder):
    viewer = make_napari_viewer()
    viewer.open(str(case_folder / "p_cube_post.nii.gz"), plugin=PLUGIN)
    viewer.open(str(case_folder / "p_seg.nii.gz"), plugin=PLUGIN)
    image, mask = viewer.layers
    assert (image.name, type(image).__name__) == ("p_cube_post", "Image")
    assert image.metadata["sequence"] == "cube_post"
    assert image.metadata["source"].endswith("p_cube_post.nii.gz")
    assert type(mask).__name__ == "Labels"


@pytest.mark.gui
def test_unreadable_file_is_a_clear_error(make_napari_viewer, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not gzip at all")
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="broken.nii.gz"):
        viewer.open(str(broken), plugin=PLUGIN)
    assert len(viewer.layers) == 0


@pytest.mark.gui
@pytest.mark.parametrize("name", ["bravo", "truth"])
def test_writer_round_trip_on_the_source_grid(make_napari_viewer, case_folder, tmp_path, name):
    viewer = make_napari_viewer()
    viewer.open(str(case_folder), plugin=PLUGIN)
    out = tmp_path / f"{name}.nii.gz"
    viewer.layers[{"bravo": "p_bravo", "truth": "p_seg"}[name]].save(str(out), plugin=PLUGIN)
    source = nib.load(case_folder / ("p_seg.nii.gz" if name == "truth" else "p_bravo.nii.gz"))
    written = nib.load(out)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
    np.testing.assert_allclose(np.asarray(written.dataobj), np.asarray(source.dataobj), rtol=1e-5)


@pytest.mark.gui
def test_writer_places_a_foreign_layer_by_its_transform(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    layer = viewer.add_image(data, scale=(3.0, 2.0, 1.0), translate=(10.0, 20.0, 30.0))
    out = tmp_path / "plain.nii.gz"
    layer.save(str(out), plugin=PLUGIN)
    written = nib.load(out)
    volume = np.asarray(written.dataobj)
    for index in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        lps_zyx = layer.data_to_world(index)
        ras = np.array([-lps_zyx[2], -lps_zyx[1], lps_zyx[0], 1.0])
        voxel = np.round(np.linalg.inv(written.affine) @ ras)[:3].astype(int)
        assert volume[tuple(voxel)] == data[index]


@pytest.mark.gui
def test_sample_case_opens_four_sequences_and_truth(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom")
    assert [layer.name for layer in viewer.layers] == [*SEQUENCES, "truth"]
    geometry = viewer.layers["bravo"].metadata["geometry"]
    np.testing.assert_allclose(viewer.layers["flair"].affine.affine_matrix, geometry.napari_affine)
    assert viewer.layers["bravo"].visible and not viewer.layers["flair"].visible


def test_world_matrix_composes_as_napari_does():
    from napari.utils.transforms import Affine

    from napari_metseg.layerdata import world_matrix

    angle = np.deg2rad(20)
    rotate = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    parts = {
        "scale": [3.0, 2.0, 1.5],
        "translate": [10.0, -4.0, 7.0],
        "rotate": rotate,
        "shear": [0.1, 0.0, -0.2],
    }
    outer = np.eye(4)
    outer[:3, 3] = [1.0, 2.0, 3.0]
    expected = outer @ Affine(**parts, ndim=3).affine_matrix
    np.testing.assert_allclose(world_matrix({**parts, "affine": outer}), expected, atol=1e-12)


def test_opening_a_volume_imports_neither_napari_nor_the_widgets(case_folder):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from napari_metseg._napari import napari_get_reader\n"
        f"layers = napari_get_reader({str(case_folder / 'p_bravo.nii.gz')!r})("
        f"{str(case_folder / 'p_bravo.nii.gz')!r})\n"
        "print(layers[0][1]['name'], layers[0][1]['metadata']['sequence'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'torch')"
        " or m.startswith('napari_metseg.widgets')), sys.modules.get('triton', 'absent'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split("\n")[:2] == ["p_bravo bravo", "[] absent"], result.stdout


@pytest.mark.gui
def test_a_nifti_opens_without_asking_for_a_reader(make_napari_viewer, case_folder):
    """napari's built-in reader claims ``*.nii.gz`` too; once the workbench is docked (or
    the plugin activated by a read) MetSeg is the preferred reader."""
    from napari.errors import MultipleReaderError
    from napari.settings import get_settings

    viewer = make_napari_viewer()
    # File > Open and drag-and-drop open with plugin=None: two readers and no preference
    # is what made napari ask
    with pytest.raises(MultipleReaderError):
        viewer.open(str(case_folder / "p_flair.nii.gz"), plugin=None)
    viewer.window.add_plugin_dock_widget(PLUGIN, "MetSeg workbench")
    assert get_settings().plugins.extension2reader["*.nii.gz"] == PLUGIN
    (layer,) = viewer.open(str(case_folder / "p_flair.nii.gz"), plugin=None)
    assert layer.name == "p_flair" and layer.metadata["sequence"] == "flair"
    get_settings().plugins.extension2reader = {"*.nii.gz": "napari"}  # a user's own choice
    from napari_metseg._napari import activate

    activate()
    assert get_settings().plugins.extension2reader["*.nii.gz"] == "napari"
