"""The checks of a fine-tuning attempt: predict the case every few steps, keep what answers.

An attempt is checked every ``check_every`` steps, not only at its end
(:class:`Stages`; in fast mode a check decodes the cache, 0.2 s). It stops once
every stroke is answered within the trust region with no base candidate lost
(or any, from ``recover_until`` steps on). A check that answers every stroke
out of the trust region ends the attempt at once, for the retry: the sample
case's one dab was found in 100 steps with two base specks of 2 voxels swollen
to 3-5 (new candidates of 10 mm^3), which 200 more steps did not shrink; the
retry answered within the region at its first check (8.7 s instead of 16). When
the last check leaves the trust region unanswered, the attempt returns the
latest check that was within instead of retrying, and when every retry leaves
it, an earlier attempt's latest check within is returned. Ending an attempt at
its first check out of the trust region whether answered or not was as quick on
the sample case but cost five rounds of the benchmark 2 of 15 painted lesions
and one refusal. A faint painted lesion needs many small steps: on the
correction benchmark (bundled v7, 4 held-out phantoms, a dab on each of the two
smallest missed lesions) the lowest painted bag logit climbed steadily, from -6
to -8 at the start to -1.5 to +2 after 300 steps at 3e-3. One round found 2 of
6 dabbed lesions at 100 steps, 5 of 6 at 200 and 6 of 6 at 300, while twice the
step size for 150 steps found 4 of 6 and lost a lesion nobody painted: so fast
mode takes many small steps, checked every 100. Up to 500, not 300: five rounds
of one dab each left 2 of 15 painted 1-voxel lesions under the threshold at 300
steps with every check within the trust region (base p 0.0003-0.004, still
rising), and found 15 of 15 at 500. At 3e-3 the sample case's dab was answered
in 100 steps with two base specks of 2 voxels swollen past 10 mm^3, and the retry
at half the step answered within the region in 100 more (13-15 s on a 2-core AMD
EPYC). A smaller first step answers it within the region at the first check:
1.5e-3, 1.75e-3 and 2e-3 did (7.0-7.3 s), 2.5e-3 did not (three attempts, 36 s),
and a warm-up from 0 to 3e-3 over 100 or 200 steps left the region in all three
attempts. So fast mode steps at 2e-3 for up to 750 steps (3e-3 x 500 in
distance); on the benchmark that found every painted lesion (58 of 58 over all
profiles, 57 with 3e-3: a dabbed large lesion was answered by every attempt only
with 4-5 new specks), and rounds that run long took 1.2-1.5 times as long. An
attempt that answers every stroke within the region but has lost a base
candidate away from them runs on to win it back, up to ``recover_until`` (450)
steps: stopping there regardless was quicker but lost a lesion the base model
found in two profiles, while running on longer grows base specks past 10 mm^3
(a wrong dab on healthy tissue at 3e-3: false positives 4.75 per case against
the base's 3.00 at 500 steps, 4.50 at 400, 3.75-4.00 at 300; at 2e-3, 4.50 at
450 and 4.25 at 300, where the other profiles were not run). Stopping as soon
as the strokes' bags stood a logit over the threshold in the training batch (no
check of the case) lost a lesion nobody painted as well.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from napari_metseg.correction.cache import CaseContext
from napari_metseg.correction.outcome import StrokeOutcome, stroke_outcome
from napari_metseg.correction.trust import Growth, TrustRegion, lesion_growth
from napari_metseg.engine import Segmenter
from napari_metseg.model import MetsegNet
from napari_metseg.preprocess import PreparedCase, restore_slices
from napari_metseg.progress import ProgressCallback, no_progress


@dataclass
class Stage:
    """The network's prediction after ``steps`` steps and how it answers the round."""

    steps: int
    probability: np.ndarray
    growth: Growth
    sprouted: np.ndarray
    strokes: StrokeOutcome
    weights: dict[str, torch.Tensor] | None = None


class Stages:
    """The checks an attempt makes every ``check_every`` steps (module docstring).

    :meth:`check` stops the attempt once its prediction answers every stroke (finds
    every painted lesion, drops every marked false one): within the trust region when it
    keeps every base candidate away from the strokes or has run ``recover_until`` steps,
    outside it at once, for a retry, unless ``retry_left`` is False (the last attempt
    runs on: with ``check_every`` 50 the sample case's dab was answered out of the
    region at step 50 in all three attempts and the round was refused; running on, the
    last was within it at step 200). :meth:`outcome` is the stage the attempt ends on.
    """

    def __init__(
        self,
        network: MetsegNet,
        cache: CaseContext | None,
        prepared: PreparedCase,
        device: torch.device,
        reference: np.ndarray,
        corrections: np.ndarray,
        away: np.ndarray,
        voxel_mm3: float,
        trust: TrustRegion,
        cancel: threading.Event | None,
        *,
        retry_left: bool,
        recover_until: int,
    ) -> None:
        self.network, self.cache, self.prepared, self.device = network, cache, prepared, device
        self.reference, self.corrections, self.away = reference, corrections, away
        self.voxel_mm3, self.trust, self.cancel = voxel_mm3, trust, cancel
        self.retry_left, self.recover_until = retry_left, recover_until
        self.last: Stage | None = None
        self.within: Stage | None = None

    def check(self, steps: int) -> bool:
        probability = predict(
            self.network, self.cache, self.prepared, self.device, no_progress, self.cancel
        )
        growth, sprouted = lesion_growth(
            probability, self.reference, self.away, self.voxel_mm3, self.trust
        )
        strokes = stroke_outcome(self.corrections, probability, self.trust.threshold)
        self.last = Stage(steps, probability, growth, sprouted, strokes)
        if not growth.within:
            return strokes.answered and self.retry_left
        self.within = self.last
        self.within.weights = {
            name: value.detach().clone() for name, value in self.network.state_dict().items()
        }
        return strokes.answered and (growth.lost_candidates == 0 or steps >= self.recover_until)

    def outcome(self) -> Stage:
        """The last stage; or, when it left the trust region, the latest within it
        (:meth:`fall_back`), unless only the last answers every stroke: that one is
        retried with a smaller step, and the caller may fall back if no retry does better."""
        last, within = self.last, self.within
        if (
            last.growth.within
            or within is None
            or (self.retry_left and last.strokes.answered and not within.strokes.answered)
        ):
            return last
        return self.fall_back()

    def fall_back(self) -> Stage:
        """The latest stage within the trust region; the network is set back to it."""
        self.network.load_state_dict(self.within.weights)
        return self.within


def predict(
    network: MetsegNet,
    cache: CaseContext | None,
    prepared: PreparedCase,
    device: torch.device,
    progress: ProgressCallback,
    cancel: threading.Event | None,
) -> np.ndarray:
    """``network``'s probability of the case: decoded from the cache (fast) or segmented (full)."""
    if cache is not None:
        return cache.predict(network, cancel)
    stack, _ = Segmenter(network, device).predict_prepared(prepared, progress, cancel)
    return restore_slices(stack, prepared.native_shape)
