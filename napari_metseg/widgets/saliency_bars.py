"""The saliency aggregates as two bar charts with a scale (Explain tab).

The sum of |dL/dX| per sequence and per slice offset (METHOD.md) is drawn as a
share of the total: the y axis is in percent and each bar carries its value,
so the charts read without a legend.
"""

from __future__ import annotations

from collections.abc import Mapping

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from qtpy.QtWidgets import QSizePolicy

#: Pixel height of the canvas in the Explain tab.
HEIGHT_PX = 210


class AggregateCanvas(FigureCanvasQTAgg):
    """Two bar charts: saliency share per sequence and per slice offset."""

    def __init__(self) -> None:
        self.figure = Figure(figsize=(3.4, 2.1), dpi=100, layout="constrained")
        super().__init__(self.figure)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(HEIGHT_PX)
        self.sequence_axes, self.offset_axes = self.figure.subplots(1, 2)
        self.show_aggregates({}, {})

    def show_aggregates(
        self, per_sequence: Mapping[str, float], per_offset: Mapping[int, float]
    ) -> None:
        """Bars of each aggregate as a share (%) of the total saliency, values on top."""
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
            axes.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
            axes.yaxis.set_major_locator(MaxNLocator(3))
            axes.spines[["top", "right"]].set_visible(False)
            if values:
                bars = axes.bar(list(values), list(values.values()), color="tab:orange")
                axes.bar_label(bars, labels=[f"{v:.0%}" for v in values.values()], fontsize=6)
                axes.set_ylim(0, max(values.values()) * 1.25 or 1.0)
            else:
                axes.text(0.5, 0.5, "no saliency yet", ha="center", va="center", fontsize=7)
                axes.set_xticks([])
                axes.set_ylim(0, 1)
        self.sequence_axes.set_ylabel("share of |dL/dX|", fontsize=7)
        self.sequence_axes.tick_params(axis="x", labelrotation=30)
        self.draw()
