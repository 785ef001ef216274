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
import os
import signal
import sys
import typing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from multiprocessing import active_children, get_context
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a script: the repository root holds the experiments package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.report import write_report  # noqa: E402
from experiments.studies import (  # noqa: E402
    PRESETS,
    RUNS,
    WITHOUT_BRAVO,
    Run,
    Settings,
    train_config,
)
from napari_metseg.case import SEQUENCES  # noqa: E402
from napari_metseg.preprocess import PreprocessConfig  # noqa: E402
from napari_metseg.training.config import TrainConfig, parse_value  # noqa: E402
from napari_metseg.training.datasets import phantom_specs, prepare_cases  # noqa: E402

logger = logging.getLogger("experiments")


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


def prepare_phantoms(settings: Settings, runs_dir: Path, jobs: int) -> None:
    """Generate and pre-process every phantom once, before the trainings share the cache."""
    specs = phantom_specs(settings.first_seed, settings.train_cases + settings.val_cases)
    calls = [
        (f"{spec} {len(sequences)} sequences", (settings, runs_dir, spec, sequences))
        for sequences in (SEQUENCES, WITHOUT_BRAVO)
        for spec in specs + settings.test_specs
    ]
    run_all(_prepare_phantom, calls, jobs)


def _prepare_phantom(
    settings: Settings, runs_dir: Path, spec: str, sequences: tuple[str, ...]
) -> None:
    prepare_cases(
        [spec],
        sequences,
        PreprocessConfig(size=settings.size),
        phantom_spacing=settings.phantom_spacing,
        phantom_min_diameter=settings.phantom_min_diameter,
        cache_dir=runs_dir / "cache",
    )


def score(
    settings: Settings, runs_dir: Path, run: Run, settings_off: list[tuple[str, ...]]
) -> dict[str, dict[str, float]]:
    """Test scores of ``run``'s best network with each tuple of ``settings_off`` switched off."""
    from napari_metseg.devices import resolve_device
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
