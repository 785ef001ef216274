"""The optimisation inside one attempt of a round: samples as tensors, forward passes, steps.

Every sample is fed under ``dropout_draws`` presence draws (draw 0 the case's
own sequences, the others sequence dropout, METHOD.md), each with the frozen
input model's view of it. Lesion strokes count on draw 0 only: a lesion the
annotator saw with the case's sequences may be invisible without some of
them, and asking for it there teaches the round to call faint spots lesion;
under the other draws their voxels are left free. Fast mode caches the frozen
part (everything before :meth:`MetsegNet.decode`) of every draw once per
round and trains the decoder; every step also anchors ``random_slices``
slices drawn afresh from the whole case
(:class:`~napari_metseg.correction.cache.CaseContext`), so the teacher holds
the prediction on every slice of the case, not on the four a fixed sample
would show it. Full mode runs and trains the whole network, with
``random_slices`` fixed random samples. AdamW then trains on batches of
``(draw, sample)`` pairs with the corrected slices oversampled. After an
attempt that sprouted new candidates, the retry anchors the slices that hold
them in every batch as well (:meth:`Batches.hold_slices`).

Fast mode also holds the whole case in every step
(:class:`~napari_metseg.correction.hold.CaseHold`), as cells of the decoder's input: the band of every cell within a few logits
under the candidate threshold (every base candidate with them), and the
``risers``, the cells under the band the round is lifting most, re-mined
from the whole case every ``mine_every`` steps. Every step of a fast round
also holds every stroke, with the case's own sequences: a few random samples
per step show a stroke in one step of four. Measured on case 9000 of the
correction benchmark (bundled model, one 3x3 dab on a 1-voxel lesion whose
decoder cell ranks 5,326th of its case by the base logit):
holding every one of the case's 460,000 cells in every step, 300 steps
(190 s) lifted the dab from logit -7.3 to +4.0 with no other cell crossing
the threshold, so the frozen features do separate it; a probe holding the
band (20,000 cells) and the strokes only lifted it to +3.1 in 150 steps
(8 s). In a round, 100 steps with the band but the strokes in a random
sample left the lesion at p 0.005; with every stroke in every step and the
bag centred on the dab (``objective.stroke_peaks``), at 0.25-0.5: found.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from napari_metseg.correction.cache import CHUNK, CaseContext
from napari_metseg.correction.config import FinetuneConfig
from napari_metseg.correction.hold import CaseHold
from napari_metseg.correction.objective import (
    correction_loss,
    lesion_logit,
    near_lesion_strokes,
    stroke_loss,
    stroke_peaks,
    threshold_logit,
)
from napari_metseg.correction.samples import LESION, CorrectionSamples
from napari_metseg.model import MetsegNet, apply_presence, sequence_dropout
from napari_metseg.model.heads import Features
from napari_metseg.preprocess import PreparedCase, stack_25d
from napari_metseg.progress import ProgressCallback, check_cancel


@dataclass
class Batches:
    """The samples of a round as tensors: ``draws`` input variants of every sample.

    Draw 0 holds the case's own sequences, the others independent
    sequence-dropout draws. ``teacher`` ``(draws, n, H, W)`` is the input
    model's lesion logit for each variant: a sample is always held to what the
    frozen model said about the same input, so dropout does not pull the
    prediction of the full input anywhere (holding dropped inputs to the full
    input's prediction moved the lesion volume by 190 cm^3 in 30 steps).
    ``free`` ``(n, H, W)``: voxels near lesion strokes, left out of the anchor.
    ``context``: fast mode's cached frozen part of every ``(draw, sample)``,
    ``None`` in full mode; ``pool``: fast mode's whole-case cache, the slices
    it may anchor besides the samples (``pool_slices``: the tissue slices
    that carry no corrections); ``case_hold``: what it holds of the case in
    every step (fast mode).
    """

    samples: CorrectionSamples
    marks: torch.Tensor
    free: torch.Tensor
    teacher: torch.Tensor
    inputs: torch.Tensor
    context: Features | None
    pool: CaseContext | None
    pool_slices: np.ndarray
    mode: str
    device: torch.device
    case_hold: CaseHold | None = None
    held_slices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def hold_slices(self, slices: np.ndarray) -> None:
        """Anchor these case slices (where an attempt sprouted new candidates) in every later
        batch, besides the random ones (fast mode; full mode has no whole-case cache)."""
        if self.pool is not None:
            rows = np.flatnonzero(np.isin(self.pool.slices, slices))
            rows = rows[np.isin(rows, self.pool_slices)]
            self.held_slices = np.union1d(self.held_slices, rows)

    def parameters(self, network: MetsegNet) -> list[torch.nn.Parameter]:
        """What the mode trains: the decoder (fast) or every weight (full)."""
        return network.decoder_parameters() if self.mode == "fast" else list(network.parameters())

    def batch(
        self, network: MetsegNet, picks: np.ndarray, draws: np.ndarray, extra: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, marks, teacher and free voxels of ``(draw, sample)`` pairs plus ``extra``
        rows of the case cache (unmarked)."""
        marks, free, teacher = self.marks[picks], self.free[picks], self.teacher[draws, picks]
        dropped = torch.from_numpy(draws > 0).to(marks.device)[:, None, None]
        free = free | (dropped & (marks == LESION))
        marks = torch.where(dropped & (marks == LESION), torch.zeros_like(marks), marks)
        if self.context is None:
            return network(self.inputs[draws, picks].to(self.device)), marks, teacher, free
        logits = network.decode(self.context[draws, picks])
        if extra.size:
            logits = torch.cat([logits, network.decode(self.pool.context[extra])])
            marks = torch.cat([marks, torch.zeros_like(marks[:1]).expand(extra.size, -1, -1)])
            free = torch.cat([free, torch.zeros_like(free[:1]).expand(extra.size, -1, -1)])
            teacher = torch.cat([teacher, self.pool.teacher[extra]])
        return logits, marks, teacher, free


def make_batches(
    base: MetsegNet,
    prepared: PreparedCase,
    samples: CorrectionSamples,
    config: FinetuneConfig,
    mode: str,
    device: torch.device,
    pool: CaseContext | None = None,
) -> Batches:
    """Sample tensors under ``config.dropout_draws`` presence draws and the teacher's view of each.

    Fast mode (``pool`` given) computes the frozen part once per ``(draw,
    sample)`` and the teacher from it.
    """
    x = torch.from_numpy(stack_25d(prepared.volumes, samples.slices, prepared.config.context))
    x = x.float()
    available = torch.from_numpy(prepared.present).expand(x.shape[0], -1)
    generator = torch.Generator().manual_seed(config.seed)
    sequences = len(base.config.sequences)
    inputs = torch.stack(
        [apply_presence(x, available)]
        + [
            sequence_dropout(x, sequences, config.dropout_rate, generator, available)[0]
            for _ in range(config.dropout_draws - 1)
        ]
    )
    context = None
    with torch.no_grad():
        if pool is not None:
            context = Features.stack(
                [
                    Features.cat(
                        [base.context(base.features(part.to(device))) for part in draw.split(CHUNK)]
                    )
                    for draw in inputs
                ]
            )
            teacher = torch.stack(
                [lesion_logit(base.decode(context[d])) for d in range(inputs.shape[0])]
            )
        else:
            teacher = torch.stack(
                [
                    torch.cat([lesion_logit(base(part.to(device))) for part in draw.split(CHUNK)])
                    for draw in inputs
                ]
            )
    marks = torch.from_numpy(samples.marks).to(device)
    free = near_lesion_strokes(marks, config.lesion_margin)
    pool_slices = np.zeros(0, dtype=np.int64)
    case_hold = None
    if pool is not None:
        pool_slices = np.flatnonzero(~np.isin(pool.slices, samples.slices[samples.corrected]))
        cut = threshold_logit(config.trust.threshold)
        corrected = torch.from_numpy(samples.corrected).to(marks.device)
        peaks = stroke_peaks(teacher[0, corrected], marks[corrected] == LESION, config.centre_bias)
        lowest = min([cut - config.hold_band, *(peaks - config.hold_gap).tolist()])
        case_hold = CaseHold.find(
            base, pool, samples, config.lesion_margin, lowest, config.band_cells
        )
    return Batches(
        samples, marks, free, teacher, inputs, context, pool, pool_slices, mode, device, case_hold
    )


def train_steps(
    network: MetsegNet,
    batches: Batches,
    config: FinetuneConfig,
    lr: float,
    iterations: int,
    rng: np.random.Generator,
    progress: ProgressCallback,
    cancel: threading.Event | None,
    check: Callable[[int], bool] | None = None,
) -> list[float]:
    """AdamW steps on ``network`` in place; returns the loss of every step.

    ``check(steps_done)`` runs after every ``config.check_every`` steps and
    after the last; when it returns True the training stops there (and the
    progress reads done).
    """
    trainable = batches.parameters(network)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    for parameter in trainable:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=config.weight_decay)
    corrected = np.flatnonzero(batches.samples.corrected)
    weights = np.where(batches.samples.corrected, config.oversample, 1.0)
    weights /= weights.sum()
    extra_count = min(config.random_slices, batches.pool_slices.size)
    losses: list[float] = []
    if batches.case_hold is not None:
        batches.case_hold.forget_risers()  # an attempt starts again from the input model
    for step in range(iterations):
        check_cancel(cancel)
        picks = rng.choice(len(weights), size=config.batch_size, p=weights)
        draws = rng.integers(0, batches.inputs.shape[0], size=picks.size)
        if batches.pool is not None:  # fast mode: every stroke, with the case's own sequences
            picks = np.concatenate([corrected, picks])
            draws = np.concatenate([np.zeros_like(corrected), draws])
        extra = rng.choice(batches.pool_slices, size=extra_count, replace=False)
        if batches.held_slices.size:
            held = rng.choice(batches.held_slices, size=min(extra_count, batches.held_slices.size))
            extra = np.concatenate([extra, held])
        logits, marks, teacher, free = batches.batch(network, picks, draws, extra)
        loss = correction_loss(
            logits,
            marks,
            teacher,
            free=free,
            unmarked=config.unmarked,
            alpha=config.alpha,
            beta=config.beta,
            keep_threshold=config.keep_threshold,
            stroke_share=config.stroke_share,
            stroke_target=config.stroke_target,
            centre_bias=config.centre_bias,
            anchor_weight=config.anchor_weight,
            hold_weight=config.hold_weight,
            hold_gap=config.hold_gap,
            threshold=config.trust.threshold,
        )
        case_hold = batches.case_hold
        if case_hold is not None and config.unmarked != "ignore":
            # at step 0 the network is the base model: nothing has risen yet
            if config.risers and step and step % config.mine_every == 0:
                case_hold.mine(network, config.risers, config.trust.threshold, config.hold_gap)
            held = case_hold.hold(network, config.trust.threshold, config.hold_gap)
            risen = case_hold.hold_risers(network, config.trust.threshold, config.hold_gap)
            loss = loss + config.hold_weight * held + config.riser_weight * risen
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        progress(step + 1, iterations, f"fine-tuning ({batches.mode}): loss {losses[-1]:.4f}")
        done = step + 1
        at_check = done % config.check_every == 0 or done == iterations
        if check is not None and at_check and check(done):
            progress(iterations, iterations, f"fine-tuning ({batches.mode}): done at step {done}")
            break
    for parameter in network.parameters():
        parameter.requires_grad_(True)
    return losses


def corrected_loss(
    batches: Batches, network: MetsegNet, picks: np.ndarray, config: FinetuneConfig
) -> float:
    """The strokes' term (:func:`stroke_loss`) of ``network`` on the corrected samples, with
    the case's own sequences: 0 once every stroke is answered."""
    none = np.zeros(0, dtype=np.int64)
    with torch.no_grad():
        logits = torch.cat(
            [
                batches.batch(network, chunk, np.zeros_like(chunk), none)[0]
                for chunk in np.array_split(picks, max(1, -(-picks.size // CHUNK)))
            ]
        )
    return float(
        stroke_loss(
            lesion_logit(logits),
            batches.marks[picks],
            config.alpha,
            config.stroke_target,
            config.trust.threshold,
            config.centre_bias,
        )
    )
