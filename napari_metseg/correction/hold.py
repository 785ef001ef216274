"""What a fast round holds of the whole case in every step, as cells of the decoder's input.

A few random slices per step see a few percent of a case, and lifting a
painted lesion lifts what looks like it anywhere in the case: the band near
the candidate threshold and the risers below it are held in every step
(why, and what it measured: :mod:`napari_metseg.correction.steps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from napari_metseg.correction.cache import CHUNK, CaseContext
from napari_metseg.correction.objective import candidate_hold, lesion_logit
from napari_metseg.correction.samples import UNMARKED, CorrectionSamples
from napari_metseg.model import MetsegNet
from napari_metseg.model.heads import Features


@dataclass
class CaseHold:
    """What a fast round holds over the whole case, as the decoder's input cells.

    Two sets of cells away from the marks (every voxel of the cell farther
    than ``margin`` network pixels, in plane, from the marks of its slice and
    its neighbours), gathered along one axis (:func:`_gather`) with the base
    model's lesion logit of each:

    - the ``band``: every cell whose base logit lies above ``lowest``, which
      takes in every base candidate and every cell within a few logits under
      the threshold or as lesion-like as the faintest painted lesion: where a
      round that lifts the painted lesion would lift a look-alike, and where a
      base candidate would fade on the slices a step does not sample;
    - the ``risers``: the cells under the band that the network being trained
      has lifted most towards the threshold, re-mined from the whole case by
      :meth:`mine` every few steps, for a look-alike the band does not hold.

    Holding them (:meth:`MetsegNet.decode_cells`, :func:`candidate_hold`) costs
    10,000-40,000 cells per step instead of the whole case's 460,000.
    """

    pool: CaseContext
    outside: torch.Tensor
    cells_teacher: torch.Tensor
    band: Features
    band_teacher: torch.Tensor
    risers: Features | None = None
    risers_teacher: torch.Tensor | None = None

    @classmethod
    def find(
        cls,
        base: MetsegNet,
        pool: CaseContext,
        samples: CorrectionSamples,
        margin: int,
        lowest: float,
        limit: int,
    ) -> CaseHold:
        """The cells of ``pool`` away from the marks of ``samples``: the band of those
        ``base`` puts above logit ``lowest`` (at most ``limit``, the highest), and the
        rest, where risers are mined."""
        away = torch.ones_like(pool.teacher, dtype=torch.bool)
        for marks, centre in zip(
            samples.marks[samples.corrected], samples.slices[samples.corrected], strict=True
        ):
            near = torch.from_numpy(marks != UNMARKED).float()[None, None]
            near = F.max_pool2d(near, 2 * margin + 1, stride=1, padding=margin)[0, 0] > 0
            rows = np.flatnonzero(np.abs(pool.slices - centre) <= 1)
            away[rows] &= ~near.to(away.device)
        factor = away.shape[-1] // pool.context.out.shape[-1]
        away = -F.max_pool2d(-away.float()[:, None], factor)[:, 0] > 0  # every voxel away
        with torch.no_grad():
            cells_teacher = _cell_logits(base, pool.context)
        band = away & (cells_teacher > lowest)
        if int(band.sum()) > limit:  # the most lesion-like ``limit`` of them
            ranked = torch.where(band, cells_teacher, torch.full_like(cells_teacher, -math.inf))
            band = torch.zeros_like(band).flatten()
            band[ranked.flatten().topk(limit).indices] = True
            band = band.view_as(away)
        return cls(
            pool, away & ~band, cells_teacher, _gather(pool.context, band), cells_teacher[band]
        )

    def mine(self, network: MetsegNet, count: int, threshold: float, gap: float) -> None:
        """Replace the risers by the ``count`` cells under the band that ``network`` lifts
        most over the room :func:`candidate_hold` leaves them (the likeliest new specks)."""
        with torch.no_grad():
            excess = candidate_hold(
                _cell_logits(network, self.pool.context), self.cells_teacher, threshold, gap
            )
        excess = torch.where(self.outside, excess, torch.full_like(excess, -1.0)).flatten()
        top = excess.topk(min(count, excess.numel())).indices
        chosen = torch.zeros_like(excess, dtype=torch.bool)
        chosen[top] = True
        chosen = chosen.view_as(self.outside)
        self.risers = _gather(self.pool.context, chosen)
        self.risers_teacher = self.cells_teacher[chosen]

    def forget_risers(self) -> None:
        """No risers until the next :meth:`mine`."""
        self.risers = self.risers_teacher = None

    def hold(self, network: MetsegNet, threshold: float, gap: float) -> torch.Tensor:
        """Mean :func:`candidate_hold` of ``network`` over the band (0 without any cell)."""
        return _held(network, self.band, self.band_teacher, threshold, gap)

    def hold_risers(self, network: MetsegNet, threshold: float, gap: float) -> torch.Tensor:
        """Mean :func:`candidate_hold` over the risers (0 before :meth:`mine`)."""
        if self.risers is None:
            return self.band_teacher.sum() * 0.0
        return _held(network, self.risers, self.risers_teacher, threshold, gap)


def _cell_logits(network: MetsegNet, context: Features) -> torch.Tensor:
    """``network``'s lesion logit of every cell of ``context``, ``(N, h, w)``."""
    return torch.cat(
        [
            lesion_logit(network.decode_cells(context[start : start + CHUNK]))
            for start in range(0, context.out.shape[0], CHUNK)
        ]
    )


def _gather(context: Features, cells: torch.Tensor) -> Features:
    """The cells of ``context`` where ``cells`` ``(N, h, w)`` is set, as one column
    ``(1, ..., C, n, 1)``: pointwise convolutions over one tall image, not ``n``
    images of one pixel (a 150-step probe on a benchmark case holding 20,000
    cells took 7.6 s on 2 CPU cores instead of 12.0 s)."""
    row, r, c = cells.nonzero(as_tuple=True)
    return Features(context.out[row, ..., r, c].movedim(0, -1)[None, ..., None], None, (1, 1))


def _held(
    network: MetsegNet, cells: Features, teacher: torch.Tensor, threshold: float, gap: float
) -> torch.Tensor:
    if not teacher.numel():
        return teacher.sum()
    margin = lesion_logit(network.decode_cells(cells))[0, :, 0]
    return candidate_hold(margin, teacher, threshold, gap).mean()
