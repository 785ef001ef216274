"""The lesion table dock: a sortable table of the ``lesions`` layer, navigation, exports.

The table is the lesions Labels layer's own ``features`` (the workbench puts
:func:`~napari_metseg.correction.annotation.annotated_lesions` there: the
model's lesions with the annotator's marks applied), so the dock, napari's
status bar and the CSV export always show the same rows. Selecting a row
moves the viewer to that lesion's slice, centres the camera on it and shows
it alone (``selected_label`` + ``show_selected_label``). Accept (key A) and
Reject (key R) mark every voxel of the selected lesion as 1 (lesion) or 2
(not lesion) in the ``corrections`` layer, through the layer's own undoable
edit, so napari's undo takes a mark back; the workbench autosaves it and
applies it to the lesions (a rejected lesion leaves the table, a painted one
joins it as ``painted``), and the next round teaches it to the model. The
exports write the mask (with the marks) and the probability (the model's) as
NIfTI on the reference file's grid (:func:`napari_metseg.io.write_volume`),
the table as CSV and the canvas as PNG.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import (
    QAbstractTableModel,
    QEvent,
    QModelIndex,
    QObject,
    QSortFilterProxyModel,
    Qt,
)
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from napari_metseg.correction import LESION, NOT_LESION
from napari_metseg.correction.annotation import PAINTED
from napari_metseg.errors import MetsegError
from napari_metseg.io import write_volume
from napari_metseg.layerdata import CORRECTIONS_LAYER
from napari_metseg.widgets.layers import find_layer, layer_volume, same_layer

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

#: Keys that mark the selected lesion while the table has the focus.
MARK_KEYS = {Qt.Key.Key_A: LESION, Qt.Key.Key_R: NOT_LESION}
#: The role under which the table model gives raw values (numbers sort as numbers).
SORT_ROLE = Qt.ItemDataRole.UserRole
#: Rows the dock keeps in view at least (it asks for one more when docked).
MIN_ROWS = 5


@dataclass(frozen=True)
class Column:
    """One shown column: header, the table column it sorts by, and how a row reads."""

    header: str
    key: str
    text: Callable[[pd.Series], str]
    tooltip: str


def _number(key: str, digits: int) -> Callable[[pd.Series], str]:
    return lambda row: f"{row[key]:.{digits}f}"


#: The columns the dock shows, sizes in mm / mm^3 and positions in RAS+ mm.
COLUMNS: tuple[Column, ...] = (
    Column("lesion", "label", lambda row: str(int(row["label"])), "lesion id (1: most confident)"),
    Column(
        "volume (mm\N{SUPERSCRIPT THREE})", "volume_mm3", _number("volume_mm3", 1), "volume in mm^3"
    ),
    Column("diameter (mm)", "diameter_mm", _number("diameter_mm", 1), "longest diameter in mm"),
    Column("confidence", "confidence", _number("confidence", 2), "mean probability of its voxels"),
    Column("max p", "max_probability", _number("max_probability", 2), "highest voxel probability"),
    Column("R (mm)", "centroid_x_mm", _number("centroid_x_mm", 1), "centre, RAS+ x in mm"),
    Column("A (mm)", "centroid_y_mm", _number("centroid_y_mm", 1), "centre, RAS+ y in mm"),
    Column("S (mm)", "centroid_z_mm", _number("centroid_z_mm", 1), "centre, RAS+ z in mm"),
    Column(
        "slices",
        "slice_start",
        lambda row: f"{int(row['slice_start'])}\N{EN DASH}{int(row['slice_stop']) - 1}",
        "first and last slice holding the lesion (0-based)",
    ),
    Column("painted", PAINTED, lambda row: "yes" if row.get(PAINTED) else "", "holds a stroke"),
)


class LesionTableModel(QAbstractTableModel):
    """A lesion DataFrame as a Qt table: formatted text to show, raw values to sort."""

    def __init__(
        self, parent: QObject | None = None, columns: tuple[Column, ...] = COLUMNS
    ) -> None:
        super().__init__(parent)
        self.columns = columns
        self.frame = pd.DataFrame()

    def set_frame(self, frame: pd.DataFrame) -> None:
        self.beginResetModel()
        self.frame = frame.reset_index(drop=True)
        self.endResetModel()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self.frame)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self.columns)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        column = self.columns[index.column()]
        row = self.frame.iloc[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return column.text(row)
        if role == SORT_ROLE:
            return float(row.get(column.key, 0.0))
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self.columns[section].header
        if role == Qt.ItemDataRole.ToolTipRole:
            return self.columns[section].tooltip
        return None

    def label_at(self, row: int) -> int:
        """The lesion id in model row ``row``."""
        return int(self.frame.iloc[row]["label"])


class LesionTablePanel(QWidget):
    """The lesions of the viewer's MetSeg ``lesions`` layer (see the module docstring)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.layer: Labels | None = None
        self.model = LesionTableModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.view = QTableView()
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.verticalHeader().setVisible(False)
        self.view.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 8)
        self.view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.view.setMinimumHeight(self._rows_height(MIN_ROWS))
        self.view.selectionModel().selectionChanged.connect(self._on_selection)
        self.summary_label = QLabel()
        self.show_all_button = QPushButton("Show all")
        self.show_all_button.setToolTip("show every lesion again (clears the selection)")
        self.show_all_button.clicked.connect(self.view.clearSelection)
        self.accept_button = QPushButton("Accept (A)")
        self.accept_button.setToolTip("mark the selected lesion as lesion (1) in the corrections")
        self.reject_button = QPushButton("Reject (R)")
        self.reject_button.setToolTip(
            "mark the selected lesion as not lesion (2) in the corrections"
        )
        self.accept_button.clicked.connect(lambda: self.mark_selected(LESION))
        self.reject_button.clicked.connect(lambda: self.mark_selected(NOT_LESION))
        self.view.installEventFilter(self)
        self.export_buttons = {
            "mask": QPushButton("Mask..."),
            "probability": QPushButton("Probability..."),
            "table": QPushButton("Table..."),
            "screenshot": QPushButton("Screenshot..."),
        }
        self.export_buttons["mask"].clicked.connect(
            lambda: self._ask_and_export("mask", "NIfTI (*.nii.gz *.nii)", self.export_mask)
        )
        self.export_buttons["probability"].clicked.connect(
            lambda: self._ask_and_export(
                "probability", "NIfTI (*.nii.gz *.nii)", self.export_probability
            )
        )
        self.export_buttons["table"].clicked.connect(
            lambda: self._ask_and_export("lesions", "CSV (*.csv)", self.export_table)
        )
        self.export_buttons["screenshot"].clicked.connect(
            lambda: self._ask_and_export("screenshot", "PNG (*.png)", self.export_screenshot)
        )
        top = QHBoxLayout()
        top.addWidget(self.summary_label, 1)
        top.addWidget(self.accept_button)
        top.addWidget(self.reject_button)
        top.addWidget(self.show_all_button)
        exports = QHBoxLayout()
        exports.addWidget(QLabel("export"))
        for button in self.export_buttons.values():
            exports.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.view, 1)
        layout.addLayout(exports)
        napari_viewer.layers.events.inserted.connect(self._find_layer)
        napari_viewer.layers.events.removed.connect(self._find_layer)
        self.destroyed.connect(_disconnector(napari_viewer, self._find_layer, self._refresh))
        self._find_layer()

    def preferred_height(self) -> int:
        """Pixels the dock needs to show :data:`MIN_ROWS` + 1 rows with its buttons."""
        return self._rows_height(MIN_ROWS + 1) + 3 * self.summary_label.sizeHint().height() + 40

    def visible_rows(self) -> int:
        """Whole rows the table shows at its present size."""
        row = self.view.verticalHeader().defaultSectionSize()
        return max(0, self.view.viewport().height() // row)

    def _rows_height(self, rows: int) -> int:
        header = self.view.horizontalHeader().sizeHint().height()
        return header + rows * self.view.verticalHeader().defaultSectionSize() + 4

    def table(self) -> pd.DataFrame:
        """The lesion table shown (the lesions layer's features, without napari's index)."""
        return self.model.frame.drop(columns="index", errors="ignore")

    def select_lesion(self, label: int) -> None:
        """Select the row of lesion ``label`` (which moves the viewer to it)."""
        for row in range(self.proxy.rowCount()):
            if int(self.proxy.data(self.proxy.index(row, 0), SORT_ROLE)) == label:
                self.view.selectRow(row)
                return
        raise MetsegError(f"no lesion {label} in the table")

    def selected_lesion(self) -> int | None:
        """The lesion id of the selected row (None: no row selected)."""
        rows = self.view.selectionModel().selectedRows()
        if not rows:
            return None
        return self.model.label_at(self.proxy.mapToSource(rows[0]).row())

    def mark_selected(self, value: int) -> None:
        """Set the selected lesion's voxels to ``value`` (1 lesion, 2 not lesion) in the
        corrections layer; a notification when there is no lesion or no layer."""
        label = self.selected_lesion()
        try:
            if label is None or self.layer is None:
                raise MetsegError("select a lesion in the table first")
            corrections = self._result_layer("labels", "corrections")
            where = np.nonzero(np.asarray(self.layer.data) == label)
            if np.asarray(corrections.data).shape != np.asarray(self.layer.data).shape:
                raise MetsegError(
                    f"the {CORRECTIONS_LAYER} layer is not on the grid of the lesions layer"
                )
        except MetsegError as error:
            show_error(str(error))
            return
        corrections.data_setitem(where, value)
        word = "lesion" if value == LESION else "not lesion"
        self.summary_label.setText(f"lesion {label} marked as {word} ({where[0].size} voxels)")

    def go_to(self, label: int) -> None:
        """Show lesion ``label`` alone, on its nearest slice, at the centre of the canvas."""
        rows = self.model.frame[self.model.frame["label"] == label]
        if self.layer is None or rows.empty:
            return
        row = rows.iloc[0]
        centroid = [row["centroid_slice"], row["centroid_row"], row["centroid_col"]]
        world = np.asarray(self.layer.data_to_world(centroid), dtype=np.float64)
        self.viewer.dims.set_point(range(world.size), world)
        camera = self.viewer.scene.camera if hasattr(self.viewer, "scene") else self.viewer.camera
        camera.center = tuple(world)
        self.layer.selected_label = label
        self.layer.show_selected_label = True

    def export_mask(self, path: str | Path) -> None:
        """Write the lesion ids (0 background) as NIfTI on the reference file's grid."""
        data, geometry = layer_volume(self._result_layer("labels", "lesions"))
        write_volume(path, data, geometry, kind="mask")

    def export_probability(self, path: str | Path) -> None:
        """Write the lesion probability as float NIfTI on the reference file's grid."""
        data, geometry = layer_volume(self._result_layer("image", "probability"))
        write_volume(path, data, geometry, kind="image")

    def export_table(self, path: str | Path) -> None:
        """Write the lesion table (sizes in mm / mm^3, positions in RAS+ mm) as CSV."""
        self._result_layer("labels", "lesions")
        self.table().to_csv(path, index=False)

    def export_screenshot(self, path: str | Path) -> None:
        """Save the canvas as PNG."""
        self.viewer.screenshot(str(path), canvas_only=True)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        """A / R on the table accept / reject the selected lesion (napari keeps its own keys)."""
        if (
            watched is self.view
            and event.type() == QEvent.Type.KeyPress
            and event.modifiers() == Qt.KeyboardModifier.NoModifier
            and event.key() in MARK_KEYS
        ):
            self.mark_selected(MARK_KEYS[event.key()])
            return True
        return super().eventFilter(watched, event)

    def _ask_and_export(self, stem: str, file_filter: str, export: Callable[[str], None]) -> None:
        suffix = file_filter.split("*")[1].split()[0].rstrip(")")
        path, _ = QFileDialog.getSaveFileName(
            self, f"Export {stem}", f"{stem}{suffix}", file_filter
        )
        if not path:
            return
        try:
            export(path)
        except (MetsegError, OSError) as error:
            show_error(f"could not export {stem}: {error}")
            return
        show_info(f"wrote {path}")

    def _result_layer(self, layer_type: str, role: str) -> Any:
        layer = find_layer(self.viewer, role, layer_type)
        if layer is not None:
            return layer
        raise MetsegError(f"there is no {role} layer yet: run the segmentation first")

    def _find_layer(self, event=None) -> None:
        found = find_layer(self.viewer, "lesions")
        if same_layer(found, self.layer):
            return
        if self.layer is not None:
            self.layer.events.features.disconnect(self._refresh)
        self.layer = found
        if found is not None:
            found.events.features.connect(self._refresh)
        self._refresh()

    def _refresh(self, event=None) -> None:
        frame = pd.DataFrame() if self.layer is None else self.layer.features
        if "label" not in frame.columns:
            frame = pd.DataFrame()
        self.model.set_frame(frame)
        if self.layer is not None:
            self.layer.show_selected_label = False
        if self.layer is None:
            self.summary_label.setText("no lesions layer: run the segmentation")
        else:
            total = float(frame["volume_mm3"].sum()) if len(frame) else 0.0
            painted = int(frame[PAINTED].sum()) if PAINTED in frame.columns else 0
            self.summary_label.setText(
                f"{len(frame)} lesions"
                + (f" ({painted} painted)" if painted else "")
                + f", {total:.0f} mm\N{SUPERSCRIPT THREE} in all (click a row to go to it)"
            )

    def _on_selection(self, selected=None, deselected=None) -> None:
        label = self.selected_lesion()
        if label is None:
            if self.layer is not None:
                self.layer.show_selected_label = False
            return
        self.go_to(label)


def _disconnector(viewer: napari.Viewer, find_layer, refresh) -> Callable[[], None]:
    """A slot that unhooks a deleted panel from the viewer (it must not hold the panel)."""

    def disconnect() -> None:
        viewer.layers.events.inserted.disconnect(find_layer)
        viewer.layers.events.removed.disconnect(find_layer)
        for layer in viewer.layers:
            if isinstance(layer, Labels):
                layer.events.features.disconnect(refresh)

    return disconnect
