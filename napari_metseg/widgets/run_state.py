"""The one run state the workbench's panels share: case, result, model version, worker.

:class:`RunState` holds what the last run produced (the case, the presence
vector, the probability, the lesion labels and table), the model in use (the
chosen base model file, the active version of the case's workspace) and the
single worker that runs the core's long work. The panels change it through its
public methods and observe it through its signals; none of them calls another.

The result layers are shown here, one of each per viewer and updated in place
(:func:`~napari_metseg.widgets.layers.show_layer`): ``probability`` by
:meth:`RunState.show_result`, ``lesions`` (its ``features`` are the lesion
table, which the table dock shows) by :meth:`RunState.update_lesions`, with
the annotator's marks applied (:meth:`RunState.set_marks`,
:func:`~napari_metseg.correction.annotation.annotated_lesions`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEventLoop, QObject, QTimer, Signal

from napari_metseg.case import Case, Geometry
from napari_metseg.correction.annotation import annotated_lesions
from napari_metseg.correction.workspace import BASE
from napari_metseg.errors import Cancelled, MetsegError
from napari_metseg.layerdata import lesions_layer, probability_layer
from napari_metseg.model import load_model
from napari_metseg.thresholds import CANDIDATE_THRESHOLD
from napari_metseg.widgets.layers import show_layer
from napari_metseg.widgets.workers import background

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import FunctionWorker

logger = logging.getLogger(__name__)

#: Seconds closing the viewer waits for a cancelled worker to stop.
SHUTDOWN_WAIT_S = 30.0
#: Seconds between the progress reports panels show (a phase's first and last, at 0 and at
#: the total, always show). A report
#: for every step of a fast round (25 a second) rewrapped the Correct tab's status line
#: each time, and with the tab in view the sample case's round took 18.6 s instead of
#: 9.5 (``bench.gui_latency`` at 1600 x 1000 under xvfb).
PROGRESS_INTERVAL_S = 0.5


class RunState(QObject):
    """Shared state of one workbench (see the module docstring).

    Signals carry the ``owner`` of a piece of work (``"segment"``, ``"correct"``,
    ``"explain"``) so each panel shows only its own progress and status.
    """

    #: A case was opened for a run: ``(case, images_digest)``; the workspace follows it.
    case_opened = Signal(object, str)
    #: A new probability is shown (a run, a fine-tune, an undo / redo, a version switch).
    result_changed = Signal()
    #: The lesion labels and table were derived again (new result, threshold, volume).
    lesions_changed = Signal()
    #: The model in use changed (a version picked, made, undone or redone).
    version_changed = Signal()
    #: ``(owner, running)``: work of ``owner`` started or finished.
    busy_changed = Signal(str, bool)
    #: ``(owner, done, total, message)`` from the worker thread.
    progressed = Signal(str, int, int, str)
    #: ``(owner, text)``: a status line for the owner's panel.
    status = Signal(str, str)

    def __init__(self, viewer: napari.Viewer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.case: Case | None = None
        self.present: tuple[str, ...] = ()
        self.probability: np.ndarray | None = None
        self.marks: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self.table: pd.DataFrame | None = None
        self.threshold = CANDIDATE_THRESHOLD
        self.min_volume_mm3 = 0.0
        self.base_model: Path | None = None
        self.device = "auto"
        self.version = BASE
        self.version_model: Path | None = None
        self.worker: FunctionWorker | None = None
        self.owner = ""
        self._models: dict[tuple[Path | None, str], Any] = {}
        self._cancel = threading.Event()
        self.idle = threading.Event()
        self.idle.set()

    @property
    def geometry(self) -> Geometry | None:
        return None if self.case is None else self.case.geometry

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def model_path(self) -> Path | None:
        """The model file runs use: the active version's, else the chosen base model."""
        return self.version_model if self.version != BASE else self.base_model

    def set_version(self, version: str, path: Path | None) -> None:
        """Use ``version`` (stored at ``path``; :data:`BASE`: the chosen model file)."""
        self.version, self.version_model = version, path
        self.version_changed.emit()

    def model(self, path: Path | None, device: str) -> Any:
        """The loaded model for a file and device, loaded once (called in the worker)."""
        key = (path, device)
        if key not in self._models:
            self._models[key] = load_model(path, device="cpu" if device == "auto" else device)
        return self._models[key]

    def open_case(self, case: Case, images_digest: str) -> None:
        """Announce the case of the next run (the correction loop opens its workspace)."""
        self.case_opened.emit(case, images_digest)

    def show_result(self, case: Case, present: tuple[str, ...], probability: np.ndarray) -> None:
        """Keep a new probability, show it and derive its lesions."""
        self.case, self.present, self.probability = case, tuple(present), probability
        show_layer(self.viewer, *probability_layer(probability, case.geometry))
        self.update_lesions()
        self.result_changed.emit()

    def set_lesion_settings(self, threshold: float, min_volume_mm3: float) -> None:
        self.threshold, self.min_volume_mm3 = float(threshold), float(min_volume_mm3)
        self.update_lesions()

    def set_marks(self, marks: np.ndarray | None) -> None:
        """Apply the case's corrections (None: none) to the lesions, when they changed."""
        marks = None if marks is None or not marks.any() else np.array(marks, dtype=np.uint8)
        if marks is None or self.marks is None:
            changed = marks is not self.marks
        else:
            changed = not np.array_equal(marks, self.marks)
        if changed:
            self.marks = marks
            self.update_lesions()

    def update_lesions(self) -> None:
        """Re-derive the lesion labels and table from the kept probability and marks; update
        the layer."""
        if self.probability is None or self.case is None:
            return
        marks = self.marks
        if marks is not None and marks.shape != self.probability.shape:
            marks = None  # strokes of another case
        try:
            table, labels = annotated_lesions(
                self.probability,
                marks,
                self.case.geometry,
                threshold=self.threshold,
                min_volume_mm3=self.min_volume_mm3,
            )
        except (MetsegError, ValueError) as error:
            show_error(str(error))
            return
        self.table, self.labels = table, labels
        show_layer(self.viewer, *lesions_layer(labels, table, self.case.geometry))
        self.lesions_changed.emit()

    def start(
        self,
        owner: str,
        what: str,
        message: str,
        on_result: Callable[[Any], None],
        function: Callable[..., Any],
        *args: Any,
    ) -> FunctionWorker | None:
        """Run ``function(*args, progress=..., cancel=...)`` in the worker (one at a time);
        ``on_result`` gets its value; errors become notifications. None: busy."""
        if self.worker is not None:
            show_info("MetSeg is busy: wait for the running work or cancel it")
            return None
        self._cancel = threading.Event()
        self.owner = owner

        shown = [-PROGRESS_INTERVAL_S]

        def progress(done: int, total: int, text: str) -> None:
            now = time.monotonic()
            if 0 < done < total and now - shown[0] < PROGRESS_INTERVAL_S:
                return
            shown[0] = now
            self.progressed.emit(owner, int(done), int(total), str(text))

        self.worker = background(function, self.idle, *args, progress=progress, cancel=self._cancel)
        self.worker.returned.connect(on_result)
        self.worker.errored.connect(lambda error: self._on_error(owner, what, error))
        self.worker.finished.connect(self._on_finished)
        self.busy_changed.emit(owner, True)
        self.status.emit(owner, message)
        self.worker.start()
        return self.worker

    def wait(self, timeout_s: float) -> bool:
        """Run Qt's own event loop until the running work is done and shown; False if it
        still runs after ``timeout_s``. For scripts that drive the workbench (benchmarks,
        screenshots): a loop of ``processEvents`` and short sleeps holds the GIL often
        enough to slow the worker's small steps by half."""
        if self.worker is None:
            return True
        loop, timer = QEventLoop(), QTimer()
        timer.setSingleShot(True)
        timer.timeout.connect(loop.quit)

        def done(owner: str, running: bool) -> None:
            if not running:
                loop.quit()

        self.busy_changed.connect(done)
        timer.start(int(timeout_s * 1000))
        loop.exec()
        timer.stop()
        self.busy_changed.disconnect(done)
        return self.worker is None

    def cancel(self) -> None:
        """Ask the running work to stop at its next checkpoint."""
        self._cancel.set()
        if self.worker is not None:
            self.status.emit(self.owner, "cancelling")

    def shutdown(self, timeout_s: float = SHUTDOWN_WAIT_S) -> bool:
        """Cancel the running work and wait for its thread; False if it did not stop in time.

        The work's pending signals are dropped: the panels they would update
        are about to go with the viewer.
        """
        self._cancel.set()
        stopped = self.idle.wait(timeout_s)
        if not stopped:
            logger.warning("a MetSeg worker did not stop within %.0f s", timeout_s)
        if self.worker is not None:
            for signal in (self.worker.returned, self.worker.errored, self.worker.finished):
                signal.disconnect()
            self.worker = None
        return stopped

    def _on_error(self, owner: str, what: str, error: BaseException) -> None:
        if isinstance(error, Cancelled):
            show_info(f"{what} cancelled")
            self.status.emit(owner, "cancelled")
        elif isinstance(error, MetsegError):
            show_error(str(error))
            self.status.emit(owner, f"failed: {error}")
        else:
            logger.error("%s failed", what, exc_info=error)
            show_error(f"{what} failed: {type(error).__name__}: {error}")
            self.status.emit(owner, "failed")

    def _on_finished(self) -> None:
        owner, self.worker = self.owner, None
        self.busy_changed.emit(owner, False)
