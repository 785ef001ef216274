"""Gradient saliency: which sequences and slices the network's decision rests on.

METHOD.md, "Saliency": the saliency image is ``dL/dX``, the gradient of the
loss with respect to the 20-channel input; its aggregate is the sum of
``|dL/dX|`` over a group of channels, per sequence (its 5 slices) or per slice
offset (-2..+2, over the sequences). The gradient is taken at the input as the
network sees it (after the presence rule), so a sequence fed as zeros still
gets one: it says how much that sequence *would* matter.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from napari_metseg.case import Case
from napari_metseg.engine import Presence, Segmenter
from napari_metseg.errors import GeometryError
from napari_metseg.model import MetsegNet, apply_presence
from napari_metseg.preprocess import resize_slices, restore_slices, stack_25d
from napari_metseg.progress import ProgressCallback, check_cancel, no_progress
from napari_metseg.thresholds import CANDIDATE_THRESHOLD


def saliency_totals(gradient: torch.Tensor, n_sequences: int) -> np.ndarray:
    """Sum of ``|gradient|`` per (sequence, slice offset): ``(n_sequences, slices)``.

    ``gradient``: ``(batch, n_sequences * slices, H, W)``, sequence-major.
    Summed over axis 1 it is the per-sequence aggregate, over axis 0 the
    per-offset one.
    """
    magnitude = gradient.detach().abs().float()
    grouped = magnitude.reshape(magnitude.shape[0], n_sequences, -1, *magnitude.shape[2:])
    return grouped.sum(dim=(0, 3, 4)).double().cpu().numpy()


class CumulativeSaliency:
    """Running sums of the saliency aggregates over training iterations.

    Call :meth:`update` with the input gradient of every iteration; plotted per
    sequence and per slice offset, the totals show what the network learns
    from, and when (METHOD.md, "Cumulative saliency aggregate").
    """

    def __init__(self, sequences: tuple[str, ...], context: int = 2) -> None:
        self.sequences = tuple(sequences)
        self.offsets = tuple(range(-context, context + 1))
        self.totals = np.zeros((len(self.sequences), len(self.offsets)), dtype=np.float64)

    def update(self, gradient: torch.Tensor) -> None:
        """Add one iteration's ``|dL/dX|`` (``(batch, channels, H, W)``)."""
        self.totals += saliency_totals(gradient, len(self.sequences))

    @property
    def per_sequence(self) -> dict[str, float]:
        return dict(zip(self.sequences, self.totals.sum(axis=1).tolist(), strict=True))

    @property
    def per_offset(self) -> dict[int, float]:
        return dict(zip(self.offsets, self.totals.sum(axis=0).tolist(), strict=True))

    def state(self) -> np.ndarray:
        """The totals ``(n_sequences, n_offsets)``, for checkpoints."""
        return self.totals.copy()

    def load_state(self, totals: np.ndarray) -> None:
        self.totals = np.array(totals, dtype=np.float64).reshape(self.totals.shape)


@dataclass(frozen=True)
class SaliencyResult:
    """Saliency of one region of a case.

    ``maps``: per present sequence, ``|dL/dX|`` summed over its slices, float32
    on the case grid (zero outside the slices analysed). ``per_sequence`` and
    ``per_offset``: the aggregates (every model sequence, absent ones too).
    """

    maps: dict[str, np.ndarray]
    per_sequence: dict[str, float]
    per_offset: dict[int, float]


def compute_saliency(
    case: Case,
    model: MetsegNet,
    present: Presence = None,
    mask: np.ndarray | None = None,
    slice_index: int | None = None,
    target: np.ndarray | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 4,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> SaliencyResult:
    """Gradient saliency of the cross-entropy over a region of ``case``.

    Region: the voxels of ``mask`` (a lesion, bool on the case grid), else the
    whole slice ``slice_index``, else the whole volume. The loss compares the
    prediction with ``target`` (bool on the case grid) or, by default, with
    the model's own prediction at :data:`~napari_metseg.thresholds.CANDIDATE_THRESHOLD`. Raises
    :class:`~napari_metseg.errors.GeometryError` for a mask or target off the
    case grid, ``ValueError`` for a slice outside the case or an empty region.
    """
    progress = progress or no_progress
    config = model.config
    # the engine's own pre-processing, on the model's device, so the input is the GUI's
    segmenter = Segmenter(model, device)
    device = segmenter.device
    prepared = segmenter.prepare(case, present)
    n_slices, rows, cols = prepared.native_shape
    size, context = config.preprocess.size, config.preprocess.context
    for name, array in (("mask", mask), ("target", target)):
        if array is not None and np.shape(array) != case.shape:
            raise GeometryError(
                f"saliency {name} has shape {np.shape(array)}, but case {case.name!r} is {case.shape}"
            )
    region = np.zeros(prepared.native_shape, dtype=bool)
    if mask is not None:
        region = np.array(mask, dtype=bool)
    elif slice_index is not None:
        if not 0 <= slice_index < n_slices:
            raise ValueError(f"slice_index {slice_index} outside [0, {n_slices - 1}]")
        region[slice_index] = True
    else:
        region[:] = True
    region &= prepared.tissue[:, None, None]
    slices = np.flatnonzero(region.any(axis=(1, 2)))
    if slices.size == 0:
        raise ValueError("the saliency region is empty (no head tissue in it)")
    small_region = _resize_mask(region[slices], size)
    small_target = (
        None if target is None else _resize_mask(np.asarray(target, bool)[slices], size) >= 0.5
    )
    present_t = torch.from_numpy(prepared.present).to(device)
    n_sequences = len(config.sequences)
    maps = np.zeros((n_sequences, n_slices, size, size), dtype=np.float32)
    totals = np.zeros((n_sequences, 2 * context + 1))
    for start in range(0, slices.size, batch_size):
        check_cancel(cancel)
        chunk = slice(start, start + batch_size)
        x = stack_25d(prepared.volumes, slices[chunk], context)
        x = apply_presence(x, present_t).requires_grad_(True)
        logits = model(x)
        if small_target is None:
            labels = (torch.softmax(logits.detach(), dim=1)[:, 1] >= CANDIDATE_THRESHOLD).long()
        else:
            labels = torch.from_numpy(small_target[chunk]).long().to(device)
        weights = torch.from_numpy(small_region[chunk]).to(device)
        loss = (F.cross_entropy(logits, labels, reduction="none") * weights).sum()
        (gradient,) = torch.autograd.grad(loss, x)
        grouped = gradient.abs().reshape(gradient.shape[0], n_sequences, -1, size, size)
        maps[:, slices[chunk]] = grouped.sum(dim=2).transpose(0, 1).cpu().numpy()
        totals += saliency_totals(gradient, n_sequences)
        progress(min(start + batch_size, slices.size), slices.size, "saliency")
    return SaliencyResult(
        maps={
            name: np.maximum(restore_slices(maps[i], (n_slices, rows, cols)), 0.0)
            for i, name in enumerate(config.sequences)
            if prepared.present[i]
        },
        per_sequence=dict(zip(config.sequences, totals.sum(axis=1).tolist(), strict=True)),
        per_offset=dict(
            zip(range(-context, context + 1), totals.sum(axis=0).tolist(), strict=True)
        ),
    )


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Bool ``(n, r, c)`` -> float32 ``(n, size, size)`` weights in [0, 1] (small lesions survive)."""
    return np.clip(resize_slices(mask.astype(np.float32), size, size), 0.0, 1.0)
