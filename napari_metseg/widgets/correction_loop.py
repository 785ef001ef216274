"""Active correction in the workbench: the corrections layer, fine-tuning rounds, versions.

The ``corrections`` Labels layer (uint8 on the reference grid: 1 lesion, 2 not
lesion, 0 not looked at) is painted by hand or filled from the lesion table
(accept / reject a lesion). Its strokes autosave to the case's
:class:`~napari_metseg.correction.Workspace` a moment after each change
(:data:`AUTOSAVE_MS`, so one stroke is one write), and come back when the
same case is segmented again, in this session or a later one.

The model in use is explicit: a newly opened case runs with the base model
(the workspace is switched back to it, its versions stay listed and Redo
returns to the last one); the user picks a saved version in the Correct tab.
Fine-tune runs :meth:`Workspace.finetune` in a worker (the round returns its
own whole-case prediction, checked by the trust region), shows it through the run state and
reports the lesions that appeared or disappeared
(:func:`~napari_metseg.importance.compare_lesions` of the lesion maps before
and after), ringed in the ``lesion changes`` layer. A refused, failed or
cancelled round or switch leaves the previous version active and the strokes
saved.

A run of the base model, when the next round would be fast, keeps fast mode's
cache of the case (:func:`~napari_metseg.correction.cache.segment_keeping_context`,
asked for by :meth:`CorrectionLoop.wants_context`); the first round hands it to
the workspace instead of computing it again. A new run drops it, and what the
workspace kept, before it starts (0.6 GB on the sample case).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QFileDialog

from napari_metseg.case import Case
from napari_metseg.correction import Workspace
from napari_metseg.correction.cache import CaseContext
from napari_metseg.correction.finetune import round_mode
from napari_metseg.correction.workspace import BASE, STATE, workspace_folder
from napari_metseg.devices import resolve_device
from napari_metseg.errors import MetsegError
from napari_metseg.importance import LesionChanges, compare_lesions
from napari_metseg.layerdata import CHANGES_LAYER, changes_layer, corrections_layer
from napari_metseg.widgets.correction_panel import CorrectionPanel, default_workspace_root
from napari_metseg.widgets.layers import find_layer, same_layer, show_layer
from napari_metseg.widgets.run_state import RunState
from napari_metseg.widgets.workers import Round, finetune_round, run_segmentation

if TYPE_CHECKING:
    import napari.layers

#: Milliseconds after the last change to the corrections layer before it is saved.
AUTOSAVE_MS = 500
#: Predictions (one per version and presence vector) kept in memory for undo / redo.
PREDICTIONS_KEPT = 3
NOTHING_MARKED = (
    "no corrections: paint 1 (lesion) or 2 (not lesion) in the corrections layer, "
    "or accept / reject lesions in the lesion table"
)


class CorrectionLoop(QObject):
    """The corrections layer, workspace, fine-tuning rounds and versions of the run state."""

    def __init__(self, state: RunState, panel: CorrectionPanel) -> None:
        super().__init__(panel)
        self.state = state
        self.viewer = state.viewer
        self.panel = panel
        self.root = default_workspace_root()
        self.folder: Path | None = None
        self.workspace: Workspace | None = None
        self.layer: napari.layers.Labels | None = None
        self.changes: LesionChanges | None = None
        self._images_digest = ""
        self._case_name = "case"
        self._layer_folder: Path | None = None
        self._predictions: OrderedDict[tuple[str, tuple[str, ...]], np.ndarray] = OrderedDict()
        self._context: tuple[Case, CaseContext] | None = None
        self._hooked: list[Any] = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(AUTOSAVE_MS)
        self._timer.timeout.connect(self.save)
        self.destroyed.connect(_unhooker(self._hooked))
        panel.observe_work(state)
        panel.show_root(self.root)
        panel.finetune_requested.connect(self.finetune)
        panel.undo_requested.connect(self.undo)
        panel.redo_requested.connect(self.redo)
        panel.version_chosen.connect(self.use_version)
        panel.export_requested.connect(self._ask_and_export)
        panel.layer_requested.connect(self.show_corrections)
        panel.root_requested.connect(self._ask_root)
        state.case_opened.connect(self.open_case)
        state.result_changed.connect(self._on_result)

    def open_case(self, case: Case, images_digest: str) -> None:
        """Find the workspace of ``case`` under the root (opened if it exists, else made
        when the first stroke is saved) and use the base model for it; ``images_digest``:
        the fingerprint of every assigned image (see :func:`workspace_folder`). What the
        last run and round kept for the next round is dropped: it belongs to the old
        :class:`~napari_metseg.case.Case` object (and frees memory before the run)."""
        self._context = None
        if self.workspace is not None:
            self.workspace.drop_inputs()
        folder = workspace_folder(self.root, case.geometry, images_digest, self.state.base_model)
        if folder == self.folder:
            return
        self.save()
        self.state.set_marks(None)  # the strokes of the old case
        self.folder, self.workspace, self._images_digest = folder, None, images_digest
        self._case_name = Path(next(iter(case.sources.values()), "") or case.name).name
        self._predictions.clear()
        if (folder / STATE).exists():
            try:
                self.workspace = Workspace(folder, shape=case.shape)
                if self.workspace.current != BASE:
                    last = self.workspace.current
                    self.workspace.select(BASE)
                    show_info(
                        f"opened with the base model; the case's saved versions (last: {last}) "
                        "are listed in the Correct tab"
                    )
            except (MetsegError, OSError) as error:
                show_error(f"could not open the case's workspace: {error}")
                self.workspace = None
        self.state.set_version(BASE, None)
        self._show_versions()

    def wants_context(self) -> bool:
        """Whether a run should keep fast mode's cache: it runs the base model and the next
        round would be fast on the chosen device."""
        mode = self.panel.mode_combo.currentData()
        device = resolve_device(self.state.device)
        return self.state.version == BASE and round_mode(mode, device) == "fast"

    def keep_context(self, case: Case, context: CaseContext | None) -> None:
        """Hold the cache a run of ``case`` kept (None: it kept none) for the next round."""
        self._context = None if context is None else (case, context)

    def save(self) -> bool:
        """Apply the layer's strokes to the lesions and write them to the workspace now
        (making it at the first stroke); False when they could not be saved (a
        notification says why; the workspace keeps the last good strokes)."""
        self._timer.stop()
        layer = self.layer
        geometry = self.state.geometry
        if layer is None or geometry is None or self._layer_folder != self.folder:
            return True
        data = np.asarray(layer.data)
        self.state.set_marks(data)
        try:
            if self.workspace is None:
                if not data.any():
                    return True
                self.workspace = Workspace(
                    self.folder, self.state.base_model, geometry.shape, self._case_name
                )
                self._show_versions()
            self.workspace.set_corrections(data)
        except (MetsegError, OSError) as error:
            show_error(f"corrections not saved: {error}")
            return False
        return True

    def show_corrections(self) -> None:
        """Add (or update) the corrections layer: the saved strokes of a newly opened case,
        the layer's own strokes (saved) when it already shows this case."""
        geometry = self.state.geometry
        if geometry is None:
            show_error("no case yet: run the segmentation first")
            return
        layer = find_layer(self.viewer, "corrections")
        if layer is not None and self._layer_folder == self.folder:
            self._watch(layer)
            self.save()
            return
        data = np.zeros(geometry.shape, np.uint8)
        if self.workspace is not None:
            data = self.workspace.corrections
        self._layer_folder = self.folder
        self._watch(show_layer(self.viewer, *corrections_layer(data, geometry)))
        self._timer.stop()
        self.state.set_marks(data)

    def finetune(self) -> Any:
        """Save the strokes, then fine-tune and segment again in the worker (None: not started)."""
        state = self.state
        if state.case is None or self.layer is None:
            show_error("no case yet: run the segmentation first")
            return None
        if state.busy:
            show_info("MetSeg is busy: wait for the running work or cancel it")
            return None
        if not self.save():
            return None
        if self.workspace is None or not self.workspace.corrections.any():
            show_error(NOTHING_MARKED)
            return None
        try:
            config = self.panel.config(state.device)
        except ValueError as error:
            show_error(str(error))
            return None
        before = state.labels
        held = self._context
        worker = state.start(
            self.panel.owner,
            "fine-tuning",
            f"fine-tuning {self.workspace.current} ({config.mode} mode)",
            lambda round_: self._show_round(round_, before),
            finetune_round,
            self.workspace,
            state.case,
            state.present,
            config,
            self._predictions.get((BASE, tuple(state.present))),
            held[1] if held is not None and held[0] is state.case else None,
        )
        if worker is not None:
            self._context = None  # the workspace keeps it from now on
        return worker

    def undo(self) -> Any:
        """Go back to the parent version and restore its prediction."""
        return self._switch("undo", lambda space: space.undo())

    def redo(self) -> Any:
        """Go forward to the version the last undo left and restore its prediction."""
        return self._switch("redo", lambda space: space.redo())

    def use_version(self, version: str) -> Any:
        """Make a saved version (or ``"base"``) the model in use and show its prediction."""
        if self.workspace is not None and version == self.workspace.current:
            return None
        return self._switch(f"switch to {version}", lambda space: space.select(version))

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
        if self.state.case is not None:
            self.folder = None
            self.open_case(self.state.case, self._images_digest)
            self.show_corrections()

    def _switch(self, what: str, step: Callable[[Workspace], str]) -> Any:
        state = self.state
        if self.workspace is None or state.case is None:
            show_error("no model versions yet: correct and fine-tune first")
            return None
        if state.busy:
            show_info("MetSeg is busy: wait for the running work or cancel it")
            return None
        previous = self.workspace.current
        try:
            version = step(self.workspace)
        except MetsegError as error:
            show_error(str(error))
            return None
        before, key = state.labels, (version, state.present)
        if key in self._predictions:
            self._show_version(version, self._predictions[key], before)
            return None
        path = self.workspace.model_path(version) if version != BASE else state.base_model
        worker = state.start(
            self.panel.owner,
            what,
            f"{what}: segmenting with {version}",
            lambda result: self._show_version(version, result[0], before),
            run_segmentation,
            lambda: state.model(path, state.device),
            state.case,
            state.present,
            state.device,
            False,
        )
        if worker is None:
            self._back_to(previous)
        else:
            worker.errored.connect(lambda error: self._back_to(previous))
        return worker

    def _back_to(self, version: str) -> None:
        self.workspace.select(version)
        self._show_versions()

    def _show_round(self, round_: Round, before: np.ndarray | None) -> None:
        result = round_.result
        self._show_version(round_.version, round_.probability, before, result.strokes.summary())
        loss = (
            f"stroke loss {result.corrected_loss_before:.3f} \N{RIGHTWARDS ARROW} "
            f"{result.corrected_loss_after:.3f}"
        )
        self.panel.status_label.setText(f"{round_.version}: {result.mode}, {result.seconds:.1f} s")
        self.panel.status_label.setToolTip(loss)

    def _show_version(
        self, version: str, probability: np.ndarray, before: np.ndarray | None, note: str = ""
    ):
        state = self.state
        self.changes = None
        path = None if version == BASE else self.workspace.model_path(version)
        state.set_version(version, path)
        state.show_result(state.case, state.present, probability)
        self._show_versions()
        after = state.labels
        if before is None or after is None or before.shape != after.shape:
            return
        self.changes = compare_lesions(before, after)
        message = "; ".join(
            part for part in (f"model {version}: {self.changes.summary()}", note) if part
        )
        self.panel.changes_label.setText(message.replace("; ", "\n"))
        self.panel.status_label.setText(f"model {version}")
        if CHANGES_LAYER in self.viewer.layers:
            self.viewer.layers.remove(CHANGES_LAYER)
        if self.changes.lost or self.changes.gained:
            data, kwargs, _ = changes_layer(before, after, self.changes, state.geometry)
            self.viewer.add_points(data, **kwargs)
        show_info(message)

    def _on_result(self) -> None:
        """Keep the prediction of the version in use and show the corrections layer."""
        state = self.state
        self._predictions[(state.version, state.present)] = state.probability
        while len(self._predictions) > PREDICTIONS_KEPT:
            self._predictions.popitem(last=False)
        self.show_corrections()

    def _show_versions(self) -> None:
        base = self.state.base_model
        self.panel.show_versions(self.workspace, "bundled default" if base is None else base.name)

    def _watch(self, layer: napari.layers.Labels) -> None:
        """Autosave ``layer``'s strokes (paint: brush, fill, accept / reject; data: replaced;
        set_data: also an undo or redo, which sends nothing else, among the redraws of every
        slice change, which the workspace finds unchanged and does not write)."""
        if same_layer(layer, self.layer):
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
