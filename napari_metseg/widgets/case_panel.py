"""Which image layer plays which sequence, and which sequences are switched on.

One row per model sequence: a layer dropdown (auto-assigned from layer
metadata or names, :func:`~napari_metseg.layerdata.guess_sequence`) and a
*present* checkbox, which can only be ticked while an image is assigned
(assigning one ticks it). A sequence is present when it is both checked and
assigned; the model sees absent ones as zeros and scales the present ones by
n / k (METHOD.md), the factor shown under the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import TYPE_CHECKING

from napari.layers import Image
from napari.utils.notifications import show_error
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QVBoxLayout,
)

from napari_metseg.case import SEQUENCES
from napari_metseg.layerdata import guess_sequence
from napari_metseg.widgets.layers import same_layer

if TYPE_CHECKING:
    import napari

_NONE = "(none)"


class CasePanel(QGroupBox):
    """Sequence-to-layer assignment and presence for the next run."""

    changed = Signal()

    def __init__(self, viewer: napari.Viewer, sequences: Sequence[str] = SEQUENCES) -> None:
        super().__init__("Case")
        self._viewer = viewer
        self._combos: dict[str, QComboBox] = {}
        self._checks: dict[str, QCheckBox] = {}
        self._grid = QGridLayout()
        self.factor_label = QLabel()
        self.factor_label.setWordWrap(True)
        self.open_button = QPushButton("Open case folder...")
        self.open_button.clicked.connect(self._open_folder)
        layout = QVBoxLayout(self)
        layout.addLayout(self._grid)
        layout.addWidget(self.factor_label)
        layout.addWidget(self.open_button)
        self.set_sequences(sequences)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._refresh)
        self.changed.connect(self._show_factor)
        for layer in viewer.layers:
            layer.events.name.connect(self._refresh)

    @property
    def sequences(self) -> tuple[str, ...]:
        return tuple(self._combos)

    def set_sequences(self, sequences: Sequence[str]) -> None:
        """Rebuild the rows for a model's sequences, keeping assignments by name."""
        previous = {
            name: (self.layer_for(name), self._checks[name].isChecked()) for name in self._combos
        }
        while self._grid.count():
            self._grid.takeAt(0).widget().deleteLater()
        self._combos, self._checks = {}, {}
        for row, sequence in enumerate(sequences):
            combo, check = QComboBox(), QCheckBox("present")
            combo.setToolTip(f"the image layer that plays {sequence}")
            self._grid.addWidget(QLabel(sequence), row, 0)
            self._grid.addWidget(combo, row, 1)
            self._grid.addWidget(check, row, 2)
            self._combos[sequence], self._checks[sequence] = combo, check
            combo.currentIndexChanged.connect(lambda _, name=sequence: self._on_assigned(name))
            check.toggled.connect(self.changed)
            check.setEnabled(False)
        self._refresh()
        for sequence, (layer, checked) in previous.items():
            if sequence in self._combos and layer is not None:
                self.assign(sequence, layer)
                self.set_present(sequence, checked)
        self._auto_assign(list(self._viewer.layers))
        self.changed.emit()

    def assign(self, sequence: str, layer: Image | None) -> None:
        """Let ``layer`` play ``sequence`` (None: unassigned, so absent)."""
        combo = self._combos[sequence]
        index = 0 if layer is None else self._index_of(combo, layer)
        combo.setCurrentIndex(max(index, 0))

    def set_present(self, sequence: str, present: bool) -> None:
        """Switch ``sequence`` on or off (only an assigned one can be on)."""
        check = self._checks[sequence]
        check.setChecked(present and check.isEnabled())

    def layer_for(self, sequence: str) -> Image | None:
        return self._combos[sequence].currentData()

    def assigned(self) -> dict[str, Image]:
        """The layer of each assigned sequence, switched on or off, in model order."""
        return {
            sequence: layer
            for sequence in self._combos
            if (layer := self.layer_for(sequence)) is not None
        }

    def assignment(self) -> dict[str, Image]:
        """The layer of each present (assigned and checked) sequence, in model order."""
        return {
            sequence: layer
            for sequence, layer in self.assigned().items()
            if self._checks[sequence].isChecked()
        }

    def present(self) -> tuple[str, ...]:
        """Sequences both checked and assigned, in model order."""
        return tuple(self.assignment())

    def _on_assigned(self, sequence: str) -> None:
        """A box is ticked when an image is assigned, unticked and locked when none is."""
        check, assigned = self._checks[sequence], self.layer_for(sequence) is not None
        if assigned != check.isEnabled():
            check.blockSignals(True)
            check.setEnabled(assigned)
            check.setChecked(assigned)
            check.blockSignals(False)
        self.changed.emit()

    def _image_layers(self) -> list[Image]:
        return [layer for layer in self._viewer.layers if _is_image(layer)]

    def _refresh(self, event=None) -> None:
        layers = self._image_layers()
        for combo in self._combos.values():
            current = combo.currentData()
            combo.blockSignals(True)
            combo.clear()
            combo.addItem(_NONE, None)
            for layer in layers:
                combo.addItem(layer.name, layer)
            combo.setCurrentIndex(max(self._index_of(combo, current), 0))
            combo.blockSignals(False)
        for sequence in self._combos:
            self._on_assigned(sequence)

    def _on_inserted(self, event) -> None:
        event.value.events.name.connect(self._refresh)
        self._refresh()
        self._auto_assign([event.value])

    def _auto_assign(self, layers: list) -> None:
        """Give unassigned rows the new image layers whose metadata or name names them."""
        for layer in layers:
            if not _is_image(layer):
                continue
            sequence = guess_sequence(layer.name, layer.metadata, self.sequences)
            if sequence is not None and self.layer_for(sequence) is None:
                self.assign(sequence, layer)

    def _show_factor(self) -> None:
        n, k = len(self._combos), len(self.present())
        if k == 0:
            self.factor_label.setText("no sequence on: assign and check at least one")
            return
        factor = Fraction(n, k)
        self.factor_label.setText(
            f"{k} of {n} sequences on: present ones scaled by n/k = {factor} ({float(factor):.2f})"
        )

    def _open_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a case folder")
        if not folder:
            return
        try:
            self._viewer.open(folder, plugin="napari-metseg")
        except Exception as error:  # noqa: BLE001 - napari wraps reader errors; show them
            show_error(f"could not open {folder}: {error}")

    @staticmethod
    def _index_of(combo: QComboBox, layer) -> int:
        if layer is None:
            return 0
        for index in range(combo.count()):
            if same_layer(combo.itemData(index), layer):
                return index
        return -1


def _is_image(layer) -> bool:
    """A 3D image layer that can play a sequence (not a result of ours)."""
    return (
        isinstance(layer, Image)
        and layer.ndim == 3
        and layer.metadata.get("role") in (None, "image")
    )
