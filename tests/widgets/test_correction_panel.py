"""The correction loop in a real viewer: corrections layer, accept / reject, fine-tune rounds,
versions, autosave, cancel (a real tiny network; run under xvfb-run)."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_metseg.case import fingerprint
from napari_metseg.correction import TrustRegion, Workspace
from napari_metseg.correction.outcome import StrokeOutcome
from napari_metseg.correction.storage import file_digest
from napari_metseg.correction.workspace import workspace_folder
from napari_metseg.importance import compare_lesions
from napari_metseg.layerdata import (
    CHANGES_LAYER,
    CORRECTIONS_LAYER,
    LESIONS_LAYER,
    PROBABILITY_LAYER,
    case_layers,
    changes_layer,
)
from napari_metseg.model import load_model
from napari_metseg.widgets.workbench import Workbench

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_thread")]
TIMEOUT_MS = 60_000
ITERATIONS = 3
LENIENT = TrustRegion(growth_factor=1e6, growth_mm3=1e12, extra_components=10**6)


def _segmented(qtbot, viewer, model_path) -> Workbench:
    """A workbench docked as the Plugins menu docks it, having segmented the viewer's case
    with ``model_path``."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-metseg", "MetSeg workbench")
    widget.segment_panel.set_model_path(model_path)
    widget.segment_panel.threshold_slider.setValue(0.5)
    widget.correction_panel.iterations.setValue(ITERATIONS)
    widget.correction_panel.mode_combo.setCurrentIndex(1)  # fast
    # The tiny random model floods any case it is tuned on, so the trust region (pinned
    # in tests/test_correction*.py) would refuse every round: widen it for the GUI tests.
    strict = widget.correction_panel.config
    widget.correction_panel.config = lambda device: replace(strict(device), trust=LENIENT)
    qtbot.mouseClick(widget.segment_panel.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: widget.state.worker is None, timeout=TIMEOUT_MS)
    assert PROBABILITY_LAYER in viewer.layers
    return widget


@pytest.fixture
def segmented(qtbot, viewer_with_case, tiny_model_path):
    return _segmented(qtbot, viewer_with_case, tiny_model_path)


def _paint(layer, value, slice_index, rows, cols):
    """A brush stroke as napari records it (undoable edit, ``paint`` event)."""
    r, c = np.meshgrid(np.arange(*rows), np.arange(*cols), indexing="ij")
    layer.data_setitem((np.full(r.size, slice_index), r.ravel(), c.ravel()), value)


def _strokes(shape):
    expected = np.zeros(shape, dtype=np.uint8)
    expected[20, 20:24, 20:24] = 1
    expected[24, 30:33, 10:13] = 2
    return expected


def _paint_strokes(layer):
    _paint(layer, 1, 20, (20, 24), (20, 24))
    _paint(layer, 2, 24, (30, 33), (10, 13))


def _saved(widget):
    workspace = widget.correction.workspace
    return workspace is not None and (workspace.folder / "corrections.npz").exists()


def _finetune(qtbot, widget):
    qtbot.mouseClick(widget.correction_panel.finetune_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: widget.state.worker is None, timeout=TIMEOUT_MS)


def test_changes_layer_rings_new_lesions_green_and_removed_ones_red(tiny_case):
    before = np.zeros(tiny_case.shape, dtype=np.int32)
    before[2:4, 2:4, 2:4] = 1  # removed, centre (2.5, 2.5, 2.5)
    after = np.zeros_like(before)
    after[10, 20, 30:33] = 1  # new, centre (10, 20, 31)
    changes = compare_lesions(before, after)
    data, kwargs, layer_type = changes_layer(before, after, changes, tiny_case.geometry)
    assert layer_type == "points"
    np.testing.assert_allclose(data, [[10, 20, 31], [2.5, 2.5, 2.5]])
    assert kwargs["features"] == {"change": ["new", "removed"], "lesion": [1, 1]}
    assert kwargs["border_color"] == ["lime", "red"]
    np.testing.assert_allclose(kwargs["affine"], tiny_case.geometry.napari_affine)


def test_switching_a_sequence_off_keeps_the_workspace_and_strokes(
    qtbot, viewer_with_case, tiny_model_path
):
    widget = _segmented(qtbot, viewer_with_case, tiny_model_path)
    _paint_strokes(viewer_with_case.layers[CORRECTIONS_LAYER])
    qtbot.waitUntil(lambda: _saved(widget), timeout=TIMEOUT_MS)
    folder = widget.correction.folder
    widget.case_panel.set_present("flair", False)
    qtbot.mouseClick(widget.segment_panel.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: widget.state.worker is None, timeout=TIMEOUT_MS)
    assert widget.case_panel.present() == ("bravo", "cube_pre", "cube_post")
    assert widget.correction.folder == folder and widget.correction.workspace is not None
    restored = np.asarray(viewer_with_case.layers[CORRECTIONS_LAYER].data)
    np.testing.assert_array_equal(restored, _strokes(restored.shape))


def test_segmenting_adds_the_corrections_layer_on_the_reference_grid(
    segmented, tiny_case, workspace_root
):
    layer = segmented.viewer.layers[CORRECTIONS_LAYER]
    assert layer.data.dtype == np.uint8 and layer.data.shape == tiny_case.shape
    assert not layer.data.any() and layer.selected_label == 1
    np.testing.assert_allclose(layer.affine.affine_matrix, tiny_case.geometry.napari_affine)
    lesion, not_lesion = layer.colormap.map(np.array([1, 2]))
    assert lesion[3] == not_lesion[3] == 1 and np.abs(lesion - not_lesion).sum() > 1
    assert layer.colormap.map(np.array([0]))[0][3] == 0
    assert not workspace_root.exists()  # nothing written before the first stroke


def test_accept_and_reject_from_the_table_mark_the_lesion_voxels(qtbot, segmented, tiny_case):
    viewer = segmented.viewer
    probability = np.zeros(tiny_case.shape, dtype=np.float32)  # two known lesions
    probability[10:13, 10:13, 10:13] = 0.9
    probability[30:33, 40:43, 30:33] = 0.8
    segmented.state.probability = probability
    segmented.state.update_lesions()
    table = segmented.lesion_table
    labels = np.asarray(viewer.layers[LESIONS_LAYER].data)
    assert table.proxy.rowCount() == 2
    table.select_lesion(1)
    table.accept_button.click()
    table.select_lesion(2)
    table.view.setFocus()
    qtbot.keyClick(table.view, Qt.Key.Key_R)
    corrections = np.asarray(viewer.layers[CORRECTIONS_LAYER].data)
    expected = np.zeros(tiny_case.shape, dtype=np.uint8)
    expected[labels == 1] = 1
    expected[labels == 2] = 2
    np.testing.assert_array_equal(corrections, expected)
    qtbot.waitUntil(lambda: _saved(segmented), timeout=TIMEOUT_MS)
    np.testing.assert_array_equal(segmented.correction.workspace.corrections, expected)
    # the marks apply to what the user sees at once: the rejected lesion leaves the table
    assert table.proxy.rowCount() == 1 and table.table()["painted"].tolist() == [True]
    assert "1 lesions (1 painted)" in table.summary_label.text()
    _paint(viewer.layers[CORRECTIONS_LAYER], 1, 5, (40, 43), (40, 43))  # a lesion it missed
    qtbot.waitUntil(lambda: table.proxy.rowCount() == 2, timeout=TIMEOUT_MS)
    painted = table.table().iloc[1]
    assert painted["painted"] and painted["voxels"] == 9 and painted["confidence"] == 0.0
    assert np.asarray(viewer.layers[LESIONS_LAYER].data)[5, 41, 41] == painted["label"]


def test_finetune_makes_a_version_updates_the_layers_and_reports_changes(
    qtbot, segmented, tiny_case, tiny_model_path, notifications
):
    viewer = segmented.viewer
    base_hash = file_digest(tiny_model_path)
    _paint_strokes(viewer.layers[CORRECTIONS_LAYER])
    qtbot.waitUntil(lambda: _saved(segmented), timeout=TIMEOUT_MS)  # and applied to the lesions
    before_probability = np.array(viewer.layers[PROBABILITY_LAYER].data)
    before_labels = np.array(viewer.layers[LESIONS_LAYER].data)
    assert before_labels[20, 20:24, 20:24].all() and not before_labels[24, 30:33, 10:13].any()
    started = time.perf_counter()
    _finetune(qtbot, segmented)
    seconds = time.perf_counter() - started
    workspace = segmented.correction.workspace
    tuning = workspace.info("v001")["metrics"]["seconds"]
    print(f"fine-tune round in the GUI: {tuning:.2f} s ({seconds:.2f} s with re-segmentation)")
    assert workspace.current == "v001" and workspace.versions == ["base", "v001"]
    np.testing.assert_array_equal(workspace.version_corrections("v001"), _strokes(tiny_case.shape))
    after_probability = np.asarray(viewer.layers[PROBABILITY_LAYER].data)
    assert not np.allclose(after_probability, before_probability)
    np.testing.assert_array_equal(segmented.state.probability, after_probability)
    after_labels = np.asarray(viewer.layers[LESIONS_LAYER].data)
    features = viewer.layers[LESIONS_LAYER].features
    assert sorted(features["label"]) == sorted(np.unique(after_labels[after_labels > 0]))
    changes = compare_lesions(before_labels, after_labels)
    assert segmented.correction.changes == changes
    strokes = StrokeOutcome(**workspace.info("v001")["metrics"]["strokes"])
    assert strokes.painted == 1 and strokes.rejected == 1  # what _paint_strokes painted
    assert notifications["info"][-1] == f"model v001: {changes.summary()}; {strokes.summary()}"
    n_changed = len(changes.lost) + len(changes.gained)
    assert (CHANGES_LAYER in viewer.layers) == (n_changed > 0)
    if n_changed:
        assert len(viewer.layers[CHANGES_LAYER].data) == n_changed
    assert "v001" in segmented.correction_panel.version_label.text()
    assert segmented.correction_panel.undo_button.isEnabled()
    assert not segmented.correction_panel.redo_button.isEnabled()
    assert file_digest(tiny_model_path) == base_hash

    exported = segmented.correction.export_version(segmented.correction.root / "v001.safetensors")
    tuned = workspace.load_model("v001")
    for name, tensor in load_model(exported).state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), tuned.state_dict()[name].numpy())
    assert segmented.state.model_path() == workspace.model_path("v001")


def test_undo_and_redo_restore_the_predictions_of_each_version(qtbot, segmented):
    viewer = segmented.viewer
    base_probability = np.array(viewer.layers[PROBABILITY_LAYER].data)
    _paint_strokes(viewer.layers[CORRECTIONS_LAYER])
    _finetune(qtbot, segmented)
    tuned_probability = np.array(viewer.layers[PROBABILITY_LAYER].data)
    loop, panel = segmented.correction, segmented.correction_panel

    qtbot.mouseClick(panel.undo_button, Qt.MouseButton.LeftButton)  # kept in memory
    assert segmented.state.worker is None and loop.workspace.current == "base"
    np.testing.assert_array_equal(viewer.layers[PROBABILITY_LAYER].data, base_probability)
    assert panel.redo_button.isEnabled() and not panel.undo_button.isEnabled()
    qtbot.mouseClick(panel.redo_button, Qt.MouseButton.LeftButton)
    np.testing.assert_array_equal(viewer.layers[PROBABILITY_LAYER].data, tuned_probability)

    loop._predictions.clear()  # forgotten: the version's model segments again
    loop.undo()
    qtbot.waitUntil(lambda: segmented.state.worker is None, timeout=TIMEOUT_MS)
    assert loop.workspace.current == "base"
    np.testing.assert_allclose(viewer.layers[PROBABILITY_LAYER].data, base_probability, atol=1e-5)
    assert segmented.state.model_path() == segmented.segment_panel.model_path()


def test_undoing_a_stroke_is_saved_too(qtbot, viewer_with_case, tiny_model_path):
    widget = _segmented(qtbot, viewer_with_case, tiny_model_path)
    layer = viewer_with_case.layers[CORRECTIONS_LAYER]
    _paint(layer, 1, 5, (1, 3), (1, 3))
    qtbot.waitUntil(lambda: _saved(widget), timeout=TIMEOUT_MS)
    folder = widget.correction.workspace.folder
    assert Workspace(folder).corrections[5, 1, 1] == 1
    written = (folder / "corrections.npz").stat().st_mtime_ns
    viewer_with_case.dims.set_current_step(0, 3)  # a redraw alone writes nothing
    qtbot.wait(800)  # longer than the autosave delay
    assert (folder / "corrections.npz").stat().st_mtime_ns == written
    layer.undo()  # Ctrl+Z
    qtbot.waitUntil(lambda: Workspace(folder).corrections[5, 1, 1] == 0, timeout=TIMEOUT_MS)
    layer.redo()
    qtbot.waitUntil(lambda: Workspace(folder).corrections[5, 1, 1] == 1, timeout=TIMEOUT_MS)


def _viewer_with(make_napari_viewer, case):
    viewer = make_napari_viewer()
    for data, kwargs, layer_type in case_layers(case):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    return viewer


def test_corrections_autosave_and_come_back_in_a_new_workbench(
    qtbot, viewer_with_case, tiny_model_path, tiny_case, make_napari_viewer
):
    first = _segmented(qtbot, viewer_with_case, tiny_model_path)
    _paint_strokes(viewer_with_case.layers[CORRECTIONS_LAYER])
    qtbot.waitUntil(lambda: _saved(first), timeout=TIMEOUT_MS)
    folder = first.correction.workspace.folder
    images = fingerprint(tiny_case.images)
    assert folder == workspace_folder(
        first.correction.root, tiny_case.geometry, images, tiny_model_path
    )
    np.testing.assert_array_equal(Workspace(folder).corrections, _strokes(tiny_case.shape))

    _paint(viewer_with_case.layers[CORRECTIONS_LAYER], 1, 5, (1, 2), (1, 2))
    first.shutdown()  # closing saves the stroke the timer had not saved yet
    assert Workspace(folder).corrections[5, 1, 1] == 1

    later = _viewer_with(make_napari_viewer, tiny_case)  # a later session
    second = _segmented(qtbot, later, tiny_model_path)
    restored = np.asarray(later.layers[CORRECTIONS_LAYER].data)
    expected = _strokes(tiny_case.shape)
    expected[5, 1, 1] = 1
    np.testing.assert_array_equal(restored, expected)
    assert second.correction.workspace.folder == folder


def test_cancel_keeps_the_previous_version_and_the_strokes(
    qtbot, segmented, tiny_case, notifications
):
    viewer = segmented.viewer
    _paint_strokes(viewer.layers[CORRECTIONS_LAYER])
    _finetune(qtbot, segmented)
    workspace = segmented.correction.workspace
    probability = np.array(viewer.layers[PROBABILITY_LAYER].data)
    _paint(viewer.layers[CORRECTIONS_LAYER], 1, 30, (5, 6), (5, 6))
    panel = segmented.correction_panel
    panel.iterations.setValue(100_000)
    qtbot.mouseClick(panel.finetune_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: panel.progress_bar.value() >= 1, timeout=TIMEOUT_MS)
    qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: segmented.state.worker is None, timeout=TIMEOUT_MS)
    assert workspace.current == "v001" and workspace.versions == ["base", "v001"]
    assert Workspace(workspace.folder).current == "v001"
    assert Workspace(workspace.folder).corrections[30, 5, 5] == 1
    np.testing.assert_array_equal(viewer.layers[PROBABILITY_LAYER].data, probability)
    assert panel.status_label.text() == "cancelled"


def test_finetune_without_strokes_is_a_notification(segmented, notifications):
    assert segmented.correction.finetune() is None
    assert "no corrections" in notifications["error"][0]
    assert segmented.correction.workspace is None


def test_reopening_uses_the_base_model_and_offers_the_saved_versions(
    qtbot, viewer_with_case, tiny_model_path, tiny_case, make_napari_viewer, notifications
):
    first = _segmented(qtbot, viewer_with_case, tiny_model_path)
    _paint_strokes(viewer_with_case.layers[CORRECTIONS_LAYER])
    _finetune(qtbot, first)
    tuned = np.array(viewer_with_case.layers[PROBABILITY_LAYER].data)
    first.shutdown()

    later = _viewer_with(make_napari_viewer, tiny_case)
    second = _segmented(qtbot, later, tiny_model_path)
    panel = second.correction_panel
    assert second.state.version == "base" and second.state.model_path() == tiny_model_path
    assert panel.version_label.text().startswith("model in use: base")
    assert "1 saved version" in panel.version_label.text()
    assert [panel.version_combo.itemData(i) for i in range(panel.version_combo.count())] == [
        "base",
        "v001",
    ]
    assert panel.version_combo.currentData() == "base"
    assert any("saved versions (last: v001)" in text for text in notifications["info"])
    assert Workspace(second.correction.folder).current == "base"  # no silent switch on disk

    panel.version_combo.activated.emit(1)  # the user picks v001
    qtbot.waitUntil(lambda: second.state.worker is None, timeout=TIMEOUT_MS)
    assert second.state.version == "v001"
    assert second.state.model_path() == second.correction.workspace.model_path("v001")
    assert "fine-tuned version v001" in panel.version_label.text()
    np.testing.assert_allclose(later.layers[PROBABILITY_LAYER].data, tuned, atol=1e-5)


def _four_blobs(shape):
    probability = np.zeros(shape, dtype=np.float32)
    probability[10:13, 10:13, 10:13] = 0.9  # A
    probability[30:33, 40:43, 30:33] = 0.8  # B
    return probability


def test_a_scripted_session_keeps_one_layer_each_and_reports_changed_lesions(
    qtbot, viewer_with_case, tiny_model_path, tiny_case, monkeypatch, notifications
):
    """Run, threshold, bravo off, fine-tune (a round that changes the lesion set), undo,
    redo: one probability, lesions and corrections layer throughout; the table, the panel
    and the layer agree; the report counts and rings the new and removed lesions."""
    from napari_metseg.widgets import correction_loop

    viewer = viewer_with_case
    widget = _segmented(qtbot, viewer, tiny_model_path)

    def counts():
        roles = [layer.metadata.get("role") for layer in viewer.layers]
        return [roles.count(r) for r in ("probability", "lesions", "corrections")]

    def shown():
        labels = np.asarray(viewer.layers[LESIONS_LAYER].data)
        summary = int(widget.segment_panel.summary_label.text().split()[0])
        return widget.lesion_table.proxy.rowCount(), summary, len(np.unique(labels[labels > 0]))

    assert counts() == [1, 1, 1]
    widget.segment_panel.threshold_slider.setValue(0.3)
    qtbot.waitUntil(lambda: widget.state.threshold == 0.3, timeout=TIMEOUT_MS)
    assert counts() == [1, 1, 1] and len(set(shown())) == 1
    widget.case_panel.set_present("bravo", False)
    qtbot.mouseClick(widget.segment_panel.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: widget.state.worker is None, timeout=TIMEOUT_MS)
    assert counts() == [1, 1, 1] and len(set(shown())) == 1

    before = _four_blobs(tiny_case.shape)
    widget.state.show_result(widget.state.case, widget.state.present, before)  # base's
    after = np.zeros_like(before)
    after[11:14, 11:14, 11:14] = 0.9  # A moved: neither new nor removed
    after[40:42, 5:7, 5:7] = 0.7  # C new
    after[20:22, 50:52, 40:42] = 0.6  # D new; B removed
    real = correction_loop.finetune_round

    def tuned_prediction(*args, **kwargs):
        round_ = real(*args, **kwargs)  # the round runs; its prediction is replaced by a known one
        return correction_loop.Round(round_.version, after, round_.result)

    monkeypatch.setattr(correction_loop, "finetune_round", tuned_prediction)
    _paint_strokes(viewer.layers[CORRECTIONS_LAYER])
    _finetune(qtbot, widget)
    assert widget.state.version == "v001"
    assert counts() == [1, 1, 1] and shown() == (4, 4, 4)  # A, C, D and the painted one
    assert notifications["info"][-1].startswith(
        "model v001: 2 new lesions, 1 removed; the model finds "
    )
    rings = viewer.layers[CHANGES_LAYER]
    assert list(rings.features["change"]) == ["new", "new", "removed"]
    assert len(rings.data) == 3
    assert "2 new lesions, 1 removed" in widget.correction_panel.changes_label.text()

    qtbot.mouseClick(widget.correction_panel.undo_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: widget.state.worker is None, timeout=TIMEOUT_MS)
    assert widget.state.version == "base" and counts() == [1, 1, 1] and shown() == (3, 3, 3)
    assert notifications["info"][-1] == "model base: 1 new lesion, 2 removed"
    qtbot.mouseClick(widget.correction_panel.redo_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: widget.state.worker is None, timeout=TIMEOUT_MS)
    assert widget.state.version == "v001" and counts() == [1, 1, 1] and shown() == (4, 4, 4)
    assert [layer.name for layer in viewer.layers if "[" in layer.name] == []


def test_strokes_off_the_case_grid_are_refused_and_the_saved_ones_kept(
    qtbot, segmented, notifications
):
    layer = segmented.viewer.layers[CORRECTIONS_LAYER]
    _paint_strokes(layer)
    qtbot.waitUntil(lambda: _saved(segmented), timeout=TIMEOUT_MS)
    folder = segmented.correction.workspace.folder
    layer.data = np.ones((3, 4, 5), dtype=np.uint8)  # strokes of another grid
    assert segmented.correction.finetune() is None
    assert any("do not match the case grid" in text for text in notifications["error"])
    reopened = Workspace(folder)
    np.testing.assert_array_equal(reopened.corrections, _strokes(reopened.shape))
    assert reopened.versions == ["base"]


def test_all_zero_strokes_are_a_notification(qtbot, segmented, notifications):
    layer = segmented.viewer.layers[CORRECTIONS_LAYER]
    _paint_strokes(layer)
    qtbot.waitUntil(lambda: _saved(segmented), timeout=TIMEOUT_MS)
    layer.data = np.zeros_like(layer.data)  # every stroke erased
    assert segmented.correction.finetune() is None
    assert "no corrections" in notifications["error"][-1]
    assert Workspace(segmented.correction.folder).versions == ["base"]


def test_only_not_lesion_strokes_make_a_round_or_a_clear_message(qtbot, segmented, notifications):
    _paint(segmented.viewer.layers[CORRECTIONS_LAYER], 2, 24, (30, 33), (10, 13))
    _finetune(qtbot, segmented)
    workspace = Workspace(segmented.correction.folder)
    if workspace.versions == ["base"]:
        assert notifications["error"] and segmented.state.version == "base"
    else:
        assert segmented.state.version == workspace.current == "v001"
    assert (workspace.corrections == 2).sum() == 9


@pytest.mark.parametrize(
    "error",
    [
        "CorrectionError('no corrections: mark a missed lesion or a false positive first')",
        "GeometryError('corrections of shape (1, 2, 3) do not match the case grid')",
        "MetsegError('the round would grow lesions far from the strokes: refused')",
    ],
)
def test_a_refused_round_is_a_notification_and_keeps_the_version(
    qtbot, segmented, notifications, monkeypatch, error
):
    from napari_metseg import errors
    from napari_metseg.correction import CorrectionError

    raised = eval(error, {**vars(errors), "CorrectionError": CorrectionError})  # noqa: S307
    monkeypatch.setattr(
        Workspace, "finetune", lambda *args, **kwargs: (_ for _ in ()).throw(raised)
    )
    probability = np.array(segmented.viewer.layers[PROBABILITY_LAYER].data)
    _paint_strokes(segmented.viewer.layers[CORRECTIONS_LAYER])
    _finetune(qtbot, segmented)
    assert notifications["error"][-1] == str(raised)
    assert segmented.state.version == "base"
    assert segmented.correction_panel.status_label.text() == f"failed: {raised}"
    np.testing.assert_array_equal(segmented.viewer.layers[PROBABILITY_LAYER].data, probability)
    np.testing.assert_array_equal(
        Workspace(segmented.correction.folder).corrections, _strokes(probability.shape)
    )


def test_closing_the_viewer_mid_round_loses_nothing(qtbot, viewer_with_case, tiny_model_path):
    widget = _segmented(qtbot, viewer_with_case, tiny_model_path)
    _paint_strokes(viewer_with_case.layers[CORRECTIONS_LAYER])
    widget.correction_panel.iterations.setValue(100_000)
    assert widget.correction.finetune() is not None
    panel = widget.correction_panel
    qtbot.waitUntil(lambda: panel.progress_bar.value() >= 1, timeout=TIMEOUT_MS)
    folder = widget.correction.folder
    viewer_with_case.close()
    assert widget.state.idle.is_set() and widget.state.worker is None
    reopened = Workspace(folder)
    assert reopened.versions == ["base"] and reopened.current == "base"
    np.testing.assert_array_equal(reopened.corrections, _strokes(reopened.shape))


def test_a_crash_during_an_autosave_is_a_notification_and_keeps_the_last_strokes(
    qtbot, segmented, notifications, monkeypatch
):
    layer = segmented.viewer.layers[CORRECTIONS_LAYER]
    _paint_strokes(layer)
    qtbot.waitUntil(lambda: _saved(segmented), timeout=TIMEOUT_MS)
    folder = segmented.correction.workspace.folder

    def crash(source, target):
        raise OSError("simulated crash between writing and renaming")

    monkeypatch.setattr("napari_metseg.correction.workspace.os.replace", crash)
    _paint(layer, 1, 5, (1, 2), (1, 2))
    qtbot.waitUntil(lambda: bool(notifications["error"]), timeout=TIMEOUT_MS)
    assert notifications["error"][-1].startswith("corrections not saved: simulated crash")
    np.testing.assert_array_equal(Workspace(folder).corrections, _strokes(layer.data.shape))
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert segmented.correction.save()
    assert Workspace(folder).corrections[5, 1, 1] == 1


def _round_cache(widget):
    return widget.correction.workspace._inputs.cache


def test_the_first_round_after_a_run_reuses_the_run_s_cache(
    qtbot, viewer_with_case, tiny_model_path, builds
):
    widget = _segmented(qtbot, viewer_with_case, tiny_model_path)
    kept = widget.correction._context[1]
    assert kept.model is widget.state.model(tiny_model_path, widget.state.device)
    _paint_strokes(viewer_with_case.layers[CORRECTIONS_LAYER])
    _finetune(qtbot, widget)
    assert widget.correction.workspace.current == "v001" and builds == []
    assert _round_cache(widget) is kept and widget.correction._context is None
    _paint(viewer_with_case.layers[CORRECTIONS_LAYER], 1, 30, (10, 12), (10, 12))
    _finetune(qtbot, widget)
    assert widget.correction.workspace.current == "v002" and builds == []


def test_a_new_run_with_a_sequence_off_replaces_the_cache(
    qtbot, viewer_with_case, tiny_model_path, builds
):
    widget = _segmented(qtbot, viewer_with_case, tiny_model_path)
    _paint_strokes(viewer_with_case.layers[CORRECTIONS_LAYER])
    _finetune(qtbot, widget)
    first = _round_cache(widget)
    widget.correction.use_version("base")
    widget.case_panel.set_present("flair", False)
    qtbot.mouseClick(widget.segment_panel.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: widget.state.worker is None, timeout=TIMEOUT_MS)
    assert widget.correction.workspace._inputs is None  # the old case's inputs were freed
    kept = widget.correction._context[1]
    assert kept.prepared.present.tolist() == [True, True, True, False]
    _finetune(qtbot, widget)
    assert builds == [] and _round_cache(widget) is kept and kept is not first


def test_a_run_of_a_fine_tuned_version_keeps_no_cache_and_the_round_builds_it(
    qtbot, viewer_with_case, tiny_model_path, builds
):
    widget = _segmented(qtbot, viewer_with_case, tiny_model_path)
    _paint_strokes(viewer_with_case.layers[CORRECTIONS_LAYER])
    _finetune(qtbot, widget)
    qtbot.mouseClick(widget.segment_panel.run_button, Qt.MouseButton.LeftButton)  # with v001
    qtbot.waitUntil(lambda: widget.state.worker is None, timeout=TIMEOUT_MS)
    assert widget.state.version == "v001" and widget.correction._context is None
    _finetune(qtbot, widget)
    assert builds == [(True, True, True, True)]


def test_a_long_workspace_folder_is_elided_to_one_line_and_whole_in_its_tooltip(
    qtbot, segmented, tmp_path
):
    root = tmp_path / ("deeply-nested-" * 8) / "workspaces"
    label = segmented.correction_panel.root_label
    label.resize(160, label.height())
    segmented.correction_panel.show_root(root)
    shown = label.text()
    assert label.toolTip() == str(root)
    head, tail = shown.split("\N{HORIZONTAL ELLIPSIS}")
    assert str(root).startswith(head) and str(root).endswith(tail) and tail
    assert label.fontMetrics().horizontalAdvance(shown) <= label.contentsRect().width()
    label.resize(4000, label.height())  # a hidden dock gets its resize event when shown
    segmented.correction_panel.show_root(root)
    assert label.text() == str(root)
