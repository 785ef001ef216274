"""Screenshots of the real MetSeg workbench for the README, taken headless.

Run under a virtual display from the repository root::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshots.py

It opens the sample case in a 1600 x 1000 napari window, docks the workbench
as the Plugins menu does, runs the bundled model (the lesion table docks below
the canvas), selects the most confident lesion, computes its saliency and the
sequences' censor-one-out importance, then paints a dab on the two largest
lesions it missed and runs one fast correction round, and writes PNGs to
``docs/images/``. Timings are printed, so the README's figures
can be refreshed from the same script. Workspaces go to a temporary folder.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
import torchvision  # noqa: F401  (before any OpenGL context: see napari_metseg.widgets)
from qtpy.QtWidgets import QApplication

from napari_metseg._napari import SAMPLE_SEED, SAMPLE_SPACING
from napari_metseg.cli.demo import sample_folder
from napari_metseg.correction.workspace import WORKSPACES_ENV
from napari_metseg.lesions import label_components
from napari_metseg.phantom import make_phantom

IMAGES = Path(__file__).resolve().parent / "images"
TIMEOUT_S = 600.0


def settle(seconds: float) -> None:
    """Let Qt lay out and paint what changed (the window is grabbed as it is)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def wait_for_work(state) -> float:
    """Seconds until the workbench's running work is done and shown (:meth:`RunState.wait`)."""
    start = time.perf_counter()
    if not state.wait(TIMEOUT_S):
        raise TimeoutError("the workbench did not finish in time")
    return time.perf_counter() - start


def paint_missed_lesions(viewer: napari.Viewer, state, count: int = 2) -> None:
    """What an annotator does: a 3x3 dab at the centre of the largest lesions the model missed."""
    truth, _ = label_components(make_phantom(SAMPLE_SEED, spacing=SAMPLE_SPACING).truth > 0)
    found = set(np.unique(truth[np.asarray(state.labels) > 0]).tolist())
    sizes = np.bincount(truth.ravel())
    missed = [i for i in np.argsort(-sizes) if i > 0 and sizes[i] and i not in found][:count]
    layer = next(layer for layer in viewer.layers if layer.metadata.get("role") == "corrections")
    data = np.asarray(layer.data).copy()
    for lesion in missed:
        z, r, c = np.round(np.argwhere(truth == lesion).mean(axis=0)).astype(int)
        data[z, r - 1 : r + 2, c - 1 : c + 2] = 1
    layer.data = data
    print(f"painted {len(missed)} missed lesions ({[int(sizes[i]) for i in missed]} voxels)")


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    os.environ[WORKSPACES_ENV] = tempfile.mkdtemp(prefix="metseg-screenshots-")
    viewer = napari.Viewer(title="MetSeg")
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open(sample_folder(), plugin="napari-metseg")
    _, workbench = viewer.window.add_plugin_dock_widget("napari-metseg", "MetSeg workbench")
    state = workbench.state
    settle(1.0)

    workbench.run()
    seconds = wait_for_work(state)
    print(f"click Run -> layers shown: {seconds:.1f} s, {len(state.table)} lesions")
    table = workbench.lesion_table
    if len(state.table):
        table.select_lesion(int(state.table["label"].iloc[0]))
    settle(0.5)
    viewer.screenshot(IMAGES / "workbench.png", canvas_only=False)

    workbench.tabs.setCurrentIndex(2)
    workbench.explain_panel.explain()
    seconds = wait_for_work(state)
    print(f"saliency of the selected lesion: {seconds:.1f} s")
    workbench.explain_panel.rank_sequences()
    seconds = wait_for_work(state)
    print(f"sequence importance (one run per sequence switched off): {seconds:.1f} s")
    settle(0.5)
    viewer.screenshot(IMAGES / "saliency.png", canvas_only=False)

    for layer in viewer.layers:
        if layer.metadata.get("role") == "saliency":
            layer.visible = False
    workbench.tabs.setCurrentIndex(1)
    paint_missed_lesions(viewer, state)
    workbench.correction_panel.mode_combo.setCurrentIndex(1)  # fast
    workbench.correction.finetune()
    seconds = wait_for_work(state)
    print(f"fine-tune round + segmentation: {seconds:.1f} s; {state.version}")
    table.view.clearSelection()
    settle(0.5)
    viewer.screenshot(IMAGES / "correction.png", canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    main()
