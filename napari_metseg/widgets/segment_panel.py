"""Model, device, run / cancel, progress, and the lesion threshold controls.

The panel only holds choices and shows state; the workbench acts on its
signals and the run state reports progress (:meth:`RunControls.observe_work`). Threshold and minimum volume re-derive lesions from the stored
probability, without running the network again.
"""

from __future__ import annotations

from pathlib import Path

import torch
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)
from superqt import QLabeledDoubleSlider

from napari_metseg.devices import DEVICES, device_available, resolve_device
from napari_metseg.thresholds import CANDIDATE_THRESHOLD
from napari_metseg.widgets.run_controls import RunControls

BUNDLED = "bundled default"


class SegmentPanel(RunControls, QGroupBox):
    """Choices for a run and its progress; emits requests the workbench handles."""

    run_requested = Signal()
    model_changed = Signal()
    lesion_settings_changed = Signal()
    owner = "segment"

    def __init__(self) -> None:
        super().__init__("Segment")
        self.model_combo = QComboBox()
        self.model_combo.addItem(BUNDLED, None)
        self.model_combo.setToolTip("the bundled model, or a model file you chose")
        self.model_combo.currentIndexChanged.connect(self.model_changed)
        self.browse_button = QPushButton("Model file...")
        self.browse_button.clicked.connect(self._browse_model)
        self.device_combo = QComboBox()
        self._fill_devices()
        self.run_button = QPushButton("Run")
        self.action_buttons = (self.run_button,)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.clicked.connect(self.run_requested)
        self.progress_bar = QProgressBar()
        self.status_label = QLabel("ready")
        self.status_label.setWordWrap(True)
        self.threshold_slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setRange(0.01, 0.99)
        self.threshold_slider.setValue(CANDIDATE_THRESHOLD)
        self.threshold_slider.setToolTip("probability above which voxels form lesion candidates")
        self.min_volume = QDoubleSpinBox()
        self.min_volume.setRange(0.0, 100_000.0)
        self.min_volume.setDecimals(1)
        self.min_volume.setSuffix(" mm\N{SUPERSCRIPT THREE}")
        self.min_volume.setToolTip("smaller candidates are dropped")
        self.summary_label = QLabel("no lesions yet")
        self.threshold_slider.valueChanged.connect(self.lesion_settings_changed)
        self.min_volume.valueChanged.connect(self.lesion_settings_changed)

        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.browse_button)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        form = QFormLayout()
        form.addRow("model", model_row)
        form.addRow("device", self.device_combo)
        form.addRow(buttons)
        form.addRow(self.progress_bar)
        form.addRow(self.status_label)
        form.addRow("threshold", self.threshold_slider)
        form.addRow("min volume", self.min_volume)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.summary_label)

    def model_path(self) -> Path | None:
        """The chosen model file (None: the bundled default)."""
        return self.model_combo.currentData()

    def set_model_path(self, path: str | Path | None) -> None:
        """Choose a model file (listed once), or the bundled default for None."""
        if path is None:
            self.model_combo.setCurrentIndex(0)
            return
        path = Path(path)
        index = self.model_combo.findData(path)
        if index < 0:
            self.model_combo.addItem(path.name, path)
            index = self.model_combo.count() - 1
            self.model_combo.setItemData(index, str(path), Qt.ItemDataRole.ToolTipRole)
        self.model_combo.setCurrentIndex(index)

    def device(self) -> str:
        """One of :data:`~napari_metseg.devices.DEVICES`."""
        return self.device_combo.currentData()

    def threshold(self) -> float:
        return float(self.threshold_slider.value())

    def min_volume_mm3(self) -> float:
        return float(self.min_volume.value())

    def set_device(self, name: str) -> None:
        """Select the device ``name`` (one of :data:`~napari_metseg.devices.DEVICES`)."""
        index = self.device_combo.findData(name)
        if index < 0:
            raise ValueError(f"unknown device {name!r}; choose one of {list(DEVICES)}")
        self.device_combo.setCurrentIndex(index)

    def _fill_devices(self) -> None:
        """One item per device; ``auto`` names what it picks, missing devices are greyed."""
        for name in DEVICES:
            if name == "auto":
                label = f"auto ({resolve_device('auto').type})"
            elif name == "cuda" and device_available("cuda"):
                label = f"cuda ({torch.cuda.get_device_name(0)})"
            elif not device_available(name):
                label = f"{name} (not found)"
            else:
                label = name
            self.device_combo.addItem(label, name)
            if not device_available(name):
                self.device_combo.model().item(self.device_combo.count() - 1).setEnabled(False)

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a model file")
        if path:
            self.set_model_path(path)
