"""The MetSeg dock widget: case, segment, correct and explain tabs around one run state.

The workbench builds the panels, the shared :class:`~napari_metseg.widgets.run_state.RunState`
and the :class:`~napari_metseg.widgets.correction_loop.CorrectionLoop`, and does
the Segment tab's work: Run builds a :class:`~napari_metseg.case.Case` from the
assigned layers and segments it with the model in use (the base model of a newly
opened case, or the version picked in the Correct tab) in the state's worker; a
run of the base model keeps fast fine-tuning's cache of the case when the
correction loop asks for it, so the first round does not compute it again.
The state shows one ``probability`` and one ``lesions`` layer per viewer and
updates them in place; threshold and minimum volume re-derive the lesions
without running the network again. The first result docks the lesion table
below the canvas, where it has the width for its columns.

One piece of work runs at a time; Cancel stops it at the core's next
checkpoint, and closing the viewer cancels it and waits for its thread
(unsaved strokes are saved first).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QMainWindow, QTabWidget, QVBoxLayout, QWidget

from napari_metseg._napari import prefer_metseg_reader
from napari_metseg.case import fingerprint
from napari_metseg.errors import MetsegError
from napari_metseg.model import read_model_config
from napari_metseg.widgets.case_panel import CasePanel
from napari_metseg.widgets.correction_loop import CorrectionLoop
from napari_metseg.widgets.correction_panel import CorrectionPanel
from napari_metseg.widgets.explain_panel import ExplainPanel
from napari_metseg.widgets.layers import case_from_layers
from napari_metseg.widgets.run_state import SHUTDOWN_WAIT_S, RunState
from napari_metseg.widgets.segment_panel import SegmentPanel
from napari_metseg.widgets.workers import run_segmentation

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import FunctionWorker

logger = logging.getLogger(__name__)

#: Milliseconds the threshold controls wait for more changes before re-deriving lesions.
SETTLE_MS = 150
#: The lesion table dock in the manifest.
LESION_TABLE_WIDGET = "MetSeg lesion table"


class Workbench(QWidget):
    """Assign sequences, run the model, correct and explain lesions (see the module docstring)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        prefer_metseg_reader()
        self.viewer = napari_viewer
        self.state = RunState(napari_viewer, self)
        self.case_panel = CasePanel(napari_viewer)
        self.segment_panel = SegmentPanel()
        self.correction_panel = CorrectionPanel()
        self.explain_panel = ExplainPanel(self.state)
        self.correction = CorrectionLoop(self.state, self.correction_panel)
        self.lesion_table = None
        self.segment_panel.observe_work(self.state)
        self._settle = QTimer(self)
        self._settle.setSingleShot(True)
        self._settle.setInterval(SETTLE_MS)
        self._settle.timeout.connect(self._apply_lesion_settings)
        self.segment_panel.run_requested.connect(self.run)
        self.segment_panel.model_changed.connect(self.use_model_sequences)
        self.segment_panel.lesion_settings_changed.connect(self._settle.start)
        self.state.lesions_changed.connect(self._show_summary)
        self.state.result_changed.connect(self._dock_lesion_table)
        self.state.busy_changed.connect(self._watch_window)

        segment_page = QWidget()
        segment_layout = QVBoxLayout(segment_page)
        segment_layout.setContentsMargins(0, 0, 0, 0)
        segment_layout.addWidget(self.case_panel)
        segment_layout.addWidget(self.segment_panel)
        segment_layout.addStretch(1)
        self.tabs = QTabWidget()
        self.tabs.addTab(segment_page, "Segment")
        self.tabs.addTab(_top_aligned(self.correction_panel), "Correct")
        self.tabs.addTab(_top_aligned(self.explain_panel), "Explain")
        self.tabs.currentChanged.connect(self.explain_panel.show_target)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.tabs)

    def run(self) -> FunctionWorker | None:
        """Segment the assigned, present sequences in the worker; None if nothing could start."""
        state = self.state
        if state.busy:
            show_info("MetSeg is busy: wait for the running work or cancel it")
            return None
        try:
            case = case_from_layers(self.case_panel.assignment())
        except MetsegError as error:
            show_error(str(error))
            return None
        present = self.case_panel.present()
        state.base_model = self.segment_panel.model_path()
        state.device = self.segment_panel.device()
        state.threshold = self.segment_panel.threshold()
        state.min_volume_mm3 = self.segment_panel.min_volume_mm3()
        # every assigned image, switched on or off: switching one off keeps the workspace
        images = {name: layer.data for name, layer in self.case_panel.assigned().items()}
        state.open_case(case, fingerprint(images))
        path, device = state.model_path(), state.device
        return state.start(
            self.segment_panel.owner,
            "segmentation",
            f"segmenting {', '.join(present)} with the {state.version} model",
            lambda result: self._show_run(case, present, *result),
            run_segmentation,
            lambda: state.model(path, device),
            case,
            present,
            device,
            self.correction.wants_context(),
        )

    def shutdown(self, timeout_s: float = SHUTDOWN_WAIT_S) -> bool:
        """Save pending strokes, cancel the running work and wait for its thread."""
        self.correction.save()
        return self.state.shutdown(timeout_s)

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

    def hideEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """Save pending strokes when the dock goes away (closed, hidden)."""
        self.correction.save()
        super().hideEvent(event)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Close and watched is self.window():
            self.shutdown()
        return super().eventFilter(watched, event)

    def _watch_window(self) -> None:
        """Cancel and wait for work when the viewer's main window closes (installing the
        filter twice is a no-op; no reference to the window is kept)."""
        window = self.window()
        if window is not self:
            window.installEventFilter(self)

    def _show_run(self, case, present, probability, context) -> None:
        self.correction.keep_context(case, context)
        self.state.show_result(case, present, probability)
        self.segment_panel.status_label.setText(f"done ({self.state.version} model)")

    def _apply_lesion_settings(self) -> None:
        self.state.set_lesion_settings(
            self.segment_panel.threshold(), self.segment_panel.min_volume_mm3()
        )

    def _show_summary(self) -> None:
        table = self.state.table
        volume = float(table["volume_mm3"].sum()) if len(table) else 0.0
        self.segment_panel.summary_label.setText(
            f"{len(table)} lesions, {volume:.0f} mm\N{SUPERSCRIPT THREE} in all"
        )

    def _dock_lesion_table(self) -> None:
        """Dock the lesion table once, below the canvas (the full window width for its
        columns, the right column keeps its height for the workbench)."""
        if self.lesion_table is not None:
            return
        dock, self.lesion_table = self.viewer.window.add_plugin_dock_widget(
            "napari-metseg", LESION_TABLE_WIDGET
        )
        window = dock.parentWidget()
        if isinstance(dock, QDockWidget) and isinstance(window, QMainWindow):
            window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
            window.resizeDocks([dock], [self.lesion_table.preferred_height()], Qt.Vertical)


def _top_aligned(panel: QWidget) -> QWidget:
    """The panel on a page of its own, pushed to the top."""
    page = QWidget()
    layout = QVBoxLayout(page)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(panel)
    layout.addStretch(1)
    return page
