"""The lesion table dock: rows from the lesions layer, sorting, navigation, exports."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from qtpy.QtCore import Qt

from napari_metseg.layerdata import LESIONS_LAYER, lesions_layer, probability_layer
from napari_metseg.lesions import lesion_table
from napari_metseg.widgets import lesion_table as lesion_table_module
from napari_metseg.widgets.lesion_table import LesionTablePanel

pytestmark = pytest.mark.gui


def _blobs(shape):
    """A large 0.5 lesion and a small 0.9 one (lesion 1 is the more confident)."""
    probability = np.zeros(shape, dtype=np.float32)
    probability[10:16, 10:16, 10:16] = 0.5
    probability[30:32, 40:42, 30:32] = 0.9
    return probability


@pytest.fixture
def results(make_napari_viewer, tiny_case):
    """A viewer holding a probability layer and a lesions layer with its features."""
    viewer = make_napari_viewer()
    geometry = tiny_case.geometry
    probability = _blobs(tiny_case.shape)
    data, kwargs, _ = probability_layer(probability, geometry)
    viewer.add_image(data, **kwargs)
    table, labels = lesion_table(probability, geometry)
    data, kwargs, _ = lesions_layer(labels, table, geometry)
    viewer.add_labels(data, **kwargs)
    return viewer, table


def _docked(viewer):
    """The panel docked in the viewer's window, as napari holds a plugin's widget."""
    panel = LesionTablePanel(viewer)
    viewer.window.add_dock_widget(panel, name="lesion table")
    return panel


def _shown_labels(panel):
    return [int(panel.proxy.index(row, 0).data()) for row in range(panel.proxy.rowCount())]


def test_the_dock_builds_from_the_manifest_and_lists_the_lesions(results):
    viewer, table = results
    _, panel = viewer.window.add_plugin_dock_widget("napari-metseg", "MetSeg lesion table")
    assert isinstance(panel, LesionTablePanel)
    assert _shown_labels(panel) == [1, 2]
    headers = [panel.model.headerData(c, Qt.Orientation.Horizontal) for c in range(9)]
    assert "volume (mm\N{SUPERSCRIPT THREE})" in headers and "diameter (mm)" in headers
    volume = panel.proxy.index(1, headers.index("volume (mm\N{SUPERSCRIPT THREE})")).data()
    assert volume == f"{table['volume_mm3'][1]:.1f}"
    assert "2 lesions" in panel.summary_label.text()


def test_sorting_by_volume_sorts_numbers(results):
    viewer, table = results
    panel = _docked(viewer)
    panel.view.sortByColumn(1, Qt.SortOrder.DescendingOrder)
    assert _shown_labels(panel) == [2, 1]
    panel.view.sortByColumn(3, Qt.SortOrder.DescendingOrder)
    assert _shown_labels(panel) == [1, 2]


def test_selecting_a_row_moves_the_viewer_to_the_lesion(results):
    viewer, table = results
    panel = _docked(viewer)
    layer = viewer.layers[LESIONS_LAYER]
    for label in (2, 1):
        panel.select_lesion(label)
        row = table[table["label"] == label].iloc[0]
        centroid = [row["centroid_slice"], row["centroid_row"], row["centroid_col"]]
        world = layer.data_to_world(centroid)
        step = abs(layer.data_to_world([1, 0, 0])[0] - layer.data_to_world([0, 0, 0])[0])
        assert abs(viewer.dims.point[0] - world[0]) <= step / 2 + 1e-6
        np.testing.assert_allclose(viewer.scene.camera.center[-2:], world[-2:], atol=1e-6)
        slice_index = round(layer.world_to_data(viewer.dims.point)[0])
        assert label in layer.data[slice_index]
        assert layer.selected_label == label and layer.show_selected_label
    panel.show_all_button.click()
    assert not layer.show_selected_label


def test_the_table_follows_the_layers_features(results, tiny_case):
    viewer, _ = results
    panel = _docked(viewer)
    layer = viewer.layers[LESIONS_LAYER]
    table, labels = lesion_table(_blobs(layer.data.shape), (4.0,) * 3, 0.6)
    layer.features = lesions_layer(labels, table, tiny_case.geometry)[1]["features"]
    assert _shown_labels(panel) == [1]
    viewer.layers.remove(layer)
    assert panel.proxy.rowCount() == 0
    assert "no lesions layer" in panel.summary_label.text()


def test_exports_write_the_source_grid_a_csv_and_a_png(results, tiny_case, tmp_path):
    viewer, table = results
    panel = _docked(viewer)
    panel.export_mask(tmp_path / "mask.nii.gz")
    panel.export_probability(tmp_path / "probability.nii.gz")
    panel.export_table(tmp_path / "lesions.csv")
    panel.export_screenshot(tmp_path / "view.png")
    geometry = tiny_case.geometry
    mask = nib.load(tmp_path / "mask.nii.gz")
    assert mask.shape == geometry.source_shape
    np.testing.assert_allclose(mask.affine, geometry.source_affine, atol=1e-4)
    np.testing.assert_array_equal(
        geometry.to_internal(np.asarray(mask.dataobj)), viewer.layers[LESIONS_LAYER].data
    )
    probability = geometry.to_internal(nib.load(tmp_path / "probability.nii.gz").get_fdata())
    np.testing.assert_allclose(probability, _blobs(tiny_case.shape), atol=1e-6)
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "lesions.csv"), table, check_dtype=False, atol=1e-9
    )
    assert (tmp_path / "view.png").read_bytes()[:4] == b"\x89PNG"


def test_export_without_results_is_a_notification(make_napari_viewer, monkeypatch, tmp_path):
    shown = []
    monkeypatch.setattr(lesion_table_module, "show_error", shown.append)
    target = str(tmp_path / "mask.nii.gz")
    monkeypatch.setattr(lesion_table_module.QFileDialog, "getSaveFileName", lambda *a: (target, ""))
    panel = _docked(make_napari_viewer())
    panel.export_buttons["mask"].click()
    assert shown == [
        "could not export mask: there is no lesions layer yet: run the segmentation first"
    ]
    assert not (tmp_path / "mask.nii.gz").exists()
