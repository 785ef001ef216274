"""The reproduction's report: score tables, verdicts against the studies, a bar chart.

:func:`verdicts` decides by fixed rules whether the numbers here agree with
each claim of the studies; :func:`write_report` writes them with the tables
into ``docs/experiments.md``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path

from experiments.studies import RUNS, Settings
from napari_metseg.case import SEQUENCES
from napari_metseg.thresholds import CANDIDATE_THRESHOLD


def _cell(scores: dict[str, float], key: str) -> str:
    value = scores[key]
    if math.isnan(value):
        return "n/a"
    if key == "average_precision":
        return f"{value:.3f} [{scores['ci_low']:.2f}, {scores['ci_high']:.2f}]"
    return f"{value:.3f}"


def _table(rows: list[tuple[str, dict[str, float]]]) -> list[str]:
    lines = [
        "| network / sequences | mAP [95% CI] | max sensitivity | TP Dice | FP per case |",
        "|---|---|---|---|---|",
    ]
    for label, scores in rows:
        cells = [_cell(scores, key) for key in ("average_precision", "max_sensitivity", "tp_dice")]
        lines.append(
            f"| {label} | {' | '.join(cells)} | {scores['false_positives_per_case']:.1f} |"
        )
    return lines


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else math.nan


def verdicts(results: dict[str, dict[str, dict[str, float]]]) -> list[tuple[str, str, str]]:
    """``(study's claim, what the numbers here say, agrees?)`` rows, decided by stated rules."""

    def sensitivity(run: str, off: str = "none") -> float:
        return results[run][off]["max_sensitivity"]

    rows = []
    drop = sensitivity("no_dropout", "bravo")
    full = sensitivity("no_dropout")
    rows.append(
        (
            "without dropout, removing `bravo` collapses sensitivity (to 0)",
            f"max sensitivity {full:.2f} -> {drop:.2f}",
            "yes" if drop <= 0.5 * full else "no",
        )
    )
    with_dropout = sensitivity("dropout", "bravo")
    dedicated = sensitivity("without_bravo")
    rows.append(
        (
            "with dropout, the network without `bravo` is close to one trained on the other three",
            f"max sensitivity {with_dropout:.2f} vs {dedicated:.2f}",
            "yes" if with_dropout >= 0.8 * dedicated else "no",
        )
    )
    # the sequence whose absence costs the most mAP comes first
    ranked = sorted(SEQUENCES, key=lambda name: results["dropout"][name]["average_precision"])
    top_two, least = set(ranked[:2]) == {"bravo", "cube_pre"}, ranked[-1] == "flair"
    rows.append(
        (
            "censor-one-out: `bravo` and `cube_pre` matter most, `flair` least",
            "most to least important: " + ", ".join(f"`{name}`" for name in ranked),
            "yes" if top_two and least else ("partly" if top_two or least else "no"),
        )
    )
    baseline = sensitivity("dropout")
    for mode, study_ce, study_lopsided in (("stochastic", 10, 97), ("size", 17, 88)):
        ce = _ratio(sensitivity(f"{mode}_ce"), baseline)
        lopsided = _ratio(sensitivity(f"{mode}_lopsided"), baseline)
        rows.append(
            (
                f"50% censored ({mode}): weighted CE keeps {study_ce}% of the baseline's maximum "
                f"sensitivity, the lopsided bootstrap {study_lopsided}%",
                f"weighted CE {ce:.0%}, lopsided bootstrap {lopsided:.0%}",
                "yes" if lopsided > ce + 0.2 else ("partly" if lopsided > ce else "no"),
            )
        )
    return rows


def write_report(
    settings: Settings,
    preset: str,
    results: dict[str, dict[str, dict[str, float]]],
    doc: Path,
    figure: Path,
) -> None:
    """Write the markdown tables, the verdicts and a bar chart of maximum sensitivity."""
    labels = {run.name: run.label for run in RUNS}
    lines = [
        "# The studies' key effects, reproduced on synthetic phantoms",
        "",
        "Written by `python experiments/reproduce.py"
        + ("" if preset == "cpu" else f" --preset {preset}")
        + "`; rerun it to refresh every number here. Test cases: "
        f"{settings.test_cases} phantoms never seen in training (seeds "
        f"{settings.test_specs[0].split(':')[1]} on), full masks, "
        f"{results['dropout']['none']['n_lesions']} lesions. Scores "
        f"(METHOD.md): candidates at probability {CANDIDATE_THRESHOLD:.2f}, a hit when the "
        "candidate's centre "
        "lies within 1 mm of a lesion voxel; mAP with its Hanley-McNeil 95% interval.",
        "",
        "Budget shared by every network: "
        + ", ".join(f"{k}={v}" for k, v in asdict(settings).items())
        + ".",
        "",
        "## (a) Sequence dropout",
        "",
        *_table(
            [
                (f"{labels['no_dropout']}: all", results["no_dropout"]["none"]),
                (f"{labels['no_dropout']}: `bravo` off", results["no_dropout"]["bravo"]),
                (f"{labels['dropout']}: all", results["dropout"]["none"]),
                (f"{labels['dropout']}: `bravo` off", results["dropout"]["bravo"]),
                (f"{labels['without_bravo']}", results["without_bravo"]["none"]),
            ]
        ),
        "",
        "## (b) Censor-one-out (the dropout network)",
        "",
        *_table(
            [("all four", results["dropout"]["none"])]
            + [(f"`{name}` off", results["dropout"][name]) for name in SEQUENCES]
        ),
        "",
        "## (c) Half of the training lesions missing (alpha 3)",
        "",
        *_table(
            [("no censoring, weighted CE (the dropout network)", results["dropout"]["none"])]
            + [(labels[name], results[name]["none"]) for name in (r.name for r in RUNS[3:])]
        ),
        "",
        "## Against the studies",
        "",
        "Agreement is decided by fixed rules (a collapse is at least a halving; close is "
        "within 80%; the lopsided bootstrap helps when it keeps 20 points more of the "
        "baseline's sensitivity than weighted CE).",
        "",
        "| study | here | agrees |",
        "|---|---|---|",
        *[f"| {claim} | {here} | {agrees} |" for claim, here, agrees in verdicts(results)],
        "",
        f"![maximum sensitivity per network and setting]({os.path.relpath(figure, doc.parent)})",
        "",
    ]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines))
    _plot(results, figure)


def _plot(results: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f"{run}\n{off} off" if off != "none" else run, scores["max_sensitivity"])
            for run, settings in results.items() for off, scores in settings.items()]  # fmt: skip
    figure, axis = plt.subplots(figsize=(12, 4))
    axis.bar(range(len(bars)), [value for _, value in bars])
    axis.set_xticks(range(len(bars)), [name for name, _ in bars], rotation=60, ha="right")
    axis.set(ylabel="maximum sensitivity", ylim=(0, 1), title="test phantoms")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
