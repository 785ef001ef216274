"""Saliency and sequence importance: requests, progress and their results.

The panel only shows choices and results; the workbench runs the work. The
saliency aggregates (sum of |dL/dX| per sequence and per slice offset,
METHOD.md) are drawn as bars on an embedded matplotlib canvas; the
censor-one-out comparison (:func:`napari_metseg.importance.sequence_importance`)
fills a small table.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_metseg.importance import NONE_OFF
from napari_metseg.widgets.run_controls import RunControls

#: Headers of the importance table and the columns of its frame.
_IMPORTANCE_COLUMNS = (
    ("off", "switched off"),
    ("lesions", "lesions"),
    ("lost", "lost"),
    ("gained", "gained"),
    ("confidence_change", "\N{GREEK CAPITAL LETTER DELTA} confidence"),
)


class AggregateCanvas(FigureCanvasQTAgg):
    """Two bar charts: saliency share per sequence and per slice offset."""

    def __init__(self) -> None:
        self.figure = Figure(figsize=(3.2, 1.9), dpi=100, layout="constrained")
        super().__init__(self.figure)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(190)
        self.sequence_axes, self.offset_axes = self.figure.subplots(1, 2)
        self.show_aggregates({}, {})

    def show_aggregates(
        self, per_sequence: Mapping[str, float], per_offset: Mapping[int, float]
    ) -> None:
        """Bars of each aggregate as a share of the total saliency."""
        total = float(sum(per_sequence.values())) or 1.0
        for axes, values, title in (
            (self.sequence_axes, {k: v / total for k, v in per_sequence.items()}, "per sequence"),
            (
                self.offset_axes,
                {f"{k:+d}": v / total for k, v in per_offset.items()},
                "per slice offset",
            ),
        ):
            axes.clear()
            axes.set_title(title, fontsize=8)
            axes.tick_params(labelsize=7)
            if values:
                axes.bar(list(values), list(values.values()), color="tab:orange")
                axes.set_ylim(0, max(values.values()) * 1.15 or 1.0)
            else:
                axes.text(0.5, 0.5, "no saliency yet", ha="center", va="center", fontsize=7)
                axes.set_xticks([])
            axes.set_yticks([])
        self.sequence_axes.tick_params(axis="x", labelrotation=30)
        self.draw()


class ExplainPanel(RunControls, QGroupBox):
    """Saliency of a lesion or slice, and censor-one-out sequence importance."""

    saliency_requested = Signal()
    importance_requested = Signal()
    cancel_requested = Signal()

    def __init__(self) -> None:
        super().__init__("Explain")
        self.target_label = QLabel("target: run the segmentation first")
        self.target_label.setWordWrap(True)
        self.saliency_button = QPushButton("Saliency")
        self.saliency_button.setToolTip(
            "gradient of the loss w.r.t. the input for the selected lesion (else the current "
            "slice), one overlay per sequence"
        )
        self.importance_button = QPushButton("Sequence importance")
        self.action_buttons = (self.saliency_button, self.importance_button)
        self.importance_button.setToolTip(
            "segment again with each present sequence switched off in turn and compare lesions"
        )
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.saliency_button.clicked.connect(self.saliency_requested)
        self.importance_button.clicked.connect(self.importance_requested)
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.progress_bar = QProgressBar()
        self.status_label = QLabel("ready")
        self.status_label.setWordWrap(True)
        self.canvas = AggregateCanvas()
        self.importance_table = QTableWidget(0, len(_IMPORTANCE_COLUMNS))
        self.importance_table.setHorizontalHeaderLabels([h for _, h in _IMPORTANCE_COLUMNS])
        self.importance_table.verticalHeader().setVisible(False)
        self.importance_table.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.Stretch
        )
        self.importance_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.importance_table.setMinimumHeight(140)

        buttons = QHBoxLayout()
        buttons.addWidget(self.saliency_button)
        buttons.addWidget(self.importance_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.target_label)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(QLabel("saliency share (sum of |dL/dX|)"))
        layout.addWidget(self.canvas)
        layout.addWidget(QLabel("censor-one-out: lesions against the run with all on"))
        layout.addWidget(self.importance_table)

    def show_importance(self, frame: pd.DataFrame) -> None:
        """Fill the table from :func:`~napari_metseg.importance.sequence_importance`'s rows."""
        self.importance_table.setRowCount(len(frame))
        for row, record in enumerate(frame.itertuples(index=False)):
            values = record._asdict()
            for column, (key, _) in enumerate(_IMPORTANCE_COLUMNS):
                item = QTableWidgetItem(_cell(key, values[key]))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.importance_table.setItem(row, column, item)


def _cell(key: str, value) -> str:
    if key == "off":
        return "(all on)" if value == NONE_OFF else str(value)
    if key == "confidence_change":
        return "\N{EN DASH}" if not np.isfinite(value) else f"{value:+.3f}"
    return str(int(value))


def explain_page(panel: ExplainPanel) -> QWidget:
    """The panel on a page of its own, pushed to the top."""
    page = QWidget()
    layout = QVBoxLayout(page)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(panel)
    layout.addStretch(1)
    return page
