"""The correction loop in a real viewer: corrections layer, accept / reject, fine-tune rounds,
versions, autosave, cancel (a real tiny network; run under xvfb-run)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_metseg.case import fingerprint
from napari_metseg.correction import Workspace
from napari_metseg.correction.workspace import file_digest
from napari_metseg.model import load_model
from napari_metseg.widgets.correction_panel import (
    CHANGES_LAYER,
    changes_layer,
    lesion_changes,
    workspace_folder,
)
from napari_metseg.widgets.layers import (
    CORRECTIONS_LAYER,
    LESIONS_LAYER,
    PROBABILITY_LAYER,
)
from napari_metseg.widgets.lesion_table import LesionTablePanel
from napari_metseg.widgets.workbench import Workbench

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_thread")]
TIMEOUT_MS = 60_000
ITERATIONS = 3


def _segmented(qtbot, viewer, model_path) -> Workbench:
    """A workbench that has segmented the viewer's case with ``model_path``."""
    widget = Workbench(viewer)
    widget.segment_panel.set_model_path(model_path)
    widget.segment_panel.threshold_slider.setValue(0.5)
    widget.correction_panel.iterations.setValue(ITERATIONS)
    widget.correction_panel.mode_combo.setCurrentIndex(1)  # fast
    qtbot.mouseClick(widget.segment_panel.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
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
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def test_lesion_changes_compare_lesion_maps_by_overlap():
    before = np.zeros((1, 4, 8), dtype=np.int32)
    before[0, 0, 0:2] = 1  # stays (shrinks)
    before[0, 3, 7] = 2  # disappears
    after = np.zeros_like(before)
    after[0, 0, 1] = 2  # overlaps old 1
    after[0, 2, 4:6] = 1  # appears
    changes = lesion_changes(before, after)
    assert changes.appeared == (1,) and changes.disappeared == (2,)
    assert changes.summary() == "1 new lesion, 1 removed"
    assert lesion_changes(after, after).summary() == "0 new lesions, 0 removed"


def test_changes_layer_rings_new_lesions_green_and_removed_ones_red(tiny_case):
    before = np.zeros(tiny_case.shape, dtype=np.int32)
    before[2:4, 2:4, 2:4] = 1  # removed, centre (2.5, 2.5, 2.5)
    after = np.zeros_like(before)
    after[10, 20, 30:33] = 1  # new, centre (10, 20, 31)
    changes = lesion_changes(before, after)
    data, kwargs, layer_type = changes_layer(before, after, changes, tiny_case.geometry)
    assert layer_type == "points"
    np.testing.assert_allclose(data, [[10, 20, 31], [2.5, 2.5, 2.5]])
    assert kwargs["features"] == {"change": ["new", "removed"], "lesion": [1, 1]}
    assert kwargs["border_color"] == ["lime", "red"]
    np.testing.assert_allclose(kwargs["affine"], tiny_case.geometry.napari_affine)


def test_workspace_folder_follows_the_grid_images_and_base_model(
    tmp_path, tiny_case, tiny_model_path
):
    geometry, images = tiny_case.geometry, fingerprint(tiny_case.images)
    folder = workspace_folder(tmp_path, geometry, images, tiny_model_path)
    assert folder == workspace_folder(tmp_path, geometry, images, tiny_model_path)
    assert folder.parent == tmp_path and folder.name.startswith("case-")
    assert folder != workspace_folder(tmp_path, geometry, images, None)
    shifted = geometry.affine.copy()
    shifted[0, 3] += 10.0
    moved = dataclasses.replace(geometry, affine=shifted)
    assert folder != workspace_folder(tmp_path, moved, images, tiny_model_path)
    # another patient on the very same grid must not see this one's strokes
    other = fingerprint({name: image[::-1] for name, image in tiny_case.images.items()})
    assert folder != workspace_folder(tmp_path, geometry, other, tiny_model_path)


def test_switching_a_sequence_off_keeps_the_workspace_and_strokes(
    qtbot, viewer_with_case, tiny_model_path
):
    widget = _segmented(qtbot, viewer_with_case, tiny_model_path)
    _paint_strokes(viewer_with_case.layers[CORRECTIONS_LAYER])
    qtbot.waitUntil(lambda: _saved(widget), timeout=TIMEOUT_MS)
    folder = widget.correction.folder
    widget.case_panel.set_present("flair", False)
    qtbot.mouseClick(widget.segment_panel.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
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
    segmented.probability = probability
    segmented.update_lesions()
    table = LesionTablePanel(viewer)
    viewer.window.add_dock_widget(table, name="lesions")
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


def test_finetune_makes_a_version_updates_the_layers_and_reports_changes(
    qtbot, segmented, tiny_case, tiny_model_path, notifications
):
    viewer = segmented.viewer
    base_hash = file_digest(tiny_model_path)
    _paint_strokes(viewer.layers[CORRECTIONS_LAYER])
    before_probability = np.array(viewer.layers[PROBABILITY_LAYER].data)
    before_labels = np.array(viewer.layers[LESIONS_LAYER].data)
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
    np.testing.assert_array_equal(segmented.probability, after_probability)
    after_labels = np.asarray(viewer.layers[LESIONS_LAYER].data)
    features = viewer.layers[LESIONS_LAYER].features
    assert sorted(features["label"]) == sorted(np.unique(after_labels[after_labels > 0]))
    changes = lesion_changes(before_labels, after_labels)
    assert segmented.correction.changes == changes
    assert notifications["info"][-1] == f"model v001: {changes.summary()}"
    n_changed = len(changes.appeared) + len(changes.disappeared)
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
    assert segmented._model_key()[0] == workspace.model_path("v001")


def test_undo_and_redo_restore_the_predictions_of_each_version(qtbot, segmented):
    viewer = segmented.viewer
    base_probability = np.array(viewer.layers[PROBABILITY_LAYER].data)
    _paint_strokes(viewer.layers[CORRECTIONS_LAYER])
    _finetune(qtbot, segmented)
    tuned_probability = np.array(viewer.layers[PROBABILITY_LAYER].data)
    loop, panel = segmented.correction, segmented.correction_panel

    qtbot.mouseClick(panel.undo_button, Qt.MouseButton.LeftButton)  # kept in memory
    assert segmented.worker is None and loop.workspace.current == "base"
    np.testing.assert_array_equal(viewer.layers[PROBABILITY_LAYER].data, base_probability)
    assert panel.redo_button.isEnabled() and not panel.undo_button.isEnabled()
    qtbot.mouseClick(panel.redo_button, Qt.MouseButton.LeftButton)
    np.testing.assert_array_equal(viewer.layers[PROBABILITY_LAYER].data, tuned_probability)

    loop._predictions.clear()  # forgotten: the version's model segments again
    loop.undo()
    qtbot.waitUntil(lambda: segmented.worker is None, timeout=TIMEOUT_MS)
    assert loop.workspace.current == "base"
    np.testing.assert_allclose(viewer.layers[PROBABILITY_LAYER].data, base_probability, atol=1e-5)
    assert segmented._model_key()[0] == segmented.segment_panel.model_path()


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


def test_corrections_autosave_and_come_back_in_a_new_workbench(
    qtbot, viewer_with_case, tiny_model_path, tiny_case
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
    first.close()
    first.deleteLater()
    viewer_with_case.layers.remove(CORRECTIONS_LAYER)
    qtbot.wait(10)

    second = _segmented(qtbot, viewer_with_case, tiny_model_path)
    restored = np.asarray(viewer_with_case.layers[CORRECTIONS_LAYER].data)
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
    qtbot.waitUntil(lambda: segmented.worker is None, timeout=TIMEOUT_MS)
    assert workspace.current == "v001" and workspace.versions == ["base", "v001"]
    assert Workspace(workspace.folder).current == "v001"
    assert Workspace(workspace.folder).corrections[30, 5, 5] == 1
    np.testing.assert_array_equal(viewer.layers[PROBABILITY_LAYER].data, probability)
    assert panel.status_label.text() == "cancelled"


def test_finetune_without_strokes_is_a_notification(segmented, notifications):
    assert segmented.correction.finetune() is None
    assert "no corrections" in notifications["error"][0]
    assert segmented.correction.workspace is None
