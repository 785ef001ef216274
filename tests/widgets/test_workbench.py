"""The workbench docked as the Plugins menu docks it, in a real napari viewer (xvfb-run).

napari hands a docked widget a proxy of the viewer; every test docks through
``viewer.window.add_plugin_dock_widget`` so the widgets see what a user's do.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_metseg.case import SEQUENCES
from napari_metseg.devices import DEVICES, device_available, resolve_device
from napari_metseg.errors import SequenceError
from napari_metseg.layerdata import LESIONS_LAYER, PROBABILITY_LAYER, case_layers
from napari_metseg.saliency import SaliencyResult
from napari_metseg.widgets import explain_panel as explain_module
from napari_metseg.widgets import workbench as workbench_module
from napari_metseg.widgets.workbench import LESION_TABLE_WIDGET, Workbench

pytestmark = pytest.mark.gui
TIMEOUT_MS = 60_000


def _run_and_wait(qtbot, widget):
    qtbot.mouseClick(widget.segment_panel.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: widget.state.worker is None, timeout=TIMEOUT_MS)


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


def test_device_list_is_the_cli_one_and_auto_names_its_pick(make_napari_viewer, dock):
    combo = dock(make_napari_viewer()).segment_panel.device_combo
    items = [combo.itemData(i) for i in range(combo.count())]
    assert tuple(items) == DEVICES
    assert combo.itemText(0) == f"auto ({resolve_device('auto').type})"
    for index, name in enumerate(DEVICES):
        assert combo.model().item(index).isEnabled() == device_available(name)


def test_layers_are_assigned_by_metadata_and_name(make_napari_viewer, tiny_case, dock):
    viewer = make_napari_viewer()
    widget = dock(viewer)
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


def test_presence_vector_reaches_the_engine(qtbot, viewer_with_case, fake_engine, dock):
    widget = dock(viewer_with_case)
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
    qtbot, viewer_with_case, fake_engine, tiny_case, dock
):
    fake_engine.probability = _two_blobs(tiny_case.shape)
    widget = dock(viewer_with_case)
    _run_and_wait(qtbot, widget)
    probability = viewer_with_case.layers[PROBABILITY_LAYER]
    lesions = viewer_with_case.layers[LESIONS_LAYER]
    expected = tiny_case.geometry.napari_affine
    np.testing.assert_allclose(probability.affine.affine_matrix, expected)
    np.testing.assert_allclose(lesions.affine.affine_matrix, expected)
    assert probability.colormap.name == "inferno"
    assert probability.blending == "additive"
    assert len(widget.state.table) == 2
    assert sorted(lesions.features["index"]) == sorted(np.unique(lesions.data[lesions.data > 0]))
    assert "2 lesions" in widget.segment_panel.summary_label.text()


def test_threshold_changes_the_mask_without_running_again(
    qtbot, viewer_with_case, fake_engine, tiny_case, dock
):
    fake_engine.probability = _two_blobs(tiny_case.shape)
    widget = dock(viewer_with_case)
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


def test_no_sequence_on_is_a_notification(
    qtbot, make_napari_viewer, fake_engine, notifications, dock
):
    widget = dock(make_napari_viewer())
    qtbot.mouseClick(widget.segment_panel.run_button, Qt.MouseButton.LeftButton)
    assert widget.state.worker is None
    assert fake_engine.calls == []
    assert "no sequence is switched on" in notifications["error"][0]


def test_engine_errors_are_notifications(qtbot, viewer_with_case, fake_engine, notifications, dock):
    fake_engine.error = SequenceError("the model has no sequence called 'dwi'")
    widget = dock(viewer_with_case)
    _run_and_wait(qtbot, widget)
    assert notifications["error"] == ["the model has no sequence called 'dwi'"]
    assert PROBABILITY_LAYER not in viewer_with_case.layers
    assert widget.segment_panel.run_button.isEnabled()


def test_progress_reaches_the_panels_a_few_times_a_second_and_at_the_end(
    qtbot, make_napari_viewer, dock
) -> None:
    """A report per training step relaid out the docked panel each time and halved the
    round's speed; a phase's first and last reports always show (its name, a full bar)."""
    state = dock(make_napari_viewer()).state
    shown = []
    state.progressed.connect(lambda owner, done, total, text: shown.append((done, total)))

    def steps(progress, cancel):
        progress(0, 1, "loading")
        for step in range(2001):
            progress(step, 2000, f"step {step}")

    state.start("segment", "steps", "stepping", lambda result: None, steps)
    qtbot.waitUntil(lambda: state.worker is None, timeout=TIMEOUT_MS)
    assert shown[:2] == [(0, 1), (0, 2000)] and shown[-1] == (2000, 2000)
    assert len(shown) <= 12


def test_progress_is_the_bar_text_and_the_status_label_keeps_the_work_name(
    qtbot, make_napari_viewer, dock
) -> None:
    """A label that changes relays out the dock and napari's canvas (under software
    OpenGL a tenth of the round's time); a busy bar repaints all the time."""
    widget = dock(make_napari_viewer())
    state, panel = widget.state, widget.segment_panel

    def steps(progress, cancel):
        progress(0, 10, "loading")
        progress(10, 10, "step 10")

    state.start("segment", "steps", "stepping", lambda result: None, steps)
    assert panel.progress_bar.maximum() == 1 and panel.progress_bar.text() == "0%"
    qtbot.waitUntil(lambda: state.worker is None, timeout=TIMEOUT_MS)
    assert panel.status_label.text() == "stepping"
    assert panel.progress_bar.text() == "step 10: 100%"


def test_wait_returns_once_the_work_is_shown_or_at_its_timeout(make_napari_viewer, dock) -> None:
    state = dock(make_napari_viewer()).state
    release, shown = threading.Event(), []
    state.start("segment", "steps", "stepping", shown.append, lambda progress, cancel: "done")
    assert state.wait(TIMEOUT_MS / 1000) and shown == ["done"] and state.worker is None
    state.start(
        "segment", "steps", "stepping", shown.append, lambda progress, cancel: release.wait()
    )
    assert not state.wait(0.2) and state.worker is not None
    release.set()
    assert state.wait(TIMEOUT_MS / 1000) and shown == ["done", True]


def test_cancel_stops_the_run(qtbot, viewer_with_case, fake_engine, notifications, dock):
    fake_engine.block = True
    widget = dock(viewer_with_case)
    qtbot.mouseClick(widget.segment_panel.run_button, Qt.MouseButton.LeftButton)
    assert fake_engine.started.wait(10)
    assert widget.segment_panel.cancel_button.isEnabled()
    qtbot.mouseClick(widget.segment_panel.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: widget.state.worker is None, timeout=TIMEOUT_MS)
    assert notifications["info"] == ["segmentation cancelled"]
    assert PROBABILITY_LAYER not in viewer_with_case.layers


@pytest.fixture
def segmented(qtbot, viewer_with_case, fake_engine, tiny_case, dock):
    """A workbench that has segmented the tiny case (two blobs) with bravo switched off."""
    fake_engine.probability = _two_blobs(tiny_case.shape)
    widget = dock(viewer_with_case)
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
        maps = {s: np.where(mask, i + 1.0, 0).astype(np.float32) for i, s in enumerate(present)}
        return SaliencyResult(maps, {s: i + 1.0 for i, s in enumerate(present)}, {0: 1.0})

    monkeypatch.setattr(explain_module, "compute_saliency", fake_saliency)
    viewer = segmented.viewer
    segmented.lesion_table.select_lesion(2)
    assert "lesion 2" in segmented.explain_panel.target_label.text()
    qtbot.mouseClick(segmented.explain_panel.saliency_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: segmented.state.worker is None, timeout=TIMEOUT_MS)
    (call,) = calls
    overlay = viewer.layers["saliency cube_pre"]
    assert overlay.colormap.map(np.array([0.0]))[0][3] == 0  # zero saliency: transparent
    assert overlay.colormap.map(np.array([1.0]))[0][3] == 1
    assert tuple(overlay.contrast_limits) == (0.0, 3.0)  # the lesion's values, not the zeros'
    assert call["present"] == ("cube_pre", "cube_post", "flair")
    np.testing.assert_array_equal(call["mask"], viewer.layers[LESIONS_LAYER].data == 2)
    names = [f"saliency {s}" for s in call["present"]]
    assert [viewer.layers[n].visible for n in names] == [True, False, False]
    assert [viewer.layers[n].metadata["role"] for n in names] == ["saliency"] * 3
    axes = segmented.explain_panel.canvas.sequence_axes
    bars = axes.patches
    assert [round(bar.get_height(), 3) for bar in bars] == [round(v / 6, 3) for v in (1, 2, 3)]
    segmented.explain_panel.canvas.draw()
    ticks = [label.get_text() for label in axes.get_yticklabels()]
    assert "0%" in ticks and any(t.endswith("%") and t != "0%" for t in ticks)  # a scale
    assert [text.get_text() for text in axes.texts] == ["17%", "33%", "50%"]  # values on bars
    assert segmented.case_panel.present() == ("cube_pre", "cube_post", "flair")


def test_sequence_importance_switches_each_present_sequence_off(
    qtbot, segmented, fake_engine, monkeypatch, tiny_case
):
    """The engine's output depends on the presence: the 0.3 blob needs cube_pre, the 0.8
    blob flair, and a third blob appears without cube_post; the table must show it."""
    from napari_metseg import importance

    both = _two_blobs(tiny_case.shape)

    def probability(present):
        result = np.zeros_like(both)
        if "cube_pre" in present:
            result[10:13, 10:13, 10:13] = both[10:13, 10:13, 10:13]
        if "flair" in present:
            result[30:33, 40:43, 30:33] = both[30:33, 40:43, 30:33]
        if "cube_post" not in present:
            result[20:23, 20:23, 40:43] = 0.6
        return result

    fake_engine.probability = probability
    monkeypatch.setattr(importance, "segment", fake_engine)
    qtbot.mouseClick(segmented.explain_panel.importance_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: segmented.state.worker is None, timeout=TIMEOUT_MS)
    assert [call["present"] for call in fake_engine.calls[1:]] == [
        ("cube_post", "flair"),
        ("cube_pre", "flair"),
        ("cube_pre", "cube_post"),
    ]
    table = segmented.explain_panel.importance_table
    rows = [[table.item(row, column).text() for column in range(4)] for row in range(4)]
    assert rows == [
        ["(all on)", "2", "0", "0"],
        ["cube_pre", "1", "1", "0"],
        ["cube_post", "3", "0", "1"],
        ["flair", "1", "1", "0"],
    ]


def test_explaining_before_a_run_is_a_notification(make_napari_viewer, notifications, dock):
    widget = dock(make_napari_viewer())
    assert widget.explain_panel.explain() is None
    assert widget.explain_panel.rank_sequences() is None
    assert len(notifications["error"]) == 2
    assert "run the segmentation first" in notifications["error"][0]


def test_mismatched_layer_grids_are_a_notification(
    make_napari_viewer, tiny_case, fake_engine, notifications, dock
):
    viewer = make_napari_viewer()
    widget = dock(viewer)
    viewer.add_image(tiny_case.images["bravo"], name="bravo")
    viewer.add_image(tiny_case.images["flair"][:-1], name="flair")
    assert widget.run() is None
    assert fake_engine.calls == []
    assert "is not on the grid of" in notifications["error"][0]


def test_choosing_a_model_shows_its_sequences(make_napari_viewer, monkeypatch, tmp_path, dock):
    class Config:
        sequences = ("cube_pre", "cube_post", "flair")

    read = []
    monkeypatch.setattr(
        workbench_module, "read_model_config", lambda path: read.append(path) or Config
    )
    widget = dock(make_napari_viewer())
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
    assert widget.state.idle.is_set()
    assert widget.state.worker is None
    qtbot.wait(50)


def test_real_model_run_and_saliency(qtbot, viewer_with_case, tiny_model_path, tiny_case, dock):
    """No stand-ins: the engine and saliency run a real (tiny, random) network."""
    widget = dock(viewer_with_case)
    widget.segment_panel.set_model_path(tiny_model_path)
    widget.segment_panel.threshold_slider.setValue(0.01)
    _run_and_wait(qtbot, widget)
    probability = viewer_with_case.layers[PROBABILITY_LAYER]
    assert probability.data.shape == tiny_case.shape
    np.testing.assert_allclose(probability.affine.affine_matrix, tiny_case.geometry.napari_affine)
    qtbot.waitUntil(
        lambda: widget.state.table is not None and len(widget.state.table) > 0, timeout=TIMEOUT_MS
    )

    widget.explain_panel.explain()
    qtbot.waitUntil(lambda: widget.state.worker is None, timeout=TIMEOUT_MS)
    overlays = [
        layer for layer in viewer_with_case.layers if layer.metadata.get("role") == "saliency"
    ]
    assert len(overlays) == len(SEQUENCES)
    assert [layer.visible for layer in overlays] == [True, False, False, False]
    assert set(widget.explain_panel.saliency.per_sequence) == set(SEQUENCES)


def _three_blobs(present):
    """0.2, 0.5 and 0.8 cubes far apart; without bravo the 0.8 one is gone."""
    probability = np.zeros((48, 59, 50), dtype=np.float32)
    probability[5:8, 5:8, 5:8] = 0.2
    probability[20:23, 25:28, 20:23] = 0.5
    if "bravo" in present:
        probability[35:38, 45:48, 35:38] = 0.8
    return probability


def _lesions_shown(widget):
    """Lesion counts as a user reads them: the table dock's rows, the panel's summary and
    the lesions layer's distinct labels."""
    labels = np.asarray(widget.viewer.layers[LESIONS_LAYER].data)
    return (
        widget.lesion_table.proxy.rowCount(),
        int(widget.segment_panel.summary_label.text().split()[0]),
        len(np.unique(labels[labels > 0])),
    )


def test_one_layer_of_each_result_updated_in_place_and_the_table_follows(
    qtbot, viewer_with_case, fake_engine, tiny_case, dock, layer_counts
):
    assert tiny_case.shape == (48, 59, 50)
    fake_engine.probability = _three_blobs
    widget = dock(viewer_with_case)
    one_each = {"probability": 1, "lesions": 1, "corrections": 1, "lesion changes": 0}
    _run_and_wait(qtbot, widget)
    assert layer_counts(viewer_with_case) == one_each
    lesions = viewer_with_case.layers[LESIONS_LAYER]
    assert _lesions_shown(widget) == (3, 3, 3)

    widget.segment_panel.threshold_slider.setValue(0.3)
    qtbot.waitUntil(lambda: _lesions_shown(widget) == (2, 2, 2), timeout=TIMEOUT_MS)
    assert layer_counts(viewer_with_case) == one_each
    assert viewer_with_case.layers[LESIONS_LAYER] == lesions  # the same layer, new data

    widget.case_panel.set_present("bravo", False)
    _run_and_wait(qtbot, widget)
    assert fake_engine.calls[-1]["present"] == ("cube_pre", "cube_post", "flair")
    assert _lesions_shown(widget) == (1, 1, 1)
    assert layer_counts(viewer_with_case) == one_each
    _run_and_wait(qtbot, widget)
    assert layer_counts(viewer_with_case) == one_each
    assert len(viewer_with_case.layers) == 8
    assert [layer.name for layer in viewer_with_case.layers if "[" in layer.name] == []


def test_a_present_box_cannot_be_ticked_without_an_image(make_napari_viewer, tiny_case, dock):
    viewer = make_napari_viewer()
    widget = dock(viewer)
    panel = widget.case_panel
    check = panel._checks["cube_pre"]
    assert not check.isEnabled() and not check.isChecked()
    panel.set_present("cube_pre", True)
    assert not check.isChecked() and panel.present() == ()
    viewer.add_image(tiny_case.images["cube_pre"], name="T1_pre")
    assert check.isEnabled() and check.isChecked() and panel.present() == ("cube_pre",)
    viewer.layers.remove("T1_pre")
    assert not check.isEnabled() and not check.isChecked()
    assert "no sequence on" in panel.factor_label.text()


@pytest.mark.parametrize(
    ("name", "sequence"),
    [
        ("t1_post_gd", "cube_post"),
        ("T1_post_gd", "cube_post"),
        ("t1c", "cube_post"),
        ("t1ce", "cube_post"),
        ("t1gd", "cube_post"),
        ("cube_post", "cube_post"),
        ("mprage", "bravo"),
        ("BRAVO", "bravo"),
        ("t1_pre", "cube_pre"),
        ("t1n", "cube_pre"),
        ("t2_flair", "flair"),
        ("FLAIR", "flair"),
        ("t2f", "flair"),
    ],
)
def test_common_file_names_are_assigned_and_keep_their_names(
    make_napari_viewer, tiny_case, name, sequence, dock
):
    viewer = make_napari_viewer()
    widget = dock(viewer)
    viewer.add_image(tiny_case.images["flair"], name=name)
    assert widget.case_panel.layer_for(sequence).name == name
    assert widget.case_panel.present() == (sequence,)


def test_the_table_is_readable_at_1600x1000_with_both_docks(
    qtbot, viewer_with_case, fake_engine, tiny_case, dock
):
    probability = np.zeros(tiny_case.shape, dtype=np.float32)
    for index in range(8):
        probability[3 + 5 * index : 5 + 5 * index, 10:13, 10:13] = 0.9 - 0.05 * index
    fake_engine.probability = probability
    window = viewer_with_case.window._qt_window
    window.resize(1600, 1000)
    window.show()
    widget = dock(viewer_with_case)
    _run_and_wait(qtbot, widget)
    table = widget.lesion_table
    qtbot.waitUntil(lambda: table.proxy.rowCount() == 8, timeout=TIMEOUT_MS)
    qtbot.wait(200)
    assert window.width() == 1600 and window.height() == 1000
    assert widget.isVisible() and table.isVisible()
    assert table.visible_rows() >= 5
    header = table.view.horizontalHeader()
    width = table.view.viewport().width()
    titles = [table.model.headerData(c, Qt.Orientation.Horizontal) for c in range(9)]
    for title in ("volume (mm\N{SUPERSCRIPT THREE})", "confidence", "R (mm)", "A (mm)", "S (mm)"):
        column = titles.index(title)
        right = header.sectionViewportPosition(column) + header.sectionSize(column)
        assert header.sectionViewportPosition(column) >= 0 and right <= width, title
    assert widget.height() > 500  # the workbench keeps its column
