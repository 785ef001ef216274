"""The Correct tab: fine-tune settings, versions, progress; where workspaces live; what changed.

The panel only shows choices and state; :mod:`~napari_metseg.widgets.correction_loop`
acts on its signals. A case's workspace is ``<root>/case-<hash>``, the hash of
its grid (shape and affine), its images and base model, so the same images with
the same model find their strokes and versions again; the root is :data:`WORKSPACES_ENV`
if set, else ``napari-metseg/workspaces`` in the user's data folder, and the
panel can change it. :func:`lesion_changes` compares the lesion maps before and
after a round by overlap; :func:`changes_layer` marks the differences.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QStandardPaths, Signal
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
from scipy import ndimage

from napari_metseg.case import Geometry
from napari_metseg.correction import FinetuneConfig, Workspace
from napari_metseg.model.files import default_model_path
from napari_metseg.widgets.layers import layer_metadata
from napari_metseg.widgets.run_controls import RunControls

#: Environment variable naming the folder that holds the per-case workspaces.
WORKSPACES_ENV = "METSEG_WORKSPACES"
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


def workspace_folder(
    root: str | os.PathLike, geometry: Geometry, images_digest: str, base_model: Path | None
) -> Path:
    """The workspace folder of a case: ``root/case-<hash of grid, images and base model>``.

    ``images_digest`` is the :func:`~napari_metseg.case.fingerprint` of every image
    assigned to a sequence, switched on or not, so switching one off keeps the
    workspace. The same images with the same base model find the same folder
    again (the corrections and versions come back); other images, even on an
    identical grid, or another model get their own.
    """
    base = default_model_path() if base_model is None else Path(base_model).resolve()
    identity = {
        "images": images_digest,
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
