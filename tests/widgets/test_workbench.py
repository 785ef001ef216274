"""The workbench dock widget driven in a real napari viewer (run under xvfb-run)."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_metseg.case import SEQUENCES
from napari_metseg.errors import SequenceError
from napari_metseg.saliency import SaliencyResult
from napari_metseg.widgets import workbench as workbench_module
from napari_metseg.widgets.layers import LESIONS_LAYER, PROBABILITY_LAYER, case_layers
from napari_metseg.widgets.workbench import LESION_TABLE_WIDGET, Workbench

pytestmark = pytest.mark.gui
TIMEOUT_MS = 60_000


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
    assert len(viewer_with_case.layers) == 8  # 4 images, truth, probability, lesions, corrections


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


@pytest.fixture
def segmented(qtbot, viewer_with_case, fake_engine, tiny_case):
    """A workbench that has segmented the tiny case (two blobs) with bravo switched off."""
    fake_engine.probability = _two_blobs(tiny_case.shape)
    _, widget = viewer_with_case.window.add_plugin_dock_widget("napari-metseg", "MetSeg workbench")
    widget.case_panel.set_present("bravo", False)
    _run_and_wait(qtbot, widget)
    return widget


def test_results_open_the_lesion_table_dock(segmented):
    assert f"{LESION_TABLE_WIDGET} (napari-metseg)" in segmented.viewer.window.dock_widgets
    assert segmented.lesion_table.proxy.rowCount() == 2


def test_saliency_of_the_selected_lesion_adds_overlays_and_bars(
    qtbot, segmented, monkeypatch, tiny_case
):
    calls = []

    def fake_saliency(case, model, present, mask, slice_index, device, progress, cancel):
        calls.append({"present": present, "mask": mask, "slice": slice_index})
        maps = {s: np.full(case.shape, i + 1.0, np.float32) for i, s in enumerate(present)}
        return SaliencyResult(maps, {s: i + 1.0 for i, s in enumerate(present)}, {0: 1.0})

    monkeypatch.setattr(workbench_module, "compute_saliency", fake_saliency)
    viewer = segmented.viewer
    segmented.lesion_table.select_lesion(2)
    assert "lesion 2" in segmented.explain_panel.target_label.text()
    qtbot.mouseClick(segmented.explain_panel.saliency_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: segmented.worker is None, timeout=TIMEOUT_MS)
    (call,) = calls
    assert call["present"] == ("cube_pre", "cube_post", "flair")
    np.testing.assert_array_equal(call["mask"], viewer.layers[LESIONS_LAYER].data == 2)
    names = [f"saliency {s}" for s in call["present"]]
    assert [viewer.layers[n].visible for n in names] == [True, False, False]
    assert [viewer.layers[n].metadata["role"] for n in names] == ["saliency"] * 3
    bars = segmented.explain_panel.canvas.sequence_axes.patches
    assert [round(bar.get_height(), 3) for bar in bars] == [round(v / 6, 3) for v in (1, 2, 3)]
    assert segmented.case_panel.present() == ("cube_pre", "cube_post", "flair")


def test_sequence_importance_switches_each_present_sequence_off(
    qtbot, segmented, fake_engine, monkeypatch
):
    from napari_metseg import importance

    monkeypatch.setattr(importance, "segment", fake_engine)
    qtbot.mouseClick(segmented.explain_panel.importance_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: segmented.worker is None, timeout=TIMEOUT_MS)
    assert [call["present"] for call in fake_engine.calls[1:]] == [
        ("cube_post", "flair"),
        ("cube_pre", "flair"),
        ("cube_pre", "cube_post"),
    ]
    table = segmented.explain_panel.importance_table
    assert table.rowCount() == 4
    assert [table.item(row, 0).text() for row in range(4)] == [
        "(all on)",
        "cube_pre",
        "cube_post",
        "flair",
    ]
    assert {table.item(row, 2).text() for row in range(4)} == {"0"}


def test_explaining_before_a_run_is_a_notification(make_napari_viewer, notifications):
    widget = Workbench(make_napari_viewer())
    assert widget.explain() is None and widget.rank_sequences() is None
    assert len(notifications["error"]) == 2
    assert "run the segmentation first" in notifications["error"][0]


def test_mismatched_layer_grids_are_a_notification(
    make_napari_viewer, tiny_case, fake_engine, notifications
):
    viewer = make_napari_viewer()
    widget = Workbench(viewer)
    viewer.add_image(tiny_case.images["bravo"], name="bravo")
    viewer.add_image(tiny_case.images["flair"][:-1], name="flair")
    assert widget.run() is None
    assert fake_engine.calls == []
    assert "is not on the grid of" in notifications["error"][0]


def test_choosing_a_model_shows_its_sequences(make_napari_viewer, monkeypatch, tmp_path):
    class Config:
        sequences = ("cube_pre", "cube_post", "flair")

    read = []
    monkeypatch.setattr(
        workbench_module, "read_model_config", lambda path: read.append(path) or Config
    )
    widget = Workbench(make_napari_viewer())
    widget.segment_panel.set_model_path(tmp_path / "three.safetensors")
    assert read == [tmp_path / "three.safetensors"]
    assert widget.case_panel.sequences == ("cube_pre", "cube_post", "flair")


def test_closing_the_viewer_mid_run_stops_the_worker(
    qtbot, make_napari_viewer, tiny_case, fake_engine
):
    fake_engine.block = True
    viewer = make_napari_viewer()
    for data, kwargs, layer_type in case_layers(tiny_case):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-metseg", "MetSeg workbench")
    widget.run()
    assert fake_engine.started.wait(10)
    viewer.close()
    assert widget._idle.is_set() and widget._cancel.is_set()
    assert widget.worker is None
    qtbot.wait(50)


def test_real_model_run_and_saliency(qtbot, viewer_with_case, tiny_model_path, tiny_case):
    """No stand-ins: the engine and saliency run a real (tiny, random) network."""
    widget = Workbench(viewer_with_case)
    widget.segment_panel.set_model_path(tiny_model_path)
    widget.segment_panel.threshold_slider.setValue(0.01)
    _run_and_wait(qtbot, widget)
    probability = viewer_with_case.layers[PROBABILITY_LAYER]
    assert probability.data.shape == tiny_case.shape
    np.testing.assert_allclose(probability.affine.affine_matrix, tiny_case.geometry.napari_affine)
    qtbot.waitUntil(lambda: widget.table is not None and len(widget.table) > 0, timeout=TIMEOUT_MS)

    widget.explain()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    overlays = [
        layer for layer in viewer_with_case.layers if layer.metadata.get("role") == "saliency"
    ]
    assert len(overlays) == len(SEQUENCES)
    assert [layer.visible for layer in overlays] == [True, False, False, False]
    assert set(widget.saliency.per_sequence) == set(SEQUENCES)
