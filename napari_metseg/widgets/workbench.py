"""The MetSeg dock widget: a case panel and a segment panel, wired to the core.

Run builds a :class:`~napari_metseg.case.Case` from the assigned layers, runs
:func:`napari_metseg.engine.segment` in a thread worker and shows a
``probability`` Image layer and a ``lesions`` Labels layer whose ``features``
hold the lesion table (napari's status bar shows a lesion's row under the
cursor). Threshold and minimum volume re-derive the lesions from the kept
probability; the network does not run again.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_metseg.case import Geometry
from napari_metseg.errors import Cancelled, MetsegError
from napari_metseg.lesions import lesion_table
from napari_metseg.model import load_model
from napari_metseg.widgets.case_panel import CasePanel
from napari_metseg.widgets.layers import (
    LESIONS_LAYER,
    case_from_layers,
    labels_layer,
    lesion_features,
    probability_layer_kwargs,
    show_layer,
)
from napari_metseg.widgets.segment_panel import SegmentPanel
from napari_metseg.widgets.workers import ProgressRelay, segmentation_worker

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import FunctionWorker

logger = logging.getLogger(__name__)

#: Milliseconds the threshold controls wait for more changes before re-deriving lesions.
SETTLE_MS = 150


class Workbench(QWidget):
    """Assign sequences, run the model, and browse lesions (see the module docstring)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.case_panel = CasePanel(napari_viewer)
        self.segment_panel = SegmentPanel()
        self.worker: FunctionWorker | None = None
        self.probability: np.ndarray | None = None
        self.geometry: Geometry | None = None
        self.table = None
        self._models: dict[tuple[Path | None, str], Any] = {}
        self._cancel = threading.Event()
        self._relay = ProgressRelay()
        self._relay.progressed.connect(self.segment_panel.show_progress)
        self._settle = QTimer(self)
        self._settle.setSingleShot(True)
        self._settle.setInterval(SETTLE_MS)
        self._settle.timeout.connect(self.update_lesions)
        self.segment_panel.run_requested.connect(self.run)
        self.segment_panel.cancel_requested.connect(self.cancel)
        self.segment_panel.lesion_settings_changed.connect(self._settle.start)
        layout = QVBoxLayout(self)
        layout.addWidget(self.case_panel)
        layout.addWidget(self.segment_panel)
        layout.addStretch(1)

    def run(self) -> FunctionWorker | None:
        """Segment the assigned, present sequences in a worker; None if nothing could start."""
        if self.worker is not None:
            show_info("a segmentation is already running")
            return None
        try:
            case = case_from_layers(self.case_panel.assignment())
        except MetsegError as error:
            show_error(str(error))
            return None
        present = self.case_panel.present()
        key = (self.segment_panel.model_path(), self.segment_panel.device())
        self._cancel = threading.Event()
        self.worker = segmentation_worker(
            lambda: self._model(*key), case, present, key[1], self._relay, self._cancel
        )
        self.worker.returned.connect(
            lambda probability: self._show_probability(probability, case.geometry)
        )
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.segment_panel.set_running(True)
        self.segment_panel.status_label.setText(f"segmenting {', '.join(present)}")
        self.worker.start()
        return self.worker

    def cancel(self) -> None:
        """Ask the running segmentation to stop at its next checkpoint."""
        self._cancel.set()
        self.segment_panel.status_label.setText("cancelling")

    def update_lesions(self) -> None:
        """Re-derive the lesion layer and table from the kept probability."""
        if self.probability is None or self.geometry is None:
            return
        try:
            table, labels = lesion_table(
                self.probability,
                self.geometry.spacing,
                threshold=self.segment_panel.threshold(),
                min_volume_mm3=self.segment_panel.min_volume_mm3(),
                affine=self.geometry.affine,
            )
        except MetsegError as error:
            show_error(str(error))
            return
        self.table = table
        data, kwargs, layer_type = labels_layer(labels, self.geometry, LESIONS_LAYER, "lesions")
        kwargs["features"] = lesion_features(table)
        show_layer(self.viewer, data, kwargs, layer_type)
        volume = float(table["volume_mm3"].sum()) if len(table) else 0.0
        self.segment_panel.summary_label.setText(
            f"{len(table)} lesions, {volume:.0f} mm\N{SUPERSCRIPT THREE} in all"
        )

    def _model(self, path: Path | None, device: str) -> Any:
        """The loaded model for a file and device, loaded once (runs in the worker)."""
        key = (path, device)
        if key not in self._models:
            self._models[key] = load_model(path, device="cpu" if device == "auto" else device)
        return self._models[key]

    def _show_probability(self, probability: np.ndarray, geometry: Geometry) -> None:
        self.probability, self.geometry = probability, geometry
        show_layer(self.viewer, probability, probability_layer_kwargs(geometry), "image")
        self.update_lesions()
        self.segment_panel.status_label.setText("done")

    def _on_error(self, error: Exception) -> None:
        if isinstance(error, Cancelled):
            show_info("segmentation cancelled")
        elif isinstance(error, MetsegError):
            show_error(str(error))
        else:
            logger.error("segmentation failed", exc_info=error)
            show_error(f"segmentation failed: {type(error).__name__}: {error}")

    def _on_finished(self) -> None:
        self.worker = None
        self.segment_panel.set_running(False)
