"""One round of the active-correction loop: fine-tune on the strokes, check, predict.

:func:`finetune` trains a copy of the model on the slices that carry
corrections plus a few neighbouring and random slices
(:mod:`~napari_metseg.correction.samples`), with the stroke-plus-teacher
objective of :mod:`~napari_metseg.correction.objective`. It then segments
the whole case with the new model and holds the result against the trust
region (:mod:`~napari_metseg.correction.trust`): a round that would add more
lesion far from the strokes than the bound allows is retried from the input
model with half the step size and half the steps, up to ``backoffs`` times,
and refused with :class:`~napari_metseg.errors.RunawayError` after that. The
returned probability is the one the caller shows: no second segmentation.

Two modes:

- ``fast`` (default on CPU): the part of the network before the head is
  frozen; its features for every sample are computed once and only the head
  trains. Sequence dropout stays on by caching ``dropout_draws`` feature maps
  per slice: draw 0 with the case's own sequences, the others under
  independent sequence-dropout draws; each step picks one draw per sample.
- ``full`` (default on GPU): all weights train, with a fresh sequence-dropout
  draw every step.

Batch-norm statistics stay frozen in both modes (the network runs in eval
mode): a batch of a few slices of one case would otherwise overwrite
statistics gathered over a whole training set.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from napari_metseg.case import Case
from napari_metseg.correction.objective import UNMARKED_MODES, correction_loss, lesion_margin
from napari_metseg.correction.samples import (
    LESION,
    NOT_LESION,
    CorrectionSamples,
    check_corrections,
    select_samples,
)
from napari_metseg.correction.trust import Growth, TrustRegion, away_from_strokes, lesion_growth
from napari_metseg.engine import Presence, Segmenter, presence_flags, resolve_device
from napari_metseg.errors import GeometryError, RunawayError
from napari_metseg.losses import weighted_ce
from napari_metseg.model import MetsegNet, apply_presence, sequence_dropout
from napari_metseg.model.heads import Features
from napari_metseg.preprocess import PreparedCase, prepare_case, restore_slices, stack_25d
from napari_metseg.progress import ProgressCallback, check_cancel, no_progress

logger = logging.getLogger(__name__)

#: Fine-tuning modes; ``auto`` is ``full`` on CUDA and ``fast`` elsewhere.
MODES: tuple[str, ...] = ("auto", "fast", "full")
#: Default learning rate per mode (AdamW).
DEFAULT_LR = {"fast": 1e-4, "full": 2e-5}
#: Slices per forward pass when scoring samples.
CHUNK = 8


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning round (the objective's terms are in ``objective``).

    ``iterations`` AdamW steps of ``batch_size`` samples at ``lr`` (None:
    :data:`DEFAULT_LR` of the mode); corrected slices are ``oversample``
    times as likely as the neighbouring (``neighbours`` per side) and
    ``random_slices`` others. ``trust`` bounds what may change away from the
    strokes; ``backoffs`` retries with half the steps and step size before a
    round is refused. ``dropout_rate``: sequence dropout probability;
    ``dropout_draws``: cached draws per slice in fast mode.
    """

    mode: str = "auto"
    unmarked: str = "teacher"
    alpha: float = 3.0
    beta: float = 0.1
    keep_threshold: float = 0.5
    stroke_weight: float = 100.0
    stroke_share: float = 0.05
    anchor_weight: float = 1.0
    iterations: int = 30
    batch_size: int = 4
    lr: float | None = None
    weight_decay: float = 0.0
    neighbours: int = 1
    random_slices: int = 4
    oversample: float = 3.0
    dropout_rate: float = 0.25
    dropout_draws: int = 3
    trust: TrustRegion = TrustRegion()
    backoffs: int = 2
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.unmarked not in UNMARKED_MODES:
            raise ValueError(
                f"unmarked must be one of {list(UNMARKED_MODES)}, got {self.unmarked!r}"
            )
        for name in ("iterations", "batch_size", "dropout_draws"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must lie in [0, 1), got {self.dropout_rate}")
        if self.oversample <= 0 or self.stroke_weight <= 0 or not 0 < self.stroke_share <= 1:
            raise ValueError(
                "oversample and stroke_weight must be > 0 and stroke_share in (0, 1], got "
                f"{self.oversample}, {self.stroke_weight}, {self.stroke_share}"
            )
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.backoffs < 0:
            raise ValueError(f"backoffs must be >= 0, got {self.backoffs}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        data = dict(data)
        if isinstance(data.get("trust"), dict):
            data["trust"] = TrustRegion(**data["trust"])
        return cls(**data)


@dataclass
class FinetuneResult:
    """A fine-tuned model, its prediction of the case and how the round went.

    ``probability``: float32 on the case grid, with the sequences the round
    saw. ``corrected_loss_before`` / ``_after``: class-weighted CE on the
    marked voxels (case's own sequences) before and after training.
    ``losses``: the training loss of every step of the accepted attempt.
    ``growth``: the trust-region reading; ``attempts``: tries it took.
    """

    model: MetsegNet
    probability: np.ndarray
    config: FinetuneConfig
    mode: str
    lr: float
    losses: list[float]
    corrected_loss_before: float
    corrected_loss_after: float
    growth: Growth
    attempts: int
    n_samples: int
    n_lesion_voxels: int
    n_not_lesion_voxels: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        """JSON-ready summary (no model, no volume), for version records."""
        return {
            "mode": self.mode,
            "lr": self.lr,
            "attempts": self.attempts,
            "corrected_loss_before": self.corrected_loss_before,
            "corrected_loss_after": self.corrected_loss_after,
            "final_loss": self.losses[-1] if self.losses else None,
            "growth_mm3": {
                "base": self.growth.base_mm3,
                "new": self.growth.new_mm3,
                "allowed": self.growth.allowed_mm3,
            },
            "n_samples": self.n_samples,
            "n_lesion_voxels": self.n_lesion_voxels,
            "n_not_lesion_voxels": self.n_not_lesion_voxels,
            "seconds": round(self.seconds, 3),
            "timings": {key: round(value, 3) for key, value in self.timings.items()},
        }


@dataclass
class _Batches:
    """The samples of a round as tensors: ``draws`` input variants of every sample.

    Draw 0 holds the case's own sequences, the others independent
    sequence-dropout draws. ``teacher`` ``(draws, n, H, W)`` is the input
    model's probability for each variant: a sample is always held to what the
    frozen model said about the same input, so dropout does not pull the
    prediction of the full input anywhere.
    """

    samples: CorrectionSamples
    marks: torch.Tensor
    teacher: torch.Tensor
    inputs: torch.Tensor
    size: tuple[int, int]

    def pick(self, rng: np.random.Generator, picks: np.ndarray) -> np.ndarray:
        """A random draw for each picked sample."""
        return rng.integers(0, self.inputs.shape[0], size=picks.size)


class _Passes:
    """The mode's forward pass over ``(draw, sample)`` pairs and its trainable parameters.

    Fast mode caches what the frozen part computes for every draw once per
    round (every attempt starts from the same frozen part).
    """

    def __init__(self, batches: _Batches, mode: str, base: MetsegNet, device: torch.device):
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


def finetune(
    case: Case,
    model: MetsegNet,
    corrections: np.ndarray,
    config: FinetuneConfig = FinetuneConfig(),
    present: Presence = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    *,
    prepared: PreparedCase | None = None,
    reference: np.ndarray | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``model`` on the ``corrections`` of ``case``; ``model`` is untouched.

    ``corrections``: uint8 on the case grid (``samples`` module). ``present``
    switches model sequences off as in :func:`napari_metseg.segment`.
    ``prepared``: ``case`` already prepared for this model with that
    presence (saves the CLAHE when kept between rounds). ``reference``:
    ``model``'s probability of the case with that presence, when the caller
    has it (else it is computed), the trust region's baseline.
    ``progress(done, total, message)`` is called per step; ``cancel`` stops
    with :class:`~napari_metseg.errors.Cancelled` and nothing returned.

    Raises :class:`~napari_metseg.errors.CorrectionError` when nothing is
    marked, :class:`~napari_metseg.errors.GeometryError` for corrections off
    the case grid, :class:`~napari_metseg.errors.RunawayError` when every
    attempt leaves the trust region.
    """
    progress = progress or no_progress
    started = time.perf_counter()
    device = resolve_device(config.device)
    mode = config.mode if config.mode != "auto" else ("full" if device.type == "cuda" else "fast")
    corrections = check_corrections(corrections, case.shape)
    if prepared is None:
        flags = presence_flags(model.config.sequences, present)
        prepared = prepare_case(case, model.config.sequences, flags, model.config.preprocess)
    elif prepared.native_shape != case.shape:
        raise GeometryError(
            f"prepared case of grid {prepared.native_shape} does not match case {case.shape}"
        )
    rng = np.random.default_rng(config.seed)
    samples = select_samples(
        corrections,
        model.config.preprocess.size,
        prepared.tissue,
        neighbours=config.neighbours,
        random_slices=config.random_slices,
        rng=rng,
    )
    check_cancel(cancel)
    segmenter = Segmenter(copy.deepcopy(model), device)
    if reference is None:
        reference = _segment(segmenter, prepared, progress, cancel)
    timings = {"prepare": time.perf_counter() - started}
    batches = _batches(segmenter.model, prepared, samples, config, device)
    passes = _Passes(batches, mode, segmenter.model, device)
    scored = np.flatnonzero(samples.corrected)
    before = _corrected_loss(passes, segmenter.model, scored, config.alpha)
    timings["cache"] = time.perf_counter() - started - timings["prepare"]
    away = away_from_strokes(corrections, case.geometry, config.trust.margin_mm)
    base_lr = config.lr or DEFAULT_LR[mode]
    for attempt in range(config.backoffs + 1):
        lr, iterations = base_lr / 2**attempt, max(1, config.iterations // 2**attempt)
        network = copy.deepcopy(model).to(device).eval()
        losses = _train(network, passes, config, lr, iterations, rng, progress, cancel)
        probability = _segment(Segmenter(network, device), prepared, progress, cancel)
        growth = lesion_growth(
            probability, reference, away, case.geometry.voxel_volume, config.trust
        )
        if growth.within:
            break
        logger.warning(
            "fine-tuning attempt %d left the trust region: %s", attempt + 1, growth.describe()
        )
    else:
        raise RunawayError(
            f"fine-tuning on these strokes would leave {growth.describe()} even with "
            f"{config.backoffs} smaller tries; the model is unchanged. Paint more of the "
            "missed lesion, or mark nearby false ones as 'not lesion', and try again"
        )
    timings["train_and_check"] = time.perf_counter() - started - sum(timings.values())
    after = _corrected_loss(passes, network, scored, config.alpha)
    network.metadata = dict(model.metadata)
    seconds = time.perf_counter() - started
    logger.info(
        "fine-tuned (%s, %d samples, attempt %d, lr %.1e) in %.1f s: corrected-voxel loss "
        "%.4f -> %.4f; %s",
        mode,
        len(samples.slices),
        attempt + 1,
        lr,
        seconds,
        before,
        after,
        growth.describe(),
    )
    return FinetuneResult(
        model=network.eval(),
        probability=probability,
        config=config,
        mode=mode,
        lr=lr,
        losses=losses,
        corrected_loss_before=before,
        corrected_loss_after=after,
        growth=growth,
        attempts=attempt + 1,
        n_samples=len(samples.slices),
        n_lesion_voxels=int(np.count_nonzero(corrections == LESION)),
        n_not_lesion_voxels=int(np.count_nonzero(corrections == NOT_LESION)),
        seconds=seconds,
        timings=timings,
    )


def _segment(
    segmenter: Segmenter,
    prepared: PreparedCase,
    progress: ProgressCallback,
    cancel: threading.Event | None,
) -> np.ndarray:
    stack, _ = segmenter.predict_prepared(prepared, progress, cancel)
    return restore_slices(stack, prepared.native_shape)


def _batches(
    base: MetsegNet,
    prepared: PreparedCase,
    samples: CorrectionSamples,
    config: FinetuneConfig,
    device: torch.device,
) -> _Batches:
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
    return _Batches(samples, marks, teacher.clone(), inputs, tuple(x.shape[-2:]))


def _train(
    network: MetsegNet,
    passes: _Passes,
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


def _corrected_loss(passes: _Passes, network: MetsegNet, picks: np.ndarray, alpha: float) -> float:
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
