"""Active correction in the workbench: the corrections layer, fine-tuning rounds, versions.

The ``corrections`` Labels layer (uint8 on the reference grid: 1 lesion, 2 not
lesion, 0 not looked at) is painted by hand or filled from the lesion table
(accept / reject a lesion). Its strokes autosave to the case's
:class:`~napari_metseg.correction.Workspace` a moment after each change
(:data:`AUTOSAVE_MS`, so one stroke is one write), and come back when the
same case is segmented again, in this session or a later one.

Fine-tune runs :meth:`Workspace.finetune` and then the segmentation with the
new version in one thread worker (progress, Cancel), updates the probability,
lesions and table, and marks the lesions that appeared or disappeared (by
overlap of the old and new lesion maps) in the ``lesion changes`` Points layer.
Undo / redo switch the workspace between versions and restore their
predictions (kept for the last few, else segmented again); the base model
file is only ever read. A cancelled or failed round or switch leaves the
previous version active. Where a case's workspace lives:
:func:`~napari_metseg.widgets.correction_panel.workspace_folder`.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QFileDialog

from napari_metseg.case import Case, Geometry
from napari_metseg.correction import FinetuneConfig, FinetuneResult, Workspace
from napari_metseg.correction.workspace import BASE, STATE
from napari_metseg.errors import MetsegError
from napari_metseg.widgets.correction_panel import (
    CHANGES_LAYER,
    LesionChanges,
    changes_layer,
    default_workspace_root,
    lesion_changes,
    workspace_folder,
)
from napari_metseg.widgets.layers import (
    CORRECTIONS_LAYER,
    LESIONS_LAYER,
    corrections_layer,
    show_layer,
)
from napari_metseg.widgets.workers import run_segmentation

if TYPE_CHECKING:
    import napari.layers

    from napari_metseg.widgets.workbench import Workbench

#: Milliseconds after the last change to the corrections layer before it is saved.
AUTOSAVE_MS = 500
#: Predictions (one per version and presence vector) kept in memory for undo / redo.
PREDICTIONS_KEPT = 3


@dataclass
class Round:
    """One fine-tuning round: the version it made, its prediction and how training went."""

    version: str
    probability: np.ndarray
    result: FinetuneResult


def finetune_and_segment(
    workspace: Workspace,
    case: Case,
    present: Sequence[str],
    config: FinetuneConfig,
    device: str,
    progress: Callable[[int, int, str], None],
    cancel: threading.Event,
) -> Round:
    """Fine-tune the current version on the saved strokes, then segment with the new one.

    Stopped or failed after the new version was stored, the workspace goes
    back to the previous version (the new one stays on disk, reachable by redo).
    """
    result = workspace.finetune(case, config, tuple(present), progress, cancel)
    version = workspace.current
    try:
        probability = run_segmentation(
            lambda: result.model, case, present, device, progress, cancel
        )
    except Exception:
        workspace.undo()
        raise
    return Round(version, probability, result)


class CorrectionLoop(QObject):
    """The workbench's corrections layer, workspace, fine-tuning rounds and versions."""

    def __init__(self, workbench: Workbench) -> None:
        super().__init__(workbench)
        self.workbench = workbench
        self.viewer = workbench.viewer
        self.panel = workbench.correction_panel
        self.root = default_workspace_root()
        self.folder: Path | None = None
        self.workspace: Workspace | None = None
        self.layer: napari.layers.Labels | None = None
        self.changes: LesionChanges | None = None
        self._geometry: Geometry | None = None
        self._base_model: Path | None = None
        self._images_digest = ""
        self._case_name = "case"
        self._layer_folder: Path | None = None
        self._predictions: OrderedDict[tuple[str, tuple[str, ...]], np.ndarray] = OrderedDict()
        self._hooked: list[Any] = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(AUTOSAVE_MS)
        self._timer.timeout.connect(self.save)
        self.destroyed.connect(_unhooker(self._hooked))
        self.panel.show_root(self.root)
        self.panel.finetune_requested.connect(self.finetune)
        self.panel.cancel_requested.connect(workbench.cancel)
        self.panel.undo_requested.connect(self.undo)
        self.panel.redo_requested.connect(self.redo)
        self.panel.export_requested.connect(self._ask_and_export)
        self.panel.layer_requested.connect(self.show_corrections)
        self.panel.root_requested.connect(self._ask_root)

    def open_case(self, case: Case, images_digest: str, base_model: Path | None) -> None:
        """Find the workspace of ``case`` under the root (opened if it exists, else made
        when the first stroke is saved); ``images_digest``: the fingerprint of every assigned
        image (see :func:`workspace_folder`)."""
        folder = workspace_folder(self.root, case.geometry, images_digest, base_model)
        if folder == self.folder:
            return
        self.save()
        self.folder, self.workspace, self._images_digest = folder, None, images_digest
        self._geometry, self._base_model = case.geometry, base_model
        self._case_name = Path(next(iter(case.sources.values()), "") or case.name).name
        self._predictions.clear()
        if (folder / STATE).exists():
            try:
                self.workspace = Workspace(folder, shape=case.shape)
            except MetsegError as error:
                show_error(f"could not open the case's workspace: {error}")
        self.panel.show_versions(self.workspace)

    def active_model(self, base_model: Path | None) -> Path | None:
        """The model runs use: the workspace's current version, else ``base_model``."""
        if self.workspace is None or self.workspace.current == BASE:
            return base_model
        return self.workspace.model_path()

    def case_shown(self, present: Sequence[str], probability: np.ndarray) -> None:
        """Keep the prediction of the current version and show the corrections layer."""
        version = BASE if self.workspace is None else self.workspace.current
        self._predictions[(version, tuple(present))] = probability
        while len(self._predictions) > PREDICTIONS_KEPT:
            self._predictions.popitem(last=False)
        self.show_corrections()

    def show_corrections(self) -> None:
        """Add (or update) the corrections layer: the saved strokes of a newly opened case,
        the layer's own strokes (saved) when it already shows this case."""
        if self._geometry is None:
            show_error("no case yet: run the segmentation first")
            return
        shape = self._geometry.shape
        layer = self._find_layer()
        if layer is not None and self._layer_folder == self.folder and layer.data.shape == shape:
            self._watch(layer)
            self.save()
            return
        if self.workspace is not None:
            data = self.workspace.corrections
        else:
            data = np.zeros(shape, dtype=np.uint8)
        self._layer_folder = self.folder
        self._watch(show_layer(self.viewer, *corrections_layer(data, self._geometry)))
        self._timer.stop()

    def save(self) -> bool:
        """Write the layer's strokes to the workspace now (making it at the first stroke);
        False when they could not be saved (a notification says why)."""
        self._timer.stop()
        layer = self.layer
        if layer is None or self._geometry is None or self._layer_folder != self.folder:
            return True
        data = np.asarray(layer.data)
        try:
            if self.workspace is None:
                if not data.any():
                    return True
                self.workspace = Workspace(
                    self.folder, self._base_model, self._geometry.shape, self._case_name
                )
                self.panel.show_versions(self.workspace)
            self.workspace.set_corrections(data)
        except (MetsegError, OSError) as error:
            show_error(f"corrections not saved: {error}")
            return False
        return True

    def finetune(self) -> Any:
        """Save the strokes, then fine-tune and segment again in a worker (None: not started)."""
        workbench = self.workbench
        if workbench.case is None or self.layer is None:
            show_error("no case yet: run the segmentation first")
            return None
        if workbench.worker is not None:
            show_info("MetSeg is busy: wait for the running work or cancel it")
            return None
        if not self.save():
            return None
        if self.workspace is None or not np.asarray(self.layer.data).any():
            show_error(
                "no corrections: paint 1 (lesion) or 2 (not lesion) in the corrections layer, "
                "or accept / reject lesions in the lesion table"
            )
            return None
        try:
            config = self.panel.config(workbench.segment_panel.device())
        except ValueError as error:
            show_error(str(error))
            return None
        before = self._lesion_map()
        return workbench._start(
            "fine-tuning",
            self.panel,
            f"fine-tuning {self.workspace.current} ({config.mode}, {config.iterations} steps)",
            lambda round_: self._show_round(round_, before),
            finetune_and_segment,
            self.workspace,
            workbench.case,
            workbench.present,
            config,
            workbench.segment_panel.device(),
        )

    def undo(self) -> Any:
        """Go back to the parent version and restore its prediction."""
        return self._switch("undo")

    def redo(self) -> Any:
        """Go forward to the version the last undo left and restore its prediction."""
        return self._switch("redo")

    def export_version(self, path: str | os.PathLike) -> Path:
        """Write the current version's model to ``path`` (``.safetensors`` file or folder)."""
        if self.workspace is None:
            raise MetsegError("no workspace yet: correct and fine-tune first")
        return self.workspace.export(self.workspace.current, path)

    def set_root(self, root: str | os.PathLike) -> None:
        """Keep workspaces under ``root`` from now on; the open case moves there."""
        self.save()
        self.root = Path(root)
        self.panel.show_root(self.root)
        workbench = self.workbench
        if workbench.case is not None:
            self.folder = None
            self.open_case(workbench.case, self._images_digest, self._base_model)
            self.show_corrections()

    def _switch(self, direction: str) -> Any:
        workbench = self.workbench
        if self.workspace is None or workbench.case is None:
            show_error("no model versions yet: correct and fine-tune first")
            return None
        if workbench.worker is not None:
            show_info("MetSeg is busy: wait for the running work or cancel it")
            return None
        step, revert = (
            (self.workspace.undo, self.workspace.redo)
            if direction == "undo"
            else (self.workspace.redo, self.workspace.undo)
        )
        try:
            version = step()
        except MetsegError as error:
            show_error(str(error))
            return None
        self.panel.show_versions(self.workspace)
        before = self._lesion_map()
        key = (version, tuple(workbench.present))
        if key in self._predictions:
            self._show_version(version, self._predictions[key], before)
            return None
        path = self.active_model(self._base_model)
        device = workbench.segment_panel.device()
        worker = workbench._start(
            direction,
            self.panel,
            f"{direction}: segmenting with {version}",
            lambda probability: self._show_version(version, probability, before),
            run_segmentation,
            lambda: workbench._model(path, device),
            workbench.case,
            workbench.present,
            device,
        )
        if worker is None:
            self._revert(revert)
        else:
            worker.errored.connect(lambda error: self._revert(revert))
        return worker

    def _revert(self, step: Callable[[], str]) -> None:
        step()
        self.panel.show_versions(self.workspace)

    def _show_round(self, round_: Round, before: np.ndarray | None) -> None:
        result = round_.result
        self._show_version(round_.version, round_.probability, before)
        self.panel.status_label.setText(
            f"{round_.version}: {result.mode}, {result.seconds:.1f} s, corrected-voxel loss "
            f"{result.corrected_loss_before:.3f} \N{RIGHTWARDS ARROW} "
            f"{result.corrected_loss_after:.3f}"
        )

    def _show_version(self, version: str, probability: np.ndarray, before: np.ndarray | None):
        workbench = self.workbench
        workbench._show_result(workbench.case, workbench.present, probability)
        self.panel.show_versions(self.workspace)
        after = self._lesion_map()
        if before is None or after is None or before.shape != after.shape:
            return
        self.changes = lesion_changes(before, after)
        message = f"model {version}: {self.changes.summary()}"
        self.panel.changes_label.setText(message)
        self.panel.status_label.setText(f"model {version}")
        if CHANGES_LAYER in self.viewer.layers:
            self.viewer.layers.remove(CHANGES_LAYER)
        if self.changes.appeared or self.changes.disappeared:
            data, kwargs, _ = changes_layer(before, after, self.changes, self._geometry)
            self.viewer.add_points(data, **kwargs)
        show_info(message)

    def _lesion_map(self) -> np.ndarray | None:
        if LESIONS_LAYER not in self.viewer.layers:
            return None
        return np.array(self.viewer.layers[LESIONS_LAYER].data, copy=True)

    def _find_layer(self) -> napari.layers.Labels | None:
        if CORRECTIONS_LAYER in self.viewer.layers:
            layer = self.viewer.layers[CORRECTIONS_LAYER]
            if layer.metadata.get("role") == "corrections":
                return layer
        return None

    def _watch(self, layer: napari.layers.Labels) -> None:
        """Autosave ``layer``'s strokes (paint: brush, fill, accept / reject; data: replaced;
        set_data: also an undo or redo, which sends nothing else, among the redraws of every
        slice change, which the workspace finds unchanged and does not write)."""
        if layer is self.layer:
            return
        _unhooker(self._hooked)()
        timer = self._timer

        def schedule(event=None) -> None:
            timer.start()

        for emitter in (layer.events.paint, layer.events.data, layer.events.set_data):
            emitter.connect(schedule)
            self._hooked.append((emitter, schedule))
        self.layer = layer
        layer.selected_label = 1

    def _ask_and_export(self) -> None:
        if self.workspace is None:
            show_error("no model versions yet: correct and fine-tune first")
            return
        suggested = f"{self._case_name}-{self.workspace.current}.safetensors"
        path, _ = QFileDialog.getSaveFileName(
            self.panel, "Export the model", suggested, "Model (*.safetensors)"
        )
        if not path:
            return
        try:
            written = self.export_version(path)
        except (MetsegError, OSError) as error:
            show_error(f"could not export the model: {error}")
            return
        show_info(f"wrote {written}")

    def _ask_root(self) -> None:
        path = QFileDialog.getExistingDirectory(self.panel, "Workspace folder", str(self.root))
        if path:
            self.set_root(path)


def _unhooker(hooked: list[Any]) -> Callable[[], None]:
    """A slot disconnecting the layer events in ``hooked`` (it must not hold the loop)."""

    def unhook() -> None:
        while hooked:
            emitter, callback = hooked.pop()
            emitter.disconnect(callback)

    return unhook
