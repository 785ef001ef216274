"""One round of the active-correction loop: fine-tune on the strokes, check, predict.

:func:`finetune` trains a copy of the model on the slices that carry
corrections plus a few neighbouring and random slices
(:mod:`~napari_metseg.correction.samples`), with the stroke-plus-teacher
objective of :mod:`~napari_metseg.correction.objective`. It then predicts
the whole case with the new model and holds the result against the trust
region (:mod:`~napari_metseg.correction.trust`): a round that adds more
lesion, or more new candidates, far from the strokes than it allows is
retried from the input model with half the step size (not fewer steps:
AdamW's first steps move every weight by about the step size whatever its
gradient, and on a benchmark case a retry with half the steps sprouted 78
new candidates where the first attempt had 17), with the slices where it
sprouted new candidates or lost base ones anchored in every batch of the
retry (fast mode), up to ``backoffs`` times, and refused with
:class:`~napari_metseg.errors.RunawayError` after that. The returned
probability is the one the caller shows: no second segmentation.

An attempt is checked every ``check_every`` steps, not only at its end, and
stops once it answers every stroke (:mod:`~napari_metseg.correction.stages`):
a faint painted lesion needs many small steps, up to 750 in fast mode.

Two modes (:mod:`~napari_metseg.correction.steps` holds the optimisation):

- ``fast`` (default on CPU): everything before the decoder's last layers
  (:meth:`~napari_metseg.model.MetsegNet.decode`) is frozen, its output for
  every sample and for every slice of the case is computed once
  (:mod:`~napari_metseg.correction.cache`; pass ``FinetuneResult.cache``, or
  the one a run left, with the model and prepared case it was built from, and
  it is reused while the model is unchanged), and
  only those last layers train; the whole-case prediction of each attempt
  decodes the cache. On 2 quiet CPU cores a step takes 30-45 ms; building
  the cache costs about one segmentation of the case (6 s on the sample case).
- ``full`` (default on GPU): all weights train.

Both feed every sample under a few sequence-dropout draws, so the round keeps
the network's tolerance of missing sequences.

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
from napari_metseg.correction.cache import CaseContext
from napari_metseg.correction.config import FinetuneConfig
from napari_metseg.correction.outcome import StrokeOutcome
from napari_metseg.correction.samples import (
    LESION,
    NOT_LESION,
    check_corrections,
    select_samples,
)
from napari_metseg.correction.stages import Stages, predict
from napari_metseg.correction.steps import corrected_loss, make_batches, train_steps
from napari_metseg.correction.trust import Growth, away_from_strokes
from napari_metseg.devices import resolve_device
from napari_metseg.errors import GeometryError, RunawayError
from napari_metseg.model import MetsegNet
from napari_metseg.preprocess import PreparedCase, prepare_case
from napari_metseg.presence import Presence, presence_flags
from napari_metseg.progress import ProgressCallback, check_cancel, no_progress

logger = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """A fine-tuned model, its prediction of the case and how the round went.

    ``probability``: float32 on the case grid, with the sequences the round
    saw. ``corrected_loss_before`` / ``_after``: the objective's strokes term
    (case's own sequences) before and after training, 0 when all are answered.
    ``losses``: the training loss of every step of the accepted attempt.
    ``growth``: the trust-region reading; ``attempts``: tries it took;
    ``steps``: the optimizer steps of the model returned;
    ``strokes``: which painted lesions the new prediction finds and which
    marked false ones it drops.
    ``cache``: fast mode's frozen-part cache of the case, for the next round.
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
    strokes: StrokeOutcome
    attempts: int
    steps: int
    n_samples: int
    n_lesion_voxels: int
    n_not_lesion_voxels: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    cache: CaseContext | None = None

    def metrics(self) -> dict[str, Any]:
        """JSON-ready summary (no model, no volume), for version records."""
        return {
            "mode": self.mode,
            "lr": self.lr,
            "attempts": self.attempts,
            "steps": self.steps,
            "corrected_loss_before": self.corrected_loss_before,
            "corrected_loss_after": self.corrected_loss_after,
            "final_loss": self.losses[-1] if self.losses else None,
            "away_from_strokes": asdict(self.growth),
            "strokes": asdict(self.strokes),
            "n_samples": self.n_samples,
            "n_lesion_voxels": self.n_lesion_voxels,
            "n_not_lesion_voxels": self.n_not_lesion_voxels,
            "seconds": round(self.seconds, 3),
            "timings": {key: round(value, 3) for key, value in self.timings.items()},
        }


def round_mode(mode: str, device: torch.device) -> str:
    """The mode a round with ``FinetuneConfig.mode`` ``mode`` runs on ``device``: ``auto`` is
    ``full`` on CUDA, ``fast`` elsewhere."""
    if mode != "auto":
        return mode
    return "full" if device.type == "cuda" else "fast"


def finetune(
    case: Case,
    model: MetsegNet,
    corrections: np.ndarray,
    config: FinetuneConfig | None = None,
    present: Presence = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    *,
    prepared: PreparedCase | None = None,
    reference: np.ndarray | None = None,
    cache: CaseContext | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``model`` on the ``corrections`` of ``case``; ``model``'s weights are
    untouched (fast mode runs it on the round's device to cache its frozen part: it may move).

    ``corrections``: uint8 on the case grid (``samples`` module). ``present``
    switches model sequences off as in :func:`napari_metseg.segment`.
    ``prepared``: ``case`` already prepared for this model with that
    presence (saves the CLAHE when kept between rounds). ``reference``:
    ``model``'s probability of the case with that presence, when the caller
    has it (else it is computed), the trust region's baseline. ``cache``:
    the :class:`~napari_metseg.correction.cache.CaseContext` of an earlier
    fast round (``FinetuneResult.cache``) or of a run
    (:func:`~napari_metseg.correction.cache.segment_keeping_context`),
    reused when it fits: built from this very ``model`` (unchanged) and
    ``prepared``.
    ``progress(done, total, message)`` is called per step; ``cancel`` stops
    with :class:`~napari_metseg.errors.Cancelled` and nothing returned.

    Raises :class:`~napari_metseg.errors.CorrectionError` when nothing is
    marked, :class:`~napari_metseg.errors.GeometryError` for corrections off
    the case grid, :class:`~napari_metseg.errors.RunawayError` when every
    attempt leaves the trust region.
    """
    config = config or FinetuneConfig()
    progress = progress or no_progress
    started = time.perf_counter()
    device = resolve_device(config.device)
    mode = round_mode(config.mode, device)
    config = config.for_mode(mode)
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
        random_slices=config.random_slices if mode == "full" else 0,
        rng=rng,
    )
    check_cancel(cancel)
    base = copy.deepcopy(model).to(device).eval()
    if mode == "full":
        cache = None
    elif cache is None or cache.device != device or not cache.fits(model, prepared):
        cache = CaseContext.build(model, prepared, device, progress, cancel)
    if reference is None:
        reference = (
            cache.base_probability()
            if cache
            else predict(base, None, prepared, device, progress, cancel)
        )
    timings = {"prepare": time.perf_counter() - started}
    batches = make_batches(base, prepared, samples, config, mode, device, cache)
    scored = np.flatnonzero(samples.corrected)
    before = corrected_loss(batches, base, scored, config)
    timings["cache"] = time.perf_counter() - started - timings["prepare"]
    away = away_from_strokes(corrections, case.geometry, config.trust.margin_mm)
    spare = None  # an attempt's stage within the trust region, kept while a retry seeks more
    for attempt in range(config.backoffs + 1):
        lr = config.lr / 2**attempt
        network = copy.deepcopy(model).to(device).eval()
        stages = Stages(
            network,
            cache,
            prepared,
            device,
            reference,
            corrections,
            away,
            case.geometry.voxel_volume,
            config.trust,
            cancel,
            retry_left=attempt < config.backoffs,
            recover_until=config.recover_until,
        )
        losses = train_steps(
            network, batches, config, lr, config.iterations, rng, progress, cancel, stages.check
        )
        stage = stages.outcome()
        if stage.growth.within:
            break
        if stages.within is not None:
            spare = (lr, network, stages, losses)
        batches.hold_slices(np.flatnonzero(stage.sprouted.any(axis=(1, 2))))
        logger.warning(
            "fine-tuning attempt %d left the trust region: %s", attempt + 1, stage.growth.describe()
        )
    else:
        if spare is None:
            raise RunawayError(
                f"fine-tuning on these strokes would leave {stage.growth.describe()} even "
                f"with {config.backoffs} smaller tries; the model is unchanged. Paint more of "
                "the missed lesion, or mark nearby false ones as 'not lesion', and try again"
            )
        lr, network, stages, losses = spare
        stage = stages.fall_back()
    probability, growth, strokes = stage.probability, stage.growth, stage.strokes
    losses = losses[: stage.steps]
    timings["train_and_check"] = time.perf_counter() - started - sum(timings.values())
    after = corrected_loss(batches, network, scored, config)
    network.metadata = dict(model.metadata)
    seconds = time.perf_counter() - started
    logger.info(
        "fine-tuned (%s, %d samples, attempt %d, lr %.1e, %d steps) in %.1f s: stroke loss "
        "%.4f -> %.4f; %s; %s",
        mode,
        len(samples.slices),
        attempt + 1,
        lr,
        stage.steps,
        seconds,
        before,
        after,
        growth.describe(),
        strokes.summary(),
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
        strokes=strokes,
        attempts=attempt + 1,
        steps=stage.steps,
        n_samples=len(samples.slices),
        n_lesion_voxels=int(np.count_nonzero(corrections == LESION)),
        n_not_lesion_voxels=int(np.count_nonzero(corrections == NOT_LESION)),
        seconds=seconds,
        timings=timings,
        cache=cache,
    )
