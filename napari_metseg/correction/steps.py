"""The optimisation inside one attempt of a round: samples as tensors, forward passes, steps.

Every sample is fed under ``dropout_draws`` presence draws (draw 0 the case's
own sequences, the others sequence dropout, METHOD.md), each with the frozen
input model's view of it; fast mode caches the frozen part's features of every
draw once per round, full mode runs the whole network. AdamW then trains on
batches of ``(draw, sample)`` pairs with the corrected slices oversampled.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from napari_metseg.correction.config import FinetuneConfig
from napari_metseg.correction.objective import correction_loss, lesion_margin
from napari_metseg.correction.samples import LESION, CorrectionSamples
from napari_metseg.losses import weighted_ce
from napari_metseg.model import MetsegNet, apply_presence, sequence_dropout
from napari_metseg.model.heads import Features
from napari_metseg.preprocess import PreparedCase, stack_25d
from napari_metseg.progress import ProgressCallback, check_cancel

#: Slices per forward pass when caching or scoring samples.
CHUNK = 8


@dataclass
class Batches:
    """The samples of a round as tensors: ``draws`` input variants of every sample.

    Draw 0 holds the case's own sequences, the others independent
    sequence-dropout draws. ``teacher`` ``(draws, n, H, W)`` is the input
    model's lesion logit for each variant: a sample is always held to what the
    frozen model said about the same input, so dropout does not pull the
    prediction of the full input anywhere (holding dropped inputs to the full
    input's prediction moved the lesion volume by 190 cm^3 in 30 steps).
    """

    samples: CorrectionSamples
    marks: torch.Tensor
    teacher: torch.Tensor
    inputs: torch.Tensor
    size: tuple[int, int]

    def pick(self, rng: np.random.Generator, picks: np.ndarray) -> np.ndarray:
        """A random draw for each picked sample."""
        return rng.integers(0, self.inputs.shape[0], size=picks.size)


class Passes:
    """The mode's forward pass over ``(draw, sample)`` pairs and its trainable parameters.

    Fast mode caches what the frozen part computes for every draw once per
    round (every attempt starts from the same frozen part).
    """

    def __init__(self, batches: Batches, mode: str, base: MetsegNet, device: torch.device):
        self.batches, self.mode, self.device = batches, mode, device
        self.features: Features | None = None
        if mode == "fast":
            with torch.no_grad():
                self.features = Features.stack(
                    [
                        Features.cat([base.features(part.to(device)) for part in draw.split(CHUNK)])
                        for draw in batches.inputs
                    ]
                )

    def logits(self, network: MetsegNet, draws: np.ndarray, picks: np.ndarray) -> torch.Tensor:
        if self.features is not None:
            return network.head(self.features[draws, picks])
        return network(self.batches.inputs[draws, picks].to(self.device))

    def parameters(self, network: MetsegNet) -> list[torch.nn.Parameter]:
        return network.head_parameters() if self.mode == "fast" else list(network.parameters())


def make_batches(
    base: MetsegNet,
    prepared: PreparedCase,
    samples: CorrectionSamples,
    config: FinetuneConfig,
    device: torch.device,
) -> Batches:
    """Sample tensors under ``config.dropout_draws`` presence draws and the teacher's view of each."""
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
    with torch.inference_mode():
        teacher = torch.stack(
            [
                torch.cat([lesion_margin(base(part.to(device))) for part in draw.split(CHUNK)])
                for draw in inputs
            ]
        )
    marks = torch.from_numpy(samples.marks).to(device)
    return Batches(samples, marks, teacher.clone(), inputs, tuple(x.shape[-2:]))


def train_steps(
    network: MetsegNet,
    passes: Passes,
    config: FinetuneConfig,
    lr: float,
    iterations: int,
    rng: np.random.Generator,
    progress: ProgressCallback,
    cancel: threading.Event | None,
) -> list[float]:
    """AdamW steps on ``network`` in place; returns the loss of every step."""
    batches = passes.batches
    trainable = passes.parameters(network)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    for parameter in trainable:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=config.weight_decay)
    weights = np.where(batches.samples.corrected, config.oversample, 1.0)
    weights /= weights.sum()
    losses: list[float] = []
    for step in range(iterations):
        check_cancel(cancel)
        picks = rng.choice(len(weights), size=config.batch_size, p=weights)
        draws = batches.pick(rng, picks)
        loss = correction_loss(
            passes.logits(network, draws, picks),
            batches.marks[picks],
            batches.teacher[draws, picks],
            unmarked=config.unmarked,
            alpha=config.alpha,
            beta=config.beta,
            keep_threshold=config.keep_threshold,
            stroke_weight=config.stroke_weight,
            stroke_share=config.stroke_share,
            anchor_weight=config.anchor_weight,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        progress(step + 1, iterations, f"fine-tuning ({passes.mode}): loss {losses[-1]:.4f}")
    for parameter in network.parameters():
        parameter.requires_grad_(True)
    return losses


def corrected_loss(passes: Passes, network: MetsegNet, picks: np.ndarray, alpha: float) -> float:
    """Class-weighted CE of ``network`` on the marked voxels of the corrected samples."""
    with torch.no_grad():
        logits = torch.cat(
            [
                passes.logits(network, np.zeros_like(chunk), chunk)
                for chunk in np.array_split(picks, max(1, -(-picks.size // CHUNK)))
            ]
        )
    marks = passes.batches.marks[picks]
    return float(weighted_ce(logits, (marks == LESION).long(), alpha, ignore=marks == 0))
