"""The files a training run writes as it goes: ``log.csv``, ``validation.csv``, ``training.png``.

Rows are appended (a resumed run continues its files); the plot is redrawn
from the CSV files at every validation. Used by the loop and its steps.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from napari_metseg.training.config import TrainConfig
from napari_metseg.training.run import TrainingRun


def log_row(run: TrainingRun, loss: float, lr: float, seconds: float) -> None:
    row: dict[str, Any] = {
        "iteration": run.iteration,
        "loss": loss,
        "lr": lr,
        "seconds": round(seconds, 2),
    }
    total = float(run.saliency.totals.sum()) or 1.0
    for name, value in run.saliency.per_sequence.items():
        row[f"saliency_{name}"] = value / total
    for offset, value in run.saliency.per_offset.items():
        row[f"saliency_offset_{offset:+d}"] = value / total
    row["saliency_total"] = float(run.saliency.totals.sum())
    append_csv(run.out / "log.csv", row)


def append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def plot_run(out: Path, config: TrainConfig) -> None:
    """``training.png``: loss, validation scores, saliency shares per sequence and offset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    log_file = out / "log.csv"
    if not log_file.exists():
        return
    log = pd.read_csv(log_file)
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    axes[0, 0].plot(log["iteration"], log["loss"])
    axes[0, 0].set(title="training loss", xlabel="iteration", yscale="log")
    validation_file = out / "validation.csv"
    if validation_file.exists():
        validation = pd.read_csv(validation_file)
        for key in ("average_precision", "max_sensitivity", "tp_dice"):
            axes[0, 1].plot(validation["iteration"], validation[key], marker="o", label=key)
        axes[0, 1].legend()
    axes[0, 1].set(title="validation", xlabel="iteration", ylim=(0, 1))
    for name in config.sequences:
        axes[1, 0].plot(log["iteration"], log[f"saliency_{name}"], label=name)
    axes[1, 0].set(title="cumulative saliency share per sequence", xlabel="iteration")
    axes[1, 0].legend()
    for offset in range(-config.context, config.context + 1):
        column = f"saliency_offset_{offset:+d}"
        axes[1, 1].plot(log["iteration"], log[column], label=f"z{offset:+d}")
    axes[1, 1].set(title="cumulative saliency share per slice offset", xlabel="iteration")
    axes[1, 1].legend()
    figure.tight_layout()
    figure.savefig(out / "training.png", dpi=90)
    plt.close(figure)
