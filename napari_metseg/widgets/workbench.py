"""The MetSeg dock widget: case, segment, correct and explain panels, wired to the core.

Run builds a :class:`~napari_metseg.case.Case` from the assigned layers, runs
:func:`napari_metseg.engine.segment` in a thread worker and shows a
``probability`` Image layer and a ``lesions`` Labels layer whose ``features``
hold the lesion table (napari's status bar shows a lesion's row under the
cursor; the lesion table dock lists them). Threshold and minimum volume
re-derive the lesions from the kept probability; the network does not run
again. The Correct tab (:mod:`~napari_metseg.widgets.correction_loop`) keeps
the ``corrections`` layer, fine-tunes on it and switches model versions; runs
use the case's current version. The Explain tab computes gradient saliency
for the selected lesion (or the current slice), one overlay per present
sequence, and the censor-one-out sequence importance of the case.

One piece of work runs at a time; Cancel stops it at the core's next
checkpoint, and closing the viewer cancels it and waits for its thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QTabWidget, QVBoxLayout, QWidget

from napari_metseg.case import Case, Geometry, fingerprint
from napari_metseg.errors import Cancelled, MetsegError
from napari_metseg.importance import sequence_importance
from napari_metseg.lesions import lesion_table
from napari_metseg.model import load_model, read_model_config
from napari_metseg.progress import ProgressCallback
from napari_metseg.saliency import SaliencyResult, compute_saliency
from napari_metseg.widgets.case_panel import CasePanel
from napari_metseg.widgets.correction_loop import CorrectionLoop
from napari_metseg.widgets.correction_panel import CorrectionPanel
from napari_metseg.widgets.explain_panel import ExplainPanel, explain_page
from napari_metseg.widgets.layers import (
    LESIONS_LAYER,
    case_from_layers,
    labels_layer,
    lesion_features,
    probability_layer_kwargs,
    saliency_layers,
    show_layer,
)
from napari_metseg.widgets.lesion_table import LesionTablePanel
from napari_metseg.widgets.run_controls import RunControls
from napari_metseg.widgets.segment_panel import SegmentPanel
from napari_metseg.widgets.workers import ProgressRelay, background, run_segmentation

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import FunctionWorker

logger = logging.getLogger(__name__)

#: Milliseconds the threshold controls wait for more changes before re-deriving lesions.
SETTLE_MS = 150
#: Seconds closing the viewer waits for a cancelled worker to stop.
SHUTDOWN_WAIT_S = 30.0
#: The lesion table dock in the manifest.
LESION_TABLE_WIDGET = "MetSeg lesion table"


class Workbench(QWidget):
    """Assign sequences, run the model, browse and explain lesions (see the module docstring)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.case_panel = CasePanel(napari_viewer)
        self.segment_panel = SegmentPanel()
        self.explain_panel = ExplainPanel()
        self.correction_panel = CorrectionPanel()
        self.worker: FunctionWorker | None = None
        self.case: Case | None = None
        self.present: tuple[str, ...] = ()
        self.probability: np.ndarray | None = None
        self.geometry: Geometry | None = None
        self.table = None
        self.saliency: SaliencyResult | None = None
        self.importance = None
        self.lesion_table: LesionTablePanel | None = None
        self._models: dict[tuple[Path | None, str], Any] = {}
        self._cancel = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._relay = ProgressRelay()
        self._active = self.segment_panel
        self._relay.progressed.connect(lambda *report: self._active.show_progress(*report))
        self.correction = CorrectionLoop(self)
        self._settle = QTimer(self)
        self._settle.setSingleShot(True)
        self._settle.setInterval(SETTLE_MS)
        self._settle.timeout.connect(self.update_lesions)
        self.segment_panel.run_requested.connect(self.run)
        self.segment_panel.cancel_requested.connect(self.cancel)
        self.segment_panel.model_changed.connect(self.use_model_sequences)
        self.segment_panel.lesion_settings_changed.connect(self._settle.start)
        self.explain_panel.saliency_requested.connect(self.explain)
        self.explain_panel.importance_requested.connect(self.rank_sequences)
        self.explain_panel.cancel_requested.connect(self.cancel)
        napari_viewer.dims.events.current_step.connect(self._show_target)

        segment_page = QWidget()
        segment_layout = QVBoxLayout(segment_page)
        segment_layout.setContentsMargins(0, 0, 0, 0)
        segment_layout.addWidget(self.case_panel)
        segment_layout.addWidget(self.segment_panel)
        segment_layout.addStretch(1)
        self.tabs = QTabWidget()
        self.tabs.addTab(segment_page, "Segment")
        self.tabs.addTab(explain_page(self.correction_panel), "Correct")
        self.tabs.addTab(explain_page(self.explain_panel), "Explain")
        self.tabs.currentChanged.connect(self._show_target)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.tabs)

    def run(self) -> FunctionWorker | None:
        """Segment the assigned, present sequences in a worker; None if nothing could start."""
        try:
            case = case_from_layers(self.case_panel.assignment())
        except MetsegError as error:
            show_error(str(error))
            return None
        present = self.case_panel.present()
        # every assigned image, switched on or off: switching one off keeps the workspace
        images_digest = fingerprint(
            {name: layer.data for name, layer in self.case_panel.assigned().items()}
        )
        self.correction.open_case(case, images_digest, self.segment_panel.model_path())
        key = self._model_key()
        return self._start(
            "segmentation",
            self.segment_panel,
            f"segmenting {', '.join(present)}",
            lambda probability: self._show_result(case, present, probability),
            run_segmentation,
            lambda: self._model(*key),
            case,
            present,
            key[1],
        )

    def explain(self) -> FunctionWorker | None:
        """Gradient saliency of the selected lesion (else the current slice), in a worker."""
        if self.case is None or self.probability is None:
            show_error("no segmentation to explain yet: run the segmentation first")
            return None
        lesion, slice_index = self._target()
        mask = self._lesion_mask(lesion) if lesion else None
        key = self._model_key()
        what = f"lesion {lesion}" if lesion else f"slice {slice_index}"
        return self._start(
            "saliency",
            self.explain_panel,
            f"saliency of {what}",
            self._show_saliency,
            self._saliency,
            key,
            self.case,
            self.present,
            mask,
            slice_index,
        )

    def rank_sequences(self) -> FunctionWorker | None:
        """Censor-one-out sequence importance of the last segmented case, in a worker."""
        if self.case is None or self.probability is None:
            show_error("no segmentation yet: run the segmentation first")
            return None
        key = self._model_key()
        return self._start(
            "sequence importance",
            self.explain_panel,
            f"switching each of {', '.join(self.present)} off in turn",
            self._show_importance,
            self._importance,
            key,
            self.case,
            self.present,
            self.probability,
            self.segment_panel.threshold(),
            self.segment_panel.min_volume_mm3(),
        )

    def cancel(self) -> None:
        """Ask the running work to stop at its next checkpoint."""
        self._cancel.set()
        self._active.status_label.setText("cancelling")

    def shutdown(self, timeout_s: float = SHUTDOWN_WAIT_S) -> bool:
        """Cancel the running work and wait for its thread; False if it did not stop in time.

        The work's pending signals are dropped: the panels they would update
        are about to go with the viewer. Unsaved strokes are saved first.
        """
        self.correction.save()
        self._cancel.set()
        stopped = self._idle.wait(timeout_s)
        if not stopped:
            logger.warning("a MetSeg worker did not stop within %.0f s", timeout_s)
        self._relay.progressed.disconnect()
        if self.worker is not None:
            for signal in (self.worker.returned, self.worker.errored, self.worker.finished):
                signal.disconnect()
            self.worker = None
        return stopped

    def use_model_sequences(self) -> None:
        """Show one case row per sequence of the chosen model (its own configuration)."""
        path = self.segment_panel.model_path()
        try:
            config = read_model_config(path)
        except MetsegError as error:
            show_error(str(error))
            return
        if tuple(config.sequences) != self.case_panel.sequences:
            self.case_panel.set_sequences(config.sequences)
            show_info(f"model sequences: {', '.join(config.sequences)}")

    def update_lesions(self) -> None:
        """Re-derive the lesion layer and table from the kept probability."""
        if self.probability is None or self.geometry is None:
            return
        try:
            table, labels = lesion_table(
                self.probability,
                self.geometry,
                threshold=self.segment_panel.threshold(),
                min_volume_mm3=self.segment_panel.min_volume_mm3(),
            )
        except (MetsegError, ValueError) as error:
            show_error(str(error))
            return
        self.table = table
        data, kwargs, layer_type = labels_layer(labels, self.geometry, LESIONS_LAYER, "lesions")
        kwargs["features"] = lesion_features(table)
        layer = show_layer(self.viewer, data, kwargs, layer_type)
        layer.events.show_selected_label.connect(self._show_target)
        layer.events.selected_label.connect(self._show_target)
        volume = float(table["volume_mm3"].sum()) if len(table) else 0.0
        self.segment_panel.summary_label.setText(
            f"{len(table)} lesions, {volume:.0f} mm\N{SUPERSCRIPT THREE} in all"
        )

    def hideEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """Save pending strokes when the dock goes away (closed, hidden)."""
        self.correction.save()
        super().hideEvent(event)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Close and watched is self.window():
            self.shutdown()
        return super().eventFilter(watched, event)

    def _start(
        self,
        what: str,
        panel: RunControls,
        message: str,
        on_result: Callable[[Any], None],
        function: Callable[..., Any],
        *args: Any,
    ) -> FunctionWorker | None:
        if self.worker is not None:
            show_info("MetSeg is busy: wait for the running work or cancel it")
            return None
        self._cancel = threading.Event()
        self._active = panel
        self._watch_window()
        self.worker = background(
            function, self._idle, *args, progress=self._relay.report, cancel=self._cancel
        )
        self.worker.returned.connect(on_result)
        self.worker.errored.connect(lambda error: self._on_error(what, error))
        self.worker.finished.connect(self._on_finished)
        panel.set_running(True)
        panel.status_label.setText(message)
        self.worker.start()
        return self.worker

    def _watch_window(self) -> None:
        """Cancel and wait for work when the viewer's main window closes.

        Installing the same filter twice is a no-op in Qt; no reference to the
        window is kept (it would keep the closed viewer alive).
        """
        window = self.window()
        if window is not self:
            window.installEventFilter(self)

    def _model_key(self) -> tuple[Path | None, str]:
        """The model runs use (the case's current version, else the chosen file) and device."""
        path = self.correction.active_model(self.segment_panel.model_path())
        return path, self.segment_panel.device()

    def _model(self, path: Path | None, device: str) -> Any:
        """The loaded model for a file and device, loaded once (runs in the worker)."""
        key = (path, device)
        if key not in self._models:
            self._models[key] = load_model(path, device="cpu" if device == "auto" else device)
        return self._models[key]

    def _saliency(
        self,
        key: tuple[Path | None, str],
        case: Case,
        present: tuple[str, ...],
        mask: np.ndarray | None,
        slice_index: int,
        progress: ProgressCallback,
        cancel: threading.Event,
    ) -> SaliencyResult:
        return compute_saliency(
            case,
            self._model(*key),
            present=present,
            mask=mask,
            slice_index=slice_index,
            device=key[1],
            progress=progress,
            cancel=cancel,
        )

    def _importance(
        self,
        key: tuple[Path | None, str],
        case: Case,
        present: tuple[str, ...],
        baseline: np.ndarray,
        threshold: float,
        min_volume_mm3: float,
        progress: ProgressCallback,
        cancel: threading.Event,
    ) -> pd.DataFrame:
        return sequence_importance(
            case,
            self._model(*key),
            present=present,
            threshold=threshold,
            min_volume_mm3=min_volume_mm3,
            device=key[1],
            baseline=baseline,
            progress=progress,
            cancel=cancel,
        )

    def _show_result(self, case: Case, present: tuple[str, ...], probability: np.ndarray) -> None:
        self.case, self.present = case, tuple(present)
        self.probability, self.geometry = probability, case.geometry
        show_layer(self.viewer, probability, probability_layer_kwargs(case.geometry), "image")
        self.update_lesions()
        self.correction.case_shown(present, probability)
        self.segment_panel.status_label.setText("done")
        if self.lesion_table is None:
            _, self.lesion_table = self.viewer.window.add_plugin_dock_widget(
                "napari-metseg", LESION_TABLE_WIDGET
            )
        self._show_target()

    def _show_saliency(self, result: SaliencyResult) -> None:
        self.saliency = result
        for data, kwargs, layer_type in saliency_layers(result.maps, self.geometry):
            show_layer(self.viewer, data, kwargs, layer_type)
        self.explain_panel.canvas.show_aggregates(result.per_sequence, result.per_offset)
        self.explain_panel.status_label.setText("saliency done")

    def _show_importance(self, frame) -> None:
        self.importance = frame
        self.explain_panel.show_importance(frame)
        self.explain_panel.status_label.setText("sequence importance done")

    def _target(self) -> tuple[int, int]:
        """``(lesion, slice)``: the lesion shown alone (0: none) and the current slice."""
        layer = self._lesions_layer()
        lesion = 0
        if layer is not None and layer.show_selected_label:
            lesion = int(layer.selected_label)
        slice_index = 0
        if layer is not None:
            index = layer.world_to_data(self.viewer.dims.point)
            slice_index = int(np.clip(round(index[0]), 0, layer.data.shape[0] - 1))
        return lesion, slice_index

    def _lesion_mask(self, lesion: int) -> np.ndarray:
        layer = self._lesions_layer()
        return np.asarray(layer.data) == lesion

    def _lesions_layer(self):
        if LESIONS_LAYER in self.viewer.layers:
            return self.viewer.layers[LESIONS_LAYER]
        return None

    def _show_target(self, event=None) -> None:
        if self.probability is None:
            return
        lesion, slice_index = self._target()
        self.explain_panel.target_label.setText(
            f"target: lesion {lesion} (selected in the lesion table)"
            if lesion
            else f"target: slice {slice_index} (select a lesion in the table to explain it)"
        )

    def _on_error(self, what: str, error: Exception) -> None:
        if isinstance(error, Cancelled):
            show_info(f"{what} cancelled")
            self._active.status_label.setText("cancelled")
        elif isinstance(error, MetsegError):
            show_error(str(error))
            self._active.status_label.setText("failed")
        else:
            logger.error("%s failed", what, exc_info=error)
            show_error(f"{what} failed: {type(error).__name__}: {error}")
            self._active.status_label.setText("failed")

    def _on_finished(self) -> None:
        self.worker = None
        self._active.set_running(False)
