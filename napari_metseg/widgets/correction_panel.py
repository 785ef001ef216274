"""The Correct tab: fine-tune settings, the model in use and the saved versions, progress.

The panel only shows choices and state; :mod:`~napari_metseg.widgets.correction_loop`
acts on its signals. It always names the model runs use: the base model when a
case is opened, or the saved version the user picked from the list (or made,
undid, redid). Workspaces live under :data:`~napari_metseg.correction.workspace.WORKSPACES_ENV`
if set, else ``napari-metseg/workspaces`` in the user's data folder; the panel
can change the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from qtpy.QtCore import QStandardPaths, Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from napari_metseg.correction import FinetuneConfig, Workspace
from napari_metseg.correction.config import MODE_DEFAULTS
from napari_metseg.correction.workspace import BASE, WORKSPACES_ENV
from napari_metseg.widgets.path_label import PathLabel
from napari_metseg.widgets.run_controls import RunControls


def default_workspace_root() -> Path:
    """``$METSEG_WORKSPACES``, else ``napari-metseg/workspaces`` in the user's data folder."""
    configured = os.environ.get(WORKSPACES_ENV)
    if configured:
        return Path(configured)
    location = QStandardPaths.StandardLocation.GenericDataLocation
    data = QStandardPaths.writableLocation(location) or str(Path.home())
    return Path(data) / "napari-metseg" / "workspaces"


class CorrectionPanel(RunControls, QGroupBox):
    """Fine-tune settings, versions and progress; emits requests the correction loop handles."""

    finetune_requested = Signal()
    undo_requested = Signal()
    redo_requested = Signal()
    export_requested = Signal()
    layer_requested = Signal()
    root_requested = Signal()
    #: The user picked a version (``"base"`` or ``"v001"``...) in the list.
    version_chosen = Signal(str)
    owner = "correct"

    def __init__(self) -> None:
        super().__init__("Correct")
        self.help_label = QLabel(
            "Paint 1 (lesion, yellow) on missed lesions and 2 (not lesion, magenta) on false "
            "ones in the corrections layer, or accept (A) / reject (R) lesions in the lesion "
            "table; then fine-tune."
        )
        self.help_label.setWordWrap(True)
        self.root_label = PathLabel()
        self.root_button = QPushButton("Folder...")
        self.root_button.setToolTip("folder holding the per-case workspaces")
        self.layer_button = QPushButton("Corrections layer")
        self.layer_button.setToolTip("add (or restore) the corrections layer of the case")
        self.mode_combo = QComboBox()
        self.mode_combo.addItem("auto (full on CUDA, fast elsewhere)", "auto")
        self.mode_combo.addItem("fast (decoder tail only, CPU friendly)", "fast")
        self.mode_combo.addItem("full (all weights, for a GPU)", "full")
        self.iterations = QSpinBox()
        self.iterations.setRange(0, 100_000)
        self.iterations.setSpecialValueText("mode's default")
        self.iterations.setValue(0)
        self.iterations.setToolTip(
            "most optimizer steps of one fine-tuning round (fast mode: "
            f"{MODE_DEFAULTS['fast']['iterations']:.0f}, full mode: "
            f"{MODE_DEFAULTS['full']['iterations']:.0f}); it stops sooner once every "
            "stroke is answered"
        )
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
        self.version_label = QLabel()
        self.version_label.setWordWrap(True)
        self.version_combo = QComboBox()
        self.version_combo.setToolTip(
            "the model runs use: the base model, or a version saved by fine-tuning this case"
        )
        self.version_combo.activated.connect(
            lambda index: self.version_chosen.emit(self.version_combo.itemData(index))
        )
        self.changes_label = QLabel("")
        self.changes_label.setWordWrap(True)
        self._versions = (False, False, False)
        for button, signal in (
            (self.finetune_button, self.finetune_requested),
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
        form.addRow("use model", self.version_combo)
        form.addRow(self.version_label)
        form.addRow(version_row)
        form.addRow(self.changes_label)
        layout = QVBoxLayout(self)
        layout.addWidget(self.help_label)
        layout.addLayout(form)
        self.show_versions(None, "")

    def config(self, device: str) -> FinetuneConfig:
        """The settings of the next round, on ``device`` (the segment panel's choice)."""
        return FinetuneConfig(
            mode=self.mode_combo.currentData(),
            iterations=self.iterations.value() or None,
            device=device,
        )

    def show_root(self, root: Path) -> None:
        self.root_label.set_path(str(root))

    def show_versions(self, workspace: Workspace | None, base_name: str) -> None:
        """Name the model in use (``base_name``: the base model's) and list the versions."""
        self.version_combo.blockSignals(True)
        self.version_combo.clear()
        self.version_combo.addItem(f"base ({base_name})" if base_name else "base", BASE)
        if workspace is None:
            self.version_label.setText(f"model in use: base ({base_name}); no versions saved yet")
            self._versions = (False, False, False)
        else:
            for version in workspace.versions[1:]:
                info = workspace.info(version)
                marks = info.get("n_lesion_marks", 0) + info.get("n_not_lesion_marks", 0)
                created = str(info.get("created", ""))[:16].replace("T", " ")
                self.version_combo.addItem(f"{version} ({marks} marked voxels)", version)
                self.version_combo.setItemData(
                    self.version_combo.count() - 1,
                    f"{version}: fine-tuned from {info.get('parent')} on {created}",
                    Qt.ItemDataRole.ToolTipRole,
                )
            self.version_combo.setCurrentIndex(self.version_combo.findData(workspace.current))
            count = len(workspace.versions) - 1
            name = (
                "base" if workspace.current == BASE else f"fine-tuned version {workspace.current}"
            )
            self.version_label.setText(
                f"model in use: {name}; {count} saved version{'s' * (count != 1)} "
                "(pick one above to use it)"
            )
            self._versions = (workspace.can_undo, workspace.can_redo, True)
        self.version_combo.blockSignals(False)
        self._apply_versions()

    def set_running(self, running: bool, own: bool = True) -> None:
        super().set_running(running, own)
        self.version_combo.setEnabled(not running)
        if not running:
            self._apply_versions()

    def _apply_versions(self) -> None:
        if self.cancel_button.isEnabled():
            return
        for button, enabled in zip(
            (self.undo_button, self.redo_button, self.export_button), self._versions, strict=True
        ):
            button.setEnabled(enabled)
