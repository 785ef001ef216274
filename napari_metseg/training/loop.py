"""The training loop: :func:`train` runs a :class:`TrainConfig` to a model file.

One iteration draws ``batch_size`` slices per process (lesion slices
over-sampled), applies sequence dropout, takes an AdamW step on the chosen
loss (mixed precision on CUDA) and adds the input-gradient magnitudes to the
cumulative saliency aggregates (per sequence and per slice offset,
METHOD.md "Saliency"). Every ``val_interval`` iterations the main process
segments the validation cases with only ``val_sequences`` present, scores them
(pooled mAP, maximum sensitivity, TP Dice), keeps the best model by mAP and
writes a checkpoint. Under ``torchrun`` the model is wrapped in
DistributedDataParallel and each rank draws its own slices.

Files in ``out_dir``: ``config.json`` (resolved settings), ``checkpoint.pt``
(resume point), ``best/`` and ``final/`` (model files), ``log.csv`` (loss,
learning rate, cumulative saliency), ``validation.csv``, ``training.png`` and
``summary.json``.

Resuming (``resume=True``) restores weights, optimiser, scaler, best score and
saliency from the checkpoint and continues at its iteration; the slice draws
after a resume are seeded by ``(seed, rank, iteration)``, so a resumed run is
reproducible though not bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_metseg.errors import Cancelled, ReadError
from napari_metseg.preprocess import PreprocessConfig
from napari_metseg.progress import ProgressCallback, check_cancel, no_progress
from napari_metseg.training.config import TrainConfig
from napari_metseg.training.datasets import (
    TrainingCase,
    load_split,
    phantom_specs,
    prepare_cases,
)
from napari_metseg.training.distributed import (
    DistributedContext,
    barrier,
    broadcast_buffers,
    broadcast_flag,
    cleanup_distributed,
    gather_strings,
    mean_across,
    setup_distributed,
    weights_digest,
)
from napari_metseg.training.mining import false_positive_slices
from napari_metseg.training.records import log_row, plot_run
from napari_metseg.training.run import TrainingRun
from napari_metseg.training.sampling import SliceSampler, slice_sources
from napari_metseg.training.steps import learning_rate, train_step, validate, validation_sets

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced.

    ``best_model``: model file with the best validation score (None without
    validation cases); ``final_model``: the weights after the last iteration;
    ``best_score`` / ``best_iteration``: that score (the mAP; with ``val_each_off``
    the mean mAP over the validation sets) and when; ``validations``: one dict of
    scores per validation; ``final_loss``: mean loss of the last
    logged interval; ``replica_digests``: weight hashes of every process after
    training (all equal under DDP); ``seconds``: wall-clock time of the loop.
    """

    out_dir: Path
    final_model: Path
    best_model: Path | None
    best_score: float
    best_iteration: int
    iterations: int
    final_loss: float
    validations: list[dict[str, Any]] = field(default_factory=list)
    replica_digests: list[str] = field(default_factory=list)
    seconds: float = 0.0


def gather_specs(config: TrainConfig) -> tuple[list[str], list[str]]:
    """Training and validation case specs from the explicit lists, split file and phantoms."""
    train, val = list(config.train), list(config.val)
    if config.split:
        split = load_split(config.split)
        train += split["train"]
        val += split["val"]
    first_val = config.synthetic_seed + config.synthetic_train
    train += phantom_specs(config.synthetic_seed, config.synthetic_train, config.phantom_randomise)
    val += phantom_specs(first_val, config.synthetic_val, config.phantom_randomise)
    if not train:
        raise ReadError("no training case: give train cases, a split file or synthetic_train > 0")
    overlap = sorted(set(train) & set(val))
    if overlap:
        raise ReadError(f"cases in both the training and validation sets: {overlap}")
    return train, val


def train(
    config: TrainConfig,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Train a model as ``config`` says; returns where the results are.

    ``progress(done, total, message)`` is called every iteration (on the main
    process); ``cancel`` stops the run after a checkpoint is written (raising
    :class:`~napari_metseg.errors.Cancelled`). Under ``torchrun`` every process
    calls this and the process group is joined and left here.
    """
    progress = progress or no_progress
    context = setup_distributed(config.device)
    try:
        return _train(config, context, progress, cancel)
    finally:
        cleanup_distributed()


def _train(
    config: TrainConfig,
    context: DistributedContext,
    progress: ProgressCallback,
    cancel: threading.Event | None,
) -> TrainResult:
    started = time.perf_counter()
    out = Path(config.out_dir)
    if context.main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.json")
    train_cases, val_cases = _load_cases(config, context, progress, cancel)
    sampler = SliceSampler(train_cases, config.oversample, config.size_aware_sampling)
    logger.info(
        "%d training cases (%d slices, %d with lesions), %d validation cases",
        len(train_cases),
        len(sampler),
        int(sampler.lesion.sum()),
        len(val_cases),
    )
    run = TrainingRun(config, context)
    if config.resume and run.checkpoint_path().exists():
        run.load_checkpoint()
    barrier(context)
    final_loss = _iterate(run, train_cases, val_cases, sampler, started, progress, cancel)
    return _finish(run, final_loss, time.perf_counter() - started)


def _load_cases(
    config: TrainConfig,
    context: DistributedContext,
    progress: ProgressCallback,
    cancel: threading.Event | None,
) -> tuple[list[TrainingCase], list[TrainingCase]]:
    """Training and validation cases, prepared (and censored) alike; records the censoring."""
    train_specs, val_specs = gather_specs(config)
    shared = {
        "sequences": config.sequences,
        "config": PreprocessConfig(size=config.size, context=config.context),
        "censor_rate": config.censor_rate,
        "censor_mode": config.censor_mode,
        "mapping": config.mapping,
        "phantom_spacing": config.phantom_spacing,
        "phantom_min_diameter": config.phantom_min_diameter,
        "cache_dir": config.cache_dir,
        "cancel": cancel,
        "workers": config.workers,
        "progress": progress if context.main else no_progress,
    }
    train_cases, record = prepare_cases(train_specs, censor_seed=config.seed, **shared)
    val_cases, val_record = prepare_cases(val_specs, censor_seed=config.seed + 1, **shared)
    if context.main and config.censor_rate > 0:
        (Path(config.out_dir) / "censoring.json").write_text(
            json.dumps({"train": record.to_json(), "val": val_record.to_json()}, indent=1)
        )
    return train_cases, val_cases


def _iterate(
    run: TrainingRun,
    train_cases: list[TrainingCase],
    val_cases: list[TrainingCase],
    sampler: SliceSampler,
    started: float,
    progress: ProgressCallback,
    cancel: threading.Event | None,
) -> float:
    """Steps to ``config.iterations``, logging and validating on schedule; the last loss."""
    config, context = run.config, run.context
    rng = np.random.default_rng([config.seed, context.rank, run.iteration])
    interval_losses: list[float] = []
    final_loss = math.nan
    val_sets = validation_sets(config)
    sources = slice_sources(train_cases, context.device)
    if config.hard_negatives:
        favour_hard_negatives(run, train_cases, sampler)
    while run.iteration < config.iterations:
        stop = cancel is not None and cancel.is_set()
        if broadcast_flag(context, stop):
            if context.main:
                run.save_checkpoint()
            check_cancel(cancel)
            raise Cancelled("training stopped on another process")
        lr = learning_rate(config, run.iteration)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        interval_losses.append(train_step(run, sources, sampler, rng))
        run.iteration += 1
        last = run.iteration == config.iterations
        if run.iteration % config.log_interval == 0 or last:
            final_loss = mean_across(context, float(np.mean(interval_losses)))
            interval_losses = []
            if context.main:
                log_row(run, final_loss, lr, time.perf_counter() - started)
        if run.iteration % config.val_interval == 0 or last:
            if context.main:
                if val_cases:
                    validate(run, val_cases, val_sets)
                run.save_checkpoint()
                plot_run(run.out, config)
            barrier(context)
            if config.hard_negatives and not last:
                favour_hard_negatives(run, train_cases, sampler)
        if context.main:
            progress(run.iteration, config.iterations, f"loss {final_loss:.4f}")
    return final_loss


def favour_hard_negatives(
    run: TrainingRun, train_cases: list[TrainingCase], sampler: SliceSampler
) -> None:
    """Draw the plain slices where the network now draws a false positive ``hard_negatives``
    times as often as the others (every process finds the same ones: its weights are the
    others')."""
    started = time.perf_counter()
    hard = false_positive_slices(run.network, train_cases, run.config.sequences, run.context.device)
    logger.info(
        "iteration %d: %d plain training slices show a false positive, drawn %g times as "
        "often (found in %.0f s)",
        run.iteration,
        sampler.favour(hard, run.config.hard_negatives),
        run.config.hard_negatives,
        time.perf_counter() - started,
    )


def _finish(run: TrainingRun, final_loss: float, seconds: float) -> TrainResult:
    """Final model and ``summary.json`` after the last step; weights equal on every process."""
    context, out = run.context, run.out
    broadcast_buffers(context, run.network)
    digests = gather_strings(context, weights_digest(run.network))
    final_path = out / "final"
    if context.main:
        run.save_model(final_path, {"iterations": run.iteration, "final_loss": final_loss})
    result = TrainResult(
        out_dir=out,
        final_model=final_path,
        best_model=out / "best" if run.best_iteration >= 0 else None,
        best_score=run.best_score,
        best_iteration=run.best_iteration,
        iterations=run.iteration,
        final_loss=final_loss,
        validations=run.validations,
        replica_digests=digests,
        seconds=seconds,
    )
    if context.main:
        summary = {
            "best_model": str(result.best_model) if result.best_model else None,
            "final_model": str(final_path),
            "best_score": None if math.isinf(run.best_score) else run.best_score,
            "best_iteration": run.best_iteration,
            "iterations": run.iteration,
            "final_loss": final_loss,
            "world_size": context.world_size,
            "replica_digests": digests,
            "seconds": seconds,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    barrier(context)
    return result
