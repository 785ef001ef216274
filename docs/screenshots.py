"""Screenshots of the real MetSeg workbench for the README, taken headless.

Run under a virtual display from the repository root::

    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python docs/screenshots.py

It opens the sample case in a 1400 x 900 napari window, docks the workbench,
runs the bundled model, selects the most confident lesion, computes its
saliency, and writes PNGs to ``docs/images/``. Timings of the run are printed,
so the README's latency figures can be refreshed from the same script.
"""

from __future__ import annotations

import time
from pathlib import Path

import napari
import torchvision  # noqa: F401  (before any OpenGL context: see napari_metseg.widgets)
from qtpy.QtWidgets import QApplication

from napari_metseg.cli.demo import sample_folder

IMAGES = Path(__file__).resolve().parent / "images"


def wait_for(condition, timeout_s: float = 300.0) -> float:
    """Process Qt events until ``condition()`` holds; seconds waited."""
    start = time.perf_counter()
    while not condition():
        QApplication.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError("the workbench did not finish in time")
    return time.perf_counter() - start


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="MetSeg")
    viewer.window._qt_window.resize(1400, 900)
    viewer.open(sample_folder(), plugin="napari-metseg")
    _, workbench = viewer.window.add_plugin_dock_widget("napari-metseg", "MetSeg workbench")
    wait_for(lambda: True, 1.0)

    workbench.run()
    seconds = wait_for(lambda: workbench.worker is None and "lesions" in viewer.layers)
    print(f"click Run -> layers shown: {seconds:.1f} s, {len(workbench.table)} lesions")
    if len(workbench.table):
        workbench.lesion_table.go_to(int(workbench.table["label"].iloc[0]))
    wait_for(lambda: True, 0.5)
    viewer.screenshot(IMAGES / "workbench.png", canvas_only=False)

    workbench.tabs.setCurrentIndex(1)
    workbench.explain()
    seconds = wait_for(lambda: workbench.worker is None and workbench.saliency is not None)
    print(f"saliency of the selected lesion: {seconds:.1f} s")
    wait_for(lambda: True, 0.5)
    viewer.screenshot(IMAGES / "saliency.png", canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    main()
