"""The workbench dock widget driven in a real napari viewer (run under xvfb-run)."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_metseg.case import SEQUENCES
from napari_metseg.errors import SequenceError
from napari_metseg.widgets import workbench as workbench_module
from napari_metseg.widgets.layers import LESIONS_LAYER, PROBABILITY_LAYER, case_layers
from napari_metseg.widgets.workbench import Workbench

pytestmark = pytest.mark.gui
TIMEOUT_MS = 60_000


@pytest.fixture
def viewer_with_case(make_napari_viewer, tiny_case):
    viewer = make_napari_viewer()
    for data, kwargs, layer_type in case_layers(tiny_case):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    return viewer


@pytest.fixture
def notifications(monkeypatch):
    shown = {"error": [], "info": []}
    monkeypatch.setattr(workbench_module, "show_error", shown["error"].append)
    monkeypatch.setattr(workbench_module, "show_info", shown["info"].append)
    return shown


def _run_and_wait(qtbot, widget):
    qtbot.mouseClick(widget.segment_panel.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def _two_blobs(shape):
    """Zeros with a 0.3 cube and a 0.8 cube far apart: two lesions at 0.1, one at 0.5."""
    probability = np.zeros(shape, dtype=np.float32)
    probability[10:13, 10:13, 10:13] = 0.3
    probability[30:33, 40:43, 30:33] = 0.8
    return probability


def test_widget_builds_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-metseg", "MetSeg workbench")
    assert isinstance(widget, Workbench)
    assert widget.case_panel.sequences == SEQUENCES


def test_layers_are_assigned_by_metadata_and_name(make_napari_viewer, tiny_case):
    viewer = make_napari_viewer()
    widget = Workbench(viewer)
    viewer.add_image(tiny_case.images["flair"], name="patient 12 FLAIR")
    for data, kwargs, _ in case_layers(tiny_case)[:2]:
        viewer.add_image(data, **kwargs)
    panel = widget.case_panel
    assert panel.layer_for("flair") is viewer.layers["patient 12 FLAIR"]
    assert panel.layer_for("bravo") is viewer.layers["bravo"]
    assert panel.layer_for("cube_pre") is viewer.layers["cube_pre"]
    assert panel.layer_for("cube_post") is None
    assert panel.present() == ("bravo", "cube_pre", "flair")
    assert "n/k = 4/3" in panel.factor_label.text()
    viewer.layers.remove("cube_pre")
    assert panel.present() == ("bravo", "flair")
    assert "n/k = 2" in panel.factor_label.text()


def test_presence_vector_reaches_the_engine(qtbot, viewer_with_case, fake_engine):
    widget = Workbench(viewer_with_case)
    widget.case_panel.set_present("cube_pre", False)
    assert "n/k = 4/3" in widget.case_panel.factor_label.text()
    _run_and_wait(qtbot, widget)
    widget.case_panel.set_present("cube_pre", True)
    widget.case_panel.assign("bravo", None)
    _run_and_wait(qtbot, widget)
    first, second = fake_engine.calls
    assert first["present"] == ("bravo", "cube_post", "flair")
    assert first["case"].sequences == ("bravo", "cube_post", "flair")
    assert second["present"] == ("cube_pre", "cube_post", "flair")
    np.testing.assert_array_equal(
        second["case"].images["cube_pre"], viewer_with_case.layers["cube_pre"].data
    )


def test_results_have_the_reference_affine_and_a_table(
    qtbot, viewer_with_case, fake_engine, tiny_case
):
    fake_engine.probability = _two_blobs(tiny_case.shape)
    widget = Workbench(viewer_with_case)
    _run_and_wait(qtbot, widget)
    probability = viewer_with_case.layers[PROBABILITY_LAYER]
    lesions = viewer_with_case.layers[LESIONS_LAYER]
    expected = tiny_case.geometry.napari_affine
    np.testing.assert_allclose(probability.affine.affine_matrix, expected)
    np.testing.assert_allclose(lesions.affine.affine_matrix, expected)
    assert probability.colormap.name == "inferno"
    assert probability.blending == "additive"
    assert len(widget.table) == 2
    assert sorted(lesions.features["index"]) == sorted(np.unique(lesions.data[lesions.data > 0]))
    assert "2 lesions" in widget.segment_panel.summary_label.text()


def test_threshold_changes_the_mask_without_running_again(
    qtbot, viewer_with_case, fake_engine, tiny_case
):
    fake_engine.probability = _two_blobs(tiny_case.shape)
    widget = Workbench(viewer_with_case)
    _run_and_wait(qtbot, widget)
    lesions = viewer_with_case.layers[LESIONS_LAYER]
    assert len(np.unique(lesions.data)) == 3
    widget.segment_panel.threshold_slider.setValue(0.5)
    qtbot.waitUntil(lambda: len(np.unique(lesions.data)) == 2, timeout=TIMEOUT_MS)
    assert len(lesions.features) == 1
    widget.segment_panel.threshold_slider.setValue(0.2)
    widget.segment_panel.min_volume.setValue(10_000.0)
    qtbot.waitUntil(lambda: not lesions.data.any(), timeout=TIMEOUT_MS)
    assert len(fake_engine.calls) == 1
    assert len(viewer_with_case.layers) == 7


def test_no_sequence_on_is_a_notification(qtbot, make_napari_viewer, fake_engine, notifications):
    widget = Workbench(make_napari_viewer())
    qtbot.mouseClick(widget.segment_panel.run_button, Qt.MouseButton.LeftButton)
    assert widget.worker is None
    assert fake_engine.calls == []
    assert "no sequence is switched on" in notifications["error"][0]


def test_engine_errors_are_notifications(qtbot, viewer_with_case, fake_engine, notifications):
    fake_engine.error = SequenceError("the model has no sequence called 'dwi'")
    widget = Workbench(viewer_with_case)
    _run_and_wait(qtbot, widget)
    assert notifications["error"] == ["the model has no sequence called 'dwi'"]
    assert PROBABILITY_LAYER not in viewer_with_case.layers
    assert widget.segment_panel.run_button.isEnabled()


def test_cancel_stops_the_run(qtbot, viewer_with_case, fake_engine, notifications):
    fake_engine.block = True
    widget = Workbench(viewer_with_case)
    qtbot.mouseClick(widget.segment_panel.run_button, Qt.MouseButton.LeftButton)
    assert fake_engine.started.wait(10)
    assert widget.segment_panel.cancel_button.isEnabled()
    qtbot.mouseClick(widget.segment_panel.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert notifications["info"] == ["segmentation cancelled"]
    assert PROBABILITY_LAYER not in viewer_with_case.layers
