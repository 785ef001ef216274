"""The Explain tab: gradient saliency of a lesion or slice, censor-one-out importance.

The panel observes the run state: its target is the lesion shown alone in the
``lesions`` layer (selected in the lesion table), else the current slice;
Saliency and Sequence importance run on the state's case, presence and model in
its worker. Saliency adds one overlay per present sequence (transparent at
zero) and the aggregates as bars (:mod:`~napari_metseg.widgets.saliency_bars`);
the censor-one-out comparison (:func:`napari_metseg.importance.sequence_importance`)
fills a small table.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_metseg.case import Case
from napari_metseg.importance import NONE_OFF, sequence_importance
from napari_metseg.layerdata import saliency_layers
from napari_metseg.progress import ProgressCallback
from napari_metseg.saliency import SaliencyResult, compute_saliency
from napari_metseg.widgets.layers import find_layer, show_layer
from napari_metseg.widgets.run_controls import RunControls
from napari_metseg.widgets.run_state import RunState
from napari_metseg.widgets.saliency_bars import AggregateCanvas

#: The importance table's columns: the frame's key, the header and its tooltip. Headers are
#: short: the tab is about 330 px wide, and five equal columns clipped "switched off" and
#: "Δ confidence".
_IMPORTANCE_COLUMNS = (
    ("off", "off", "the sequence switched off for this run"),
    ("lesions", "lesions", "lesions found without it"),
    ("lost", "lost", "lesions of the run with all present sequences that it loses"),
    ("gained", "gained", "lesions it finds that the run with all present sequences did not"),
    (
        "confidence_change",
        "\N{GREEK CAPITAL LETTER DELTA} conf.",
        "change of the mean lesion confidence against the run with all present sequences",
    ),
)


class ExplainPanel(RunControls, QGroupBox):
    """Saliency of a lesion or slice, and censor-one-out sequence importance."""

    owner = "explain"

    def __init__(self, state: RunState) -> None:
        super().__init__("Explain")
        self.state = state
        self.saliency: SaliencyResult | None = None
        self.importance: pd.DataFrame | None = None
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
        self.saliency_button.clicked.connect(self.explain)
        self.importance_button.clicked.connect(self.rank_sequences)
        self.progress_bar = QProgressBar()
        self.status_label = QLabel("ready")
        self.status_label.setWordWrap(True)
        self.canvas = AggregateCanvas()
        self.importance_table = QTableWidget(0, len(_IMPORTANCE_COLUMNS))
        self.importance_table.setHorizontalHeaderLabels([h for _, h, _ in _IMPORTANCE_COLUMNS])
        for column, (_, _, tip) in enumerate(_IMPORTANCE_COLUMNS):
            self.importance_table.horizontalHeaderItem(column).setToolTip(tip)
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
        self.observe_work(state)
        state.lesions_changed.connect(self._watch_lesions)
        state.viewer.dims.events.current_step.connect(self.show_target)

    def target(self) -> tuple[int, int]:
        """``(lesion, slice)``: the lesion shown alone (0: none) and the current slice."""
        layer = find_layer(self.state.viewer, "lesions")
        if layer is None:
            return 0, 0
        lesion = int(layer.selected_label) if layer.show_selected_label else 0
        index = layer.world_to_data(self.state.viewer.dims.point)
        return lesion, int(np.clip(round(index[0]), 0, layer.data.shape[0] - 1))

    def show_target(self, event=None) -> None:
        if self.state.probability is None:
            return
        lesion, slice_index = self.target()
        self.target_label.setText(
            f"target: lesion {lesion} (selected in the lesion table)"
            if lesion
            else f"target: slice {slice_index} (select a lesion in the table to explain it)"
        )

    def explain(self) -> Any:
        """Gradient saliency of the selected lesion (else the current slice), in the worker."""
        state = self.state
        if state.case is None or state.labels is None:
            show_error("no segmentation to explain yet: run the segmentation first")
            return None
        lesion, slice_index = self.target()
        mask = state.labels == lesion if lesion else None
        what = f"lesion {lesion}" if lesion else f"slice {slice_index}"
        return state.start(
            self.owner,
            "saliency",
            f"saliency of {what}",
            self._show_saliency,
            _saliency,
            state.model,
            state.model_path(),
            state.device,
            state.case,
            state.present,
            mask,
            slice_index,
        )

    def rank_sequences(self) -> Any:
        """Censor-one-out sequence importance of the last segmented case, in the worker."""
        state = self.state
        if state.case is None or state.probability is None:
            show_error("no segmentation yet: run the segmentation first")
            return None
        return state.start(
            self.owner,
            "sequence importance",
            f"switching each of {', '.join(state.present)} off in turn",
            self.show_importance,
            _importance,
            state.model,
            state.model_path(),
            state.device,
            state.case,
            state.present,
            state.probability,
            state.threshold,
            state.min_volume_mm3,
        )

    def show_importance(self, frame: pd.DataFrame) -> None:
        """Fill the table from :func:`~napari_metseg.importance.sequence_importance`'s rows."""
        self.importance = frame
        self.importance_table.setRowCount(len(frame))
        for row, record in enumerate(frame.itertuples(index=False)):
            values = record._asdict()
            for column, (key, _, _) in enumerate(_IMPORTANCE_COLUMNS):
                item = QTableWidgetItem(_cell(key, values[key]))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.importance_table.setItem(row, column, item)
        self.status_label.setText("sequence importance done")

    def _show_saliency(self, result: SaliencyResult) -> None:
        self.saliency = result
        for data, kwargs, layer_type in saliency_layers(result.maps, self.state.geometry):
            show_layer(self.state.viewer, data, kwargs, layer_type)
        self.canvas.show_aggregates(result.per_sequence, result.per_offset)
        self.status_label.setText("saliency done")

    def _watch_lesions(self) -> None:
        layer = find_layer(self.state.viewer, "lesions")
        if layer is not None:
            layer.events.show_selected_label.connect(self.show_target)
            layer.events.selected_label.connect(self.show_target)
        self.show_target()


def _saliency(
    model, path: Path | None, device: str, case: Case, present, mask, slice_index: int,
    progress: ProgressCallback, cancel: threading.Event,
) -> SaliencyResult:  # fmt: skip
    return compute_saliency(
        case,
        model(path, device),
        present=present,
        mask=mask,
        slice_index=slice_index,
        device=device,
        progress=progress,
        cancel=cancel,
    )


def _importance(
    model, path: Path | None, device: str, case: Case, present, baseline, threshold: float,
    min_volume_mm3: float, progress: ProgressCallback, cancel: threading.Event,
) -> pd.DataFrame:  # fmt: skip
    return sequence_importance(
        case,
        model(path, device),
        present=present,
        threshold=threshold,
        min_volume_mm3=min_volume_mm3,
        device=device,
        baseline=baseline,
        progress=progress,
        cancel=cancel,
    )


def _cell(key: str, value) -> str:
    if key == "off":
        return "(all on)" if value == NONE_OFF else str(value)
    if key == "confidence_change":
        return "\N{EN DASH}" if not np.isfinite(value) else f"{value:+.3f}"
    return str(int(value))
