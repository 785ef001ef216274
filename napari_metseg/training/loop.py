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

import csv
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_metseg.errors import Cancelled, ReadError, SequenceError
from napari_metseg.losses import make_loss
from napari_metseg.model import (
    ModelConfig,
    apply_presence,
    build_model,
    save_model,
    sequence_dropout,
)
from napari_metseg.preprocess import PreprocessConfig
from napari_metseg.progress import ProgressCallback, check_cancel, no_progress
from napari_metseg.saliency import CumulativeSaliency
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
from napari_metseg.training.evaluation import evaluate_network
from napari_metseg.training.sampling import SliceSampler, make_batch

logger = logging.getLogger(__name__)

#: Settings a resumed run may change: how long and how often, where, and on what.
RESUMABLE_CHANGES = frozenset(
    {"iterations", "val_interval", "log_interval", "resume", "device", "out_dir", "workers"}
)


@dataclass
class TrainResult:
    """What a run produced.

    ``best_model``: model file with the best validation mAP (None without
    validation cases); ``final_model``: the weights after the last iteration;
    ``best_score`` / ``best_iteration``: that mAP and when; ``validations``:
    one dict of scores per validation; ``final_loss``: mean loss of the last
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


def model_config(config: TrainConfig) -> ModelConfig:
    """The model description a training configuration implies."""
    return ModelConfig(
        sequences=tuple(config.sequences),
        integration=config.integration,
        sharing=config.sharing,
        backbone=config.backbone,
        output_stride=config.output_stride,
        decoder=config.decoder,
        preprocess=PreprocessConfig(size=config.size, context=config.context),
    )


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """The learning rate at ``iteration`` (0-based) under ``config.lr_schedule``."""
    if config.lr_schedule == "constant":
        return config.lr
    return config.lr * (1.0 - iteration / config.iterations) ** 0.9


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


class _Run:
    """The mutable state of one run (model, optimiser, logs), for the main loop."""

    def __init__(self, config: TrainConfig, context: DistributedContext) -> None:
        self.config = config
        self.context = context
        self.out = Path(config.out_dir)
        self.model_config = model_config(config)
        torch.manual_seed(config.seed)
        self.network = build_model(self.model_config).to(context.device)
        self.model: nn.Module = self.network
        if context.distributed:
            device_ids = [context.device.index] if context.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.network, device_ids=device_ids)
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.use_amp = config.amp and context.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.loss = make_loss(config.loss, config.alpha, config.beta)
        self.saliency = CumulativeSaliency(tuple(config.sequences), config.context)
        self.iteration = 0
        self.best_score = -math.inf
        self.best_iteration = -1
        self.validations: list[dict[str, Any]] = []

    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        state = {
            "iteration": self.iteration,
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_score": self.best_score,
            "best_iteration": self.best_iteration,
            "saliency": self.saliency.state(),
            "validations": self.validations,
            "config": self.config.to_json(),
        }
        partial = self.checkpoint_path().with_suffix(".tmp")
        torch.save(state, partial)
        partial.replace(self.checkpoint_path())

    def load_checkpoint(self) -> None:
        path = self.checkpoint_path()
        state = torch.load(path, map_location=self.context.device, weights_only=False)
        saved, wanted = state["config"], self.config.to_json()
        changed = sorted(
            key
            for key in set(saved) | set(wanted)
            if key not in RESUMABLE_CHANGES and saved.get(key) != wanted.get(key)
        )
        if changed:
            raise ReadError(
                f"cannot resume from {path}: it was trained with other settings ({changed}); "
                "use another out_dir or delete the checkpoint"
            )
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.best_score = float(state["best_score"])
        self.best_iteration = int(state["best_iteration"])
        self.saliency.load_state(state["saliency"])
        self.validations = list(state["validations"])
        logger.info("resumed from %s at iteration %d", path, self.iteration)


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
    train_specs, val_specs = gather_specs(config)
    preprocess = PreprocessConfig(size=config.size, context=config.context)
    shared = {
        "sequences": config.sequences,
        "config": preprocess,
        "censor_rate": config.censor_rate,
        "censor_mode": config.censor_mode,
        "mapping": config.mapping,
        "phantom_spacing": config.phantom_spacing,
        "phantom_min_diameter": config.phantom_min_diameter,
        "cache_dir": config.cache_dir,
        "cancel": cancel,
        "workers": config.workers,
    }
    report = progress if context.main else no_progress
    train_cases, record = prepare_cases(
        train_specs, censor_seed=config.seed, progress=report, **shared
    )
    val_cases, val_record = prepare_cases(
        val_specs, censor_seed=config.seed + 1, progress=report, **shared
    )
    if context.main and config.censor_rate > 0:
        (out / "censoring.json").write_text(
            json.dumps({"train": record.to_json(), "val": val_record.to_json()}, indent=1)
        )
    sampler = SliceSampler(train_cases, config.oversample, config.size_aware_sampling)
    logger.info(
        "%d training cases (%d slices, %d with lesions), %d validation cases",
        len(train_cases),
        len(sampler),
        int(sampler.lesion.sum()),
        len(val_cases),
    )
    run = _Run(config, context)
    if config.resume and run.checkpoint_path().exists():
        run.load_checkpoint()
    barrier(context)
    rng = np.random.default_rng([config.seed, context.rank, run.iteration])
    interval_losses: list[float] = []
    final_loss = math.nan
    val_present = _validation_presence(config)
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
        interval_losses.append(_step(run, train_cases, sampler, rng))
        run.iteration += 1
        if run.iteration % config.log_interval == 0 or run.iteration == config.iterations:
            final_loss = mean_across(context, float(np.mean(interval_losses)))
            interval_losses = []
            if context.main:
                _log_row(run, final_loss, lr, time.perf_counter() - started)
        validate_now = (
            run.iteration % config.val_interval == 0 or run.iteration == config.iterations
        )
        if validate_now:
            if context.main:
                if val_cases:
                    _validate(run, val_cases, val_present)
                run.save_checkpoint()
                _plot(out, config)
            barrier(context)
        if context.main:
            progress(run.iteration, config.iterations, f"loss {final_loss:.4f}")
    broadcast_buffers(context, run.network)
    digests = gather_strings(context, weights_digest(run.network))
    final_path = out / "final"
    if context.main:
        _save(run, final_path, {"iterations": run.iteration, "final_loss": final_loss})
    seconds = time.perf_counter() - started
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


def _validation_presence(config: TrainConfig) -> np.ndarray:
    if not config.val_sequences:
        return np.ones(len(config.sequences), dtype=bool)
    return np.array([name in config.val_sequences for name in config.sequences])


def _step(
    run: _Run,
    cases: list[TrainingCase],
    sampler: SliceSampler,
    rng: np.random.Generator,
) -> float:
    config, device = run.config, run.context.device
    picks = sampler.sample(rng, config.batch_size)
    x, y, present = make_batch(cases, picks, config.context, rng if config.flip else None)
    inputs = torch.from_numpy(x).to(device).float()
    target = torch.from_numpy(y).to(device)
    presence = torch.from_numpy(present).to(device)
    if config.sequence_dropout:
        generator = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        inputs, presence = sequence_dropout(
            inputs,
            len(config.sequences),
            p=config.dropout_rate,
            generator=generator,
            available=presence,
        )
    else:
        inputs = apply_presence(inputs, presence)
    inputs.requires_grad_(True)
    run.model.train()
    with torch.autocast(device.type, dtype=torch.float16, enabled=run.use_amp):
        logits = run.model(inputs)
    loss = run.loss(logits.float(), target)
    if config.sharing == "l2_tied":
        loss = loss + config.tied_weight * run.network.tied_penalty()
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    scale = run.scaler.get_scale()  # the input gradient below is scaled by it too
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.saliency.update(inputs.grad / scale)
    return float(loss.detach())


def _validate(run: _Run, cases: list[TrainingCase], present: np.ndarray) -> None:
    try:
        pooled, evaluations = evaluate_network(
            run.network, cases, present, run.config.context, run.context.device, run.use_amp
        )
    except SequenceError as error:
        raise ReadError(
            f"no validation case holds any of the validation sequences {run.config.val_sequences}"
        ) from error
    score = pooled.average_precision
    score = 0.0 if math.isnan(score) else score
    improved = score > run.best_score
    row = {
        "iteration": run.iteration,
        "average_precision": pooled.average_precision,
        "max_sensitivity": pooled.max_sensitivity,
        "tp_dice": pooled.tp_dice,
        "n_lesions": pooled.n_lesions,
        "n_candidates": pooled.n_candidates,
        "false_positives_per_case": pooled.false_positives_per_case,
        "best": improved,
    }
    run.validations.append(row)
    _append_csv(run.out / "validation.csv", row)
    logger.info(
        "iteration %d: validation mAP %.3f, max sensitivity %.3f, TP Dice %.3f%s",
        run.iteration,
        pooled.average_precision,
        pooled.max_sensitivity,
        pooled.tp_dice,
        " (best so far)" if improved else "",
    )
    if improved:
        run.best_score = score
        run.best_iteration = run.iteration
        metrics = {key: value for key, value in row.items() if key != "best"}
        metrics["val_sequences"] = list(run.config.val_sequences or run.config.sequences)
        metrics["n_cases"] = len(evaluations)
        _save(run, run.out / "best", {"validation": metrics})


def _save(run: _Run, path: Path, metadata: dict[str, Any]) -> None:
    training = {"config": run.config.to_json(), **metadata}
    save_model(run.network, path, {"training": training})


def _log_row(run: _Run, loss: float, lr: float, seconds: float) -> None:
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
    _append_csv(run.out / "log.csv", row)


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _plot(out: Path, config: TrainConfig) -> None:
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
