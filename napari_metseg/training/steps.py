"""What one iteration of the loop does: the learning rate, a training step, a validation.

A step draws slices, applies sequence dropout (or the cases' own presence),
takes an AdamW step under mixed precision on CUDA and adds the input gradient
to the cumulative saliency (METHOD.md "Saliency"). A validation scores the
validation cases through the engine (:func:`~napari_metseg.training.evaluation.evaluate_network`)
and keeps the best model by mAP. Used by :mod:`napari_metseg.training.loop`.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from napari_metseg.errors import ReadError, SequenceError
from napari_metseg.model import apply_presence, sequence_dropout
from napari_metseg.training.config import TrainConfig
from napari_metseg.training.datasets import TrainingCase
from napari_metseg.training.evaluation import evaluate_network
from napari_metseg.training.records import append_csv
from napari_metseg.training.run import TrainingRun
from napari_metseg.training.sampling import SliceSampler, SliceSource, make_batch

logger = logging.getLogger(__name__)


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """The learning rate at ``iteration`` (0-based) under ``config.lr_schedule``."""
    if config.lr_schedule == "constant":
        return config.lr
    return config.lr * (1.0 - iteration / config.iterations) ** 0.9


def validation_presence(config: TrainConfig) -> np.ndarray:
    """Bool ``(n_seq,)``: the sequences switched on in validation (all by default)."""
    if not config.val_sequences:
        return np.ones(len(config.sequences), dtype=bool)
    return np.array([name in config.val_sequences for name in config.sequences])


def train_step(
    run: TrainingRun,
    sources: list[SliceSource],
    sampler: SliceSampler,
    rng: np.random.Generator,
) -> float:
    """One optimiser step on a drawn batch; adds the input gradient to the saliency. Returns the loss."""
    config, device = run.config, run.context.device
    picks = sampler.sample(rng, config.batch_size)
    x, y, present = make_batch(sources, picks, config.context, rng if config.flip else None)
    inputs, target, presence = x.to(device).float(), y.to(device), present.to(device)
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
    inputs = inputs.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    run.model.train()
    with torch.autocast(
        device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None
    ):
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


def validate(run: TrainingRun, cases: list[TrainingCase], present: np.ndarray) -> None:
    """Score the validation cases; a better mAP than so far saves ``best/``."""
    try:
        pooled, evaluations = evaluate_network(run.network, cases, present, run.context.device)
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
    append_csv(run.out / "validation.csv", row)
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
        run.save_model(run.out / "best", {"validation": metrics})
