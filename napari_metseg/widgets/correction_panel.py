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
previous version active.

A case's workspace is ``<root>/case-<hash>``, the hash of its grid (shape and
affine) and base model; the root is :data:`WORKSPACES_ENV` if set, else a
``napari-metseg/workspaces`` folder in the user's data folder, and the panel
can change it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QStandardPaths, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)
from scipy import ndimage

from napari_metseg.case import Case, Geometry
from napari_metseg.correction import FinetuneConfig, FinetuneResult, Workspace
from napari_metseg.correction.workspace import BASE, STATE
from napari_metseg.errors import MetsegError
from napari_metseg.model.files import default_model_path
from napari_metseg.widgets.layers import (
    CORRECTIONS_LAYER,
    LESIONS_LAYER,
    corrections_layer,
    layer_metadata,
    show_layer,
)
from napari_metseg.widgets.run_controls import RunControls
from napari_metseg.widgets.workers import run_segmentation

if TYPE_CHECKING:
    import napari.layers

    from napari_metseg.widgets.workbench import Workbench

logger = logging.getLogger(__name__)

#: Environment variable naming the folder that holds the per-case workspaces.
WORKSPACES_ENV = "METSEG_WORKSPACES"
#: Milliseconds after the last change to the corrections layer before it is saved.
AUTOSAVE_MS = 500
#: Predictions (one per version and presence vector) kept in memory for undo / redo.
PREDICTIONS_KEPT = 3
#: The Points layer marking lesions that appeared (green) or disappeared (red).
CHANGES_LAYER = "lesion changes"
CHANGE_COLORS = {"new": "lime", "removed": "red"}


def default_workspace_root() -> Path:
    """``$METSEG_WORKSPACES``, else ``napari-metseg/workspaces`` in the user's data folder."""
    configured = os.environ.get(WORKSPACES_ENV)
    if configured:
        return Path(configured)
    location = QStandardPaths.StandardLocation.GenericDataLocation
    data = QStandardPaths.writableLocation(location) or str(Path.home())
    return Path(data) / "napari-metseg" / "workspaces"


def workspace_folder(root: str | os.PathLike, geometry: Geometry, base_model: Path | None) -> Path:
    """The workspace folder of a case: ``root/case-<hash of grid and base model>``.

    The same images with the same base model find the same folder again (the
    corrections and versions come back); another grid or model gets its own.
    """
    base = default_model_path() if base_model is None else Path(base_model).resolve()
    identity = {
        "shape": [int(s) for s in geometry.shape],
        "affine": np.round(np.asarray(geometry.affine, dtype=np.float64), 4).tolist(),
        "base_model": str(base),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return Path(root) / f"case-{digest[:12]}"


@dataclass(frozen=True)
class LesionChanges:
    """Lesions of the new map overlapping none of the old (``appeared``, new ids) and lesions
    of the old map overlapping none of the new (``disappeared``, old ids)."""

    appeared: tuple[int, ...]
    disappeared: tuple[int, ...]

    def summary(self) -> str:
        new, gone = len(self.appeared), len(self.disappeared)
        return f"{new} new lesion{'s' * (new != 1)}, {gone} removed"


def lesion_changes(before: np.ndarray, after: np.ndarray) -> LesionChanges:
    """Compare two lesion label maps (0 background) of one grid by overlap."""
    if before.shape != after.shape:
        raise ValueError(f"lesion maps of shapes {before.shape} and {after.shape} do not compare")
    overlap = (before > 0) & (after > 0)
    appeared = np.setdiff1d(np.unique(after[after > 0]), np.unique(after[overlap]))
    disappeared = np.setdiff1d(np.unique(before[before > 0]), np.unique(before[overlap]))
    return LesionChanges(tuple(map(int, appeared)), tuple(map(int, disappeared)))


def changes_layer(
    before: np.ndarray, after: np.ndarray, changes: LesionChanges, geometry: Geometry
) -> tuple[np.ndarray, dict[str, Any], str]:
    """A Points layer at the centre (voxel indices) of each appeared / disappeared lesion."""
    centres, kinds, labels = [], [], []
    for kind, volume, ids in (
        ("new", after, changes.appeared),
        ("removed", before, changes.disappeared),
    ):
        if ids:
            centres.extend(ndimage.center_of_mass(volume > 0, volume, list(ids)))
            kinds.extend([kind] * len(ids))
            labels.extend(ids)
    kwargs = {
        "name": CHANGES_LAYER,
        "affine": geometry.napari_affine,
        "metadata": layer_metadata(geometry, "lesion changes"),
        "features": {"change": kinds, "lesion": labels},
        "face_color": "transparent",
        "border_color": [CHANGE_COLORS[kind] for kind in kinds],
        "border_width": 0.2,
        "symbol": "ring",
        "size": 6,
        "out_of_slice_display": True,
    }
    return np.asarray(centres, dtype=np.float64).reshape(-1, 3), kwargs, "points"


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


class CorrectionPanel(RunControls, QGroupBox):
    """Fine-tune settings, versions and progress; emits requests the correction loop handles."""

    finetune_requested = Signal()
    cancel_requested = Signal()
    undo_requested = Signal()
    redo_requested = Signal()
    export_requested = Signal()
    layer_requested = Signal()
    root_requested = Signal()

    def __init__(self) -> None:
        super().__init__("Correct")
        self.help_label = QLabel(
            "Paint 1 (lesion, yellow) on missed lesions and 2 (not lesion, magenta) on false "
            "ones in the corrections layer, or accept (A) / reject (R) lesions in the lesion "
            "table; then fine-tune."
        )
        self.help_label.setWordWrap(True)
        self.root_label = QLabel()
        self.root_label.setWordWrap(True)
        self.root_button = QPushButton("Folder...")
        self.root_button.setToolTip("folder holding the per-case workspaces")
        self.layer_button = QPushButton("Corrections layer")
        self.layer_button.setToolTip("add (or restore) the corrections layer of the case")
        self.mode_combo = QComboBox()
        self.mode_combo.addItem("auto (full on CUDA, fast elsewhere)", "auto")
        self.mode_combo.addItem("fast (head only, CPU friendly)", "fast")
        self.mode_combo.addItem("full (all weights, for a GPU)", "full")
        self.iterations = QSpinBox()
        self.iterations.setRange(1, 100_000)
        self.iterations.setValue(FinetuneConfig.iterations)
        self.iterations.setToolTip("optimizer steps of one fine-tuning round")
        self.finetune_button = QPushButton("Fine-tune")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.undo_button = QPushButton("Undo")
        self.redo_button = QPushButton("Redo")
        self.export_button = QPushButton("Export model...")
        self.action_buttons = (
            self.finetune_button,
            self.undo_button,
            self.redo_button,
            self.export_button,
        )
        self.progress_bar = QProgressBar()
        self.status_label = QLabel("ready")
        self.status_label.setWordWrap(True)
        self.version_label = QLabel("model: base")
        self.changes_label = QLabel("")
        self.changes_label.setWordWrap(True)
        self._versions = (False, False, False)
        for button, signal in (
            (self.finetune_button, self.finetune_requested),
            (self.cancel_button, self.cancel_requested),
            (self.undo_button, self.undo_requested),
            (self.redo_button, self.redo_requested),
            (self.export_button, self.export_requested),
            (self.layer_button, self.layer_requested),
            (self.root_button, self.root_requested),
        ):
            button.clicked.connect(signal)

        root_row = QHBoxLayout()
        root_row.addWidget(self.root_label, 1)
        root_row.addWidget(self.root_button)
        run_row = QHBoxLayout()
        run_row.addWidget(self.finetune_button)
        run_row.addWidget(self.cancel_button)
        version_row = QHBoxLayout()
        version_row.addWidget(self.undo_button)
        version_row.addWidget(self.redo_button)
        version_row.addWidget(self.export_button)
        form = QFormLayout()
        form.addRow("workspaces", root_row)
        form.addRow(self.layer_button)
        form.addRow("mode", self.mode_combo)
        form.addRow("iterations", self.iterations)
        form.addRow(run_row)
        form.addRow(self.progress_bar)
        form.addRow(self.status_label)
        form.addRow(self.version_label)
        form.addRow(version_row)
        form.addRow(self.changes_label)
        layout = QVBoxLayout(self)
        layout.addWidget(self.help_label)
        layout.addLayout(form)
        self.show_versions(None)

    def config(self, device: str) -> FinetuneConfig:
        """The settings of the next round, on ``device`` (the segment panel's choice)."""
        return FinetuneConfig(
            mode=self.mode_combo.currentData(), iterations=self.iterations.value(), device=device
        )

    def show_root(self, root: Path) -> None:
        self.root_label.setText(str(root))
        self.root_label.setToolTip(str(root))

    def show_versions(self, workspace: Workspace | None) -> None:
        """Version label and which of undo / redo / export apply."""
        if workspace is None:
            self.version_label.setText("model: base (no corrections saved yet)")
            self._versions = (False, False, False)
        else:
            count = len(workspace.versions) - 1
            self.version_label.setText(
                f"model: {workspace.current} ({count} fine-tuned version{'s' * (count != 1)})"
            )
            self._versions = (workspace.can_undo, workspace.can_redo, True)
        self._apply_versions()

    def set_running(self, running: bool) -> None:
        super().set_running(running)
        if not running:
            self._apply_versions()

    def _apply_versions(self) -> None:
        if self.cancel_button.isEnabled():
            return
        for button, enabled in zip(
            (self.undo_button, self.redo_button, self.export_button), self._versions, strict=True
        ):
            button.setEnabled(enabled)


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

    def open_case(self, case: Case, base_model: Path | None) -> None:
        """Find the workspace of ``case`` under the root (opened if it exists, else made
        when the first stroke is saved)."""
        folder = workspace_folder(self.root, case.geometry, base_model)
        if folder == self.folder:
            return
        self.save()
        self.folder, self.workspace = folder, None
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
            self.open_case(workbench.case, self._base_model)
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
        """Autosave ``layer``'s strokes (paint: brush, fill, accept / reject; data: replaced)."""
        if layer is self.layer:
            return
        _unhooker(self._hooked)()
        timer = self._timer

        def schedule(event=None) -> None:
            timer.start()

        for emitter in (layer.events.paint, layer.events.data):
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
