"""What the user waits for in napari: Run and the first fast correction rounds, click to layers.

Usage, from the repository root under a virtual display::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m bench.gui_latency [--rounds 2]

It follows the user's path on the sample case of ``metseg demo``: opens its
files with the plugin's reader, docks the workbench as the Plugins menu does
(``viewer.window.add_plugin_dock_widget``), in a 1600 x 1000 window, clicks
Run, opens the Correct tab, paints a 3x3 dab of label 1 (lesion) on the central
slice of the largest lesion the model missed (the next largest before every
further round), clicks Fine-tune (fast mode, default settings), and prints, for
Run and every round, the seconds from the click to the probability layer
showing the new result, with the process's resident memory after it. It waits
in Qt's own event loop, idle between events as napari's is: a loop of
``processEvents`` and 5 ms sleeps held the GIL so often that the worker's 100
small steps took 60% longer (rounds of 8.4-13.4 s instead of 5.2-6.0 s on the
sample case). Workspaces go to a temporary folder. Issue #13's target is a fast
round in 10 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import napari
import numpy as np
import torch
import torchvision  # noqa: F401  (before any OpenGL context: see napari_metseg.widgets)
from qtpy.QtWidgets import QApplication

from bench.machine import describe, matmul_gflops
from napari_metseg._napari import SAMPLE_SEED, SAMPLE_SPACING
from napari_metseg.cli.demo import sample_folder
from napari_metseg.correction.workspace import WORKSPACES_ENV
from napari_metseg.layerdata import CORRECTIONS_LAYER, PROBABILITY_LAYER
from napari_metseg.lesions import label_components
from napari_metseg.phantom import make_phantom

TIMEOUT_S = 900.0


def resident_mb() -> float:
    """The process's resident memory in MB (Linux ``/proc``)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def click_and_wait(button, viewer: napari.Viewer, state) -> tuple[float, bool]:
    """Seconds from clicking ``button`` until its work is done and shown (the worker's
    result handler updates the layers before the worker reports finished), in Qt's
    own event loop, idle between events as napari's is (:meth:`RunState.wait`); and
    whether the probability layer shows new data (a refused round leaves it)."""
    before = viewer.layers[PROBABILITY_LAYER].data if PROBABILITY_LAYER in viewer.layers else None
    started = time.perf_counter()
    button.click()
    if not state.wait(TIMEOUT_S):
        raise TimeoutError(f"no result {TIMEOUT_S:.0f} s after the click")
    return time.perf_counter() - started, viewer.layers[PROBABILITY_LAYER].data is not before


def missed_lesions(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Centres of the sample case's true lesions that ``labels`` misses, largest first."""
    truth, _ = label_components(make_phantom(SAMPLE_SEED, spacing=SAMPLE_SPACING).truth > 0)
    found = set(np.unique(truth[labels > 0]).tolist())
    sizes = np.bincount(truth.ravel())
    order = [i for i in np.argsort(-sizes) if i > 0 and sizes[i] and i not in found]
    return [tuple(np.round(np.argwhere(truth == i).mean(axis=0)).astype(int)) for i in order]


def paint_dab(layer, centre: tuple[int, int, int]) -> None:
    """A 3x3 brush dab of label 1, recorded as napari's brush records it."""
    z, r, c = centre
    rows, cols = np.meshgrid(np.arange(r - 1, r + 2), np.arange(c - 1, c + 2), indexing="ij")
    layer.data_setitem((np.full(9, z), rows.ravel(), cols.ravel()), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="fine-tuning rounds to time")
    args = parser.parse_args()
    os.environ[WORKSPACES_ENV] = tempfile.mkdtemp(prefix="metseg-bench-gui-")
    viewer = napari.Viewer(title="MetSeg")
    viewer.open(sample_folder(), plugin="napari-metseg")
    _, workbench = viewer.window.add_plugin_dock_widget("napari-metseg", "MetSeg workbench")
    state, panel = workbench.state, workbench.correction_panel
    panel.mode_combo.setCurrentIndex(panel.mode_combo.findData("fast"))
    viewer.window._qt_window.resize(1600, 1000)
    QApplication.processEvents()
    rows = [("start", 0.0, resident_mb(), "")]

    seconds, _ = click_and_wait(workbench.segment_panel.run_button, viewer, state)
    rows.append(("Run", seconds, resident_mb(), f"{len(state.table)} lesions"))
    targets = missed_lesions(np.asarray(state.labels))
    workbench.tabs.setCurrentIndex(1)  # the Correct tab, where Fine-tune is clicked
    for index in range(args.rounds):
        paint_dab(viewer.layers[CORRECTIONS_LAYER], targets[index % len(targets)])
        seconds, shown = click_and_wait(panel.finetune_button, viewer, state)
        metrics = workbench.correction.workspace.info(state.version)["metrics"]
        note = (
            f"{panel.status_label.text()}, {metrics['attempts']} attempt(s), "
            f"{metrics['timings']}" + ("" if shown else "; no new layer")
        )
        rows.append((f"round {index + 1}", seconds, resident_mb(), note))

    print(
        f"machine: {describe()}, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads, {matmul_gflops():.0f} GFLOP/s float32), napari {napari.__version__}"
    )
    print(f"{'step':<8} {'click->layers s':>15} {'RSS MB':>8}  note")
    for name, seconds, memory, note in rows:
        print(f"{name:<8} {seconds:>15.2f} {memory:>8.0f}  {note}")
    viewer.close()


if __name__ == "__main__":
    main()
