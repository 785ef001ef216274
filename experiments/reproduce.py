"""Reproduce the studies' key effects on synthetic phantoms and write ``docs/experiments.md``.

Usage, from the repository root::

    python experiments/reproduce.py                    # the CPU preset (about 75 minutes on 2 cores)
    python experiments/reproduce.py --preset gpu       # a longer, larger run for one GPU
    python experiments/reproduce.py --jobs 2 --runs runs/experiments --doc docs/experiments.md

Three studies from METHOD.md, each on held-out phantoms (seeds after the
training and validation ones) whose masks are never censored:

(a) sequence dropout: a network trained on all four sequences with dropout
    and one without, each scored with every sequence and with ``bravo``
    switched off, next to a network trained on the three other sequences only;
(b) censor-one-out: the dropout network scored with each sequence off in turn;
(c) missed lesions: networks trained on masks with half of the lesions
    removed (stochastically or the smallest first), with class-weighted
    cross-entropy (alpha 3, beta 1) or the lopsided bootstrap (alpha 3, beta
    0.1), scored against the full masks and relative to the uncensored
    dropout network of (a) (same loss, alpha and budget).

Every network shares one budget (:class:`Settings`); trainings run in
parallel processes (``--jobs``) and are resumed or skipped when their run
folder already holds them, so an interrupted reproduction continues where it
stopped. Scores: pooled mAP (with its Hanley-McNeil 95% interval), maximum
sensitivity and TP Dice, from :mod:`napari_metseg.metrics`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import typing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import active_children, get_context
from pathlib import Path
from typing import Any

import numpy as np

from napari_metseg.case import SEQUENCES
from napari_metseg.preprocess import PreprocessConfig
from napari_metseg.training.config import TrainConfig, parse_value
from napari_metseg.training.datasets import phantom_specs, prepare_cases

logger = logging.getLogger("experiments")

#: The sequences of the network trained without ``bravo``.
WITHOUT_BRAVO = ("cube_pre", "cube_post", "flair")


@dataclass(frozen=True)
class Settings:
    """The budget every network of a reproduction shares.

    Phantoms: ``train_cases`` / ``val_cases`` / ``test_cases`` with seeds
    from ``first_seed`` on, at ``phantom_spacing`` mm, lesions at least
    ``phantom_min_diameter`` mm across (None: the generator's default).
    Training (see :class:`TrainConfig`): ``size``-pixel slices,
    ``backbone`` at ``output_stride``, ``iterations``
    of ``batch_size``, ``lr``, validation every
    ``val_interval``, lesion weight ``alpha`` (METHOD.md: 3), ``seed``,
    ``device``.
    """

    train_cases: int = 12
    val_cases: int = 3
    test_cases: int = 5
    first_seed: int = 1000
    phantom_spacing: float = 1.5
    phantom_min_diameter: float | None = 5.0
    size: int = 128
    backbone: str = "light"
    output_stride: int | None = 8
    iterations: int = 600
    batch_size: int = 8
    lr: float = 1e-3
    val_interval: int = 300
    alpha: float = 3.0
    seed: int = 0
    device: str = "auto"

    @property
    def test_specs(self) -> list[str]:
        return phantom_specs(self.first_seed + self.train_cases + self.val_cases, self.test_cases)


#: Named budgets: ``cpu`` takes about 75 minutes of a 2-core machine; ``gpu`` the
#: method's 256-pixel slices on 1 mm phantoms, sized to train all seven networks
#: at once on one GPU with ``--jobs 7`` (add ``--set backbone=resnet50 --set
#: iterations=20000`` for the method's backbone and length); ``smoke`` checks the
#: harness.
PRESETS: dict[str, Settings] = {
    "cpu": Settings(),
    "gpu": Settings(
        train_cases=24,
        val_cases=4,
        test_cases=8,
        phantom_spacing=1.0,
        phantom_min_diameter=3.0,
        size=256,
        output_stride=16,
        iterations=4000,
        batch_size=16,
        val_interval=1000,
    ),
    "smoke": Settings(
        train_cases=2,
        val_cases=1,
        test_cases=1,
        phantom_spacing=4.0,
        phantom_min_diameter=None,
        size=32,
        iterations=2,
        batch_size=2,
        val_interval=2,
    ),
}


@dataclass(frozen=True)
class Run:
    """One network of the reproduction: a name, a label and its settings beyond the budget."""

    name: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)


def _censored(mode: str, loss: str, beta: float) -> dict[str, Any]:
    return {"censor_rate": 0.5, "censor_mode": mode, "loss": loss, "beta": beta}


RUNS: tuple[Run, ...] = (
    Run("dropout", "4 sequences, dropout"),
    Run("no_dropout", "4 sequences, no dropout", {"sequence_dropout": False}),
    Run(
        "without_bravo",
        "3 sequences (no bravo), no dropout",
        {"sequences": WITHOUT_BRAVO, "sequence_dropout": False},
    ),
    Run("stochastic_ce", "50% censored at random, weighted CE", _censored("stochastic", "weighted_ce", 1.0)),
    Run(
        "stochastic_lopsided",
        "50% censored at random, lopsided bootstrap",
        _censored("stochastic", "lopsided_bootstrap", 0.1),
    ),
    Run("size_ce", "50% censored by size, weighted CE", _censored("size", "weighted_ce", 1.0)),
    Run(
        "size_lopsided",
        "50% censored by size, lopsided bootstrap",
        _censored("size", "lopsided_bootstrap", 0.1),
    ),
)  # fmt: skip


def train_config(settings: Settings, run: Run, runs_dir: Path) -> TrainConfig:
    """The :class:`TrainConfig` of ``run`` under ``settings`` (resumable, cached phantoms)."""
    base = TrainConfig(
        synthetic_train=settings.train_cases,
        synthetic_val=settings.val_cases,
        synthetic_seed=settings.first_seed,
        phantom_spacing=settings.phantom_spacing,
        phantom_min_diameter=settings.phantom_min_diameter,
        cache_dir=str(runs_dir / "cache"),
        size=settings.size,
        backbone=settings.backbone,
        output_stride=settings.output_stride,
        iterations=settings.iterations,
        batch_size=settings.batch_size,
        lr=settings.lr,
        val_interval=settings.val_interval,
        alpha=settings.alpha,
        seed=settings.seed,
        device=settings.device,
        out_dir=str(runs_dir / run.name),
        resume=True,
        log_interval=max(1, min(50, settings.iterations)),
    )
    return base.with_overrides(run.overrides)


def _finished(config: TrainConfig) -> bool:
    out = Path(config.out_dir)
    try:
        stored = TrainConfig.from_json(json.loads((out / "config.json").read_text()))
    except (OSError, ValueError):  # JSONDecodeError is a ValueError
        return False
    return (out / "summary.json").exists() and stored == config


def _in_worker(task: Any, label: str, threads: int, *args: Any) -> Any:
    """``task(*args)`` in a pool worker: ``threads`` CPU threads, log lines labelled."""
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{label}] %(message)s", force=True)
    return task(*args)


def run_all(task: Any, calls: list[tuple[str, tuple]], jobs: int) -> list[Any]:
    """``task(*args)`` for each ``(label, args)`` of ``calls``, in order: in this process
    when ``jobs`` is 1, else ``jobs`` spawned processes sharing the CPU threads."""
    if jobs == 1:
        return [task(*args) for _, args in calls]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    logger.info("%d tasks, %d at a time, %d threads each", len(calls), jobs, threads)
    with ProcessPoolExecutor(min(jobs, len(calls)), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_in_worker, task, label, threads, *args) for label, args in calls]
        return [future.result() for future in futures]


def train_all(configs: list[TrainConfig], jobs: int) -> None:
    """Train the unfinished ``configs``, ``jobs`` at a time."""
    from napari_metseg.training.loop import train

    todo = [config for config in configs if not _finished(config)]
    if todo:
        logger.info("training %d networks", len(todo))
        run_all(train, [(Path(config.out_dir).name, (config,)) for config in todo], jobs)


def prepare_phantoms(settings: Settings, runs_dir: Path, workers: int) -> None:
    """Generate and pre-process every phantom once, before the trainings share the cache."""
    specs = phantom_specs(settings.first_seed, settings.train_cases + settings.val_cases)
    for sequences in (SEQUENCES, WITHOUT_BRAVO):
        prepare_cases(
            specs + settings.test_specs,
            sequences,
            PreprocessConfig(size=settings.size),
            phantom_spacing=settings.phantom_spacing,
            phantom_min_diameter=settings.phantom_min_diameter,
            cache_dir=runs_dir / "cache",
            workers=workers,
        )


def score(
    settings: Settings, runs_dir: Path, run: Run, settings_off: list[tuple[str, ...]]
) -> dict[str, dict[str, float]]:
    """Test scores of ``run``'s best network with each tuple of ``settings_off`` switched off."""
    from napari_metseg.engine import resolve_device
    from napari_metseg.model import load_model
    from napari_metseg.training.evaluation import evaluate_network

    config = train_config(settings, run, runs_dir)
    out = Path(config.out_dir)
    path = out / "best" if (out / "best").exists() else out / "final"
    device = resolve_device(settings.device)
    network = load_model(path, device)
    cases, _ = prepare_cases(
        settings.test_specs,
        config.sequences,
        PreprocessConfig(size=settings.size),
        phantom_spacing=settings.phantom_spacing,
        phantom_min_diameter=settings.phantom_min_diameter,
        cache_dir=runs_dir / "cache",
    )
    scores = {}
    for off in settings_off:
        present = np.array([name not in off for name in config.sequences])
        pooled, _ = evaluate_network(network, cases, present, device)
        scores[_off_name(off)] = {
            "average_precision": pooled.average_precision,
            "ci_low": pooled.ci_low,
            "ci_high": pooled.ci_high,
            "max_sensitivity": pooled.max_sensitivity,
            "tp_dice": pooled.tp_dice,
            "false_positives_per_case": pooled.false_positives_per_case,
            "n_lesions": pooled.n_lesions,
        }
        logger.info("%s, off %s: %s", run.name, _off_name(off), scores[_off_name(off)])
    return scores


def _off_name(off: tuple[str, ...]) -> str:
    return "none" if not off else "-".join(off)


def collect(
    settings: Settings, runs_dir: Path, jobs: int = 1
) -> dict[str, dict[str, dict[str, float]]]:
    """Every score the three tables need: run name -> sequences off -> scores.

    ``jobs`` > 1 scores that many networks at once, in separate processes.
    """
    one_off = [()] + [(name,) for name in SEQUENCES]
    plan = {
        "dropout": one_off,
        "no_dropout": [(), ("bravo",)],
        "without_bravo": [()],
    }
    calls = [(run.name, (settings, runs_dir, run, plan.get(run.name, [()]))) for run in RUNS]
    scores = run_all(score, calls, jobs)
    return {run.name: result for run, result in zip(RUNS, scores, strict=True)}


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
        "(METHOD.md): candidates at probability 0.10, a hit when the candidate's centre "
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


def stop_workers(signum: int, frame: Any = None) -> None:
    """SIGTERM handler: end the worker processes too, which would otherwise train on
    (a ``kill`` or ``pkill`` reaches this process only, unlike Ctrl-C in a terminal)."""
    for child in active_children():
        child.terminate()
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="change one budget setting, e.g. --set iterations=3000",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once (default 2)")
    parser.add_argument("--runs", type=Path, default=Path("runs/experiments"))
    parser.add_argument("--doc", type=Path, default=Path("docs/experiments.md"))
    parser.add_argument("--figure", type=Path, default=Path("docs/images/experiments.png"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = PRESETS[args.preset]
    for assignment in args.overrides:
        key, _, value = (part.strip() for part in assignment.partition("="))
        if key not in asdict(settings):
            parser.error(f"unknown setting {key!r}; known: {sorted(asdict(settings))}")
        try:
            parsed = parse_value(value, typing.get_type_hints(Settings)[key], key)
        except ValueError as error:
            parser.error(str(error))
        settings = replace(settings, **{key: parsed})
    runs_dir = args.runs / args.preset
    prepare_phantoms(settings, runs_dir, os.cpu_count() or 1)
    train_all([train_config(settings, run, runs_dir) for run in RUNS], args.jobs)
    results = collect(settings, runs_dir, args.jobs)
    (runs_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_report(settings, args.preset, results, args.doc, args.figure)
    logger.info("wrote %s", args.doc)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop_workers)
    sys.exit(main())
