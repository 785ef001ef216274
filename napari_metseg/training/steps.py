"""What one iteration of the loop does: the learning rate, a training step, a validation.

A step draws slices, applies sequence dropout (or the cases' own presence),
takes an AdamW step under mixed precision on CUDA and adds the input gradient
to the cumulative saliency (METHOD.md "Saliency"). A validation scores the
validation cases through the engine (:func:`~napari_metseg.training.evaluation.evaluate_network`)
and keeps the best model by mAP: with ``val_each_off``, by the mean mAP over the
validation sequences and each of them switched off in turn, because a checkpoint
chosen on all four alone can serve the other subsets badly (the bundled v7 drew
5.4 false positives per case with all four, 36.9 without ``cube_post``). Used by
:mod:`napari_metseg.training.loop`.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from napari_metseg.errors import ReadError, SequenceError
from napari_metseg.metrics import DatasetEvaluation
from napari_metseg.model import apply_presence, sequence_dropout
from napari_metseg.presence import each_one_off
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


def validation_sets(config: TrainConfig) -> dict[str, np.ndarray]:
    """Label -> bool ``(n_seq,)``: the sequences switched on in each validation set.

    First ``"all"``, the validation sequences (all by default); with
    ``val_each_off``, then ``"without <name>"`` for each of them (when at least
    two are on).
    """
    present = [name for name in config.sequences if name in (config.val_sequences or [name])]
    runs = each_one_off(present) if config.val_each_off else [(None, present)]
    return {
        "all" if off is None else f"without {off}": np.isin(config.sequences, subset)
        for off, subset in runs
    }


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


def validate(run: TrainingRun, cases: list[TrainingCase], sets: dict[str, np.ndarray]) -> None:
    """Score the validation cases with each of :func:`validation_sets`'s ``sets``; a better
    ``score`` (the mean mAP over the sets) than so far saves ``best/``."""
    results = {label: _evaluate(run, cases, label, present) for label, present in sets.items()}
    everything, n_cases = results["all"]
    scores = {
        label: 0.0 if math.isnan(pooled.average_precision) else pooled.average_precision
        for label, (pooled, _) in results.items()
    }
    score = float(np.mean(list(scores.values())))
    improved = score > run.best_score
    row = {
        "iteration": run.iteration,
        "average_precision": everything.average_precision,
        "max_sensitivity": everything.max_sensitivity,
        "tp_dice": everything.tp_dice,
        "n_lesions": everything.n_lesions,
        "n_candidates": everything.n_candidates,
        "false_positives_per_case": everything.false_positives_per_case,
        **{
            f"average_precision_{label.replace(' ', '_')}": value
            for label, value in scores.items()
            if label != "all"
        },
        "score": score,
        "best": improved,
    }
    run.validations.append(row)
    append_csv(run.out / "validation.csv", row)
    logger.info(
        "iteration %d: validation mAP %.3f, max sensitivity %.3f, TP Dice %.3f, score %.3f%s",
        run.iteration,
        everything.average_precision,
        everything.max_sensitivity,
        everything.tp_dice,
        score,
        " (best so far)" if improved else "",
    )
    if improved:
        run.best_score = score
        run.best_iteration = run.iteration
        metrics = {key: value for key, value in row.items() if key != "best"}
        metrics["val_sequences"] = list(run.config.val_sequences or run.config.sequences)
        metrics["n_cases"] = n_cases
        run.save_model(run.out / "best", {"validation": metrics})


def _evaluate(
    run: TrainingRun, cases: list[TrainingCase], label: str, present: np.ndarray
) -> tuple[DatasetEvaluation, int]:
    """Pooled scores of the validation set ``label`` and how many cases it scored."""
    try:
        pooled, evaluations = evaluate_network(run.network, cases, present, run.context.device)
    except SequenceError as error:
        names = ", ".join(np.asarray(run.config.sequences)[present])
        raise ReadError(
            f"no validation case holds any of the sequences of validation set {label!r} ({names})"
        ) from error
    return pooled, len(evaluations)
