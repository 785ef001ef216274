"""Fast mode's cache: what the frozen part of the network says about a whole case.

Fast fine-tuning freezes the backbone and the ASPP (:meth:`MetsegNet.context`,
about 80% of the light network's cost per slice) and trains only the decoder.
The frozen part's output for every slice with head tissue is computed once
and kept, so the whole-case prediction a round checks against its trust
region, and returns, costs only the decoder: a few seconds on a CPU instead
of a full segmentation per attempt. The cache stays valid across rounds for
as long as the frozen part and the presence do not change (every round of
the workspace starts from the base model), which :meth:`CaseContext.fits`
checks. It also keeps the base model's lesion logit of every slice: the
teacher a fast round anchors the whole case to, and the trust region's
baseline.

The cache is what segmenting the case computes on the way (the engine's
forward pass split where fast mode freezes it), so
:func:`segment_keeping_context` segments a case and keeps the cache in the
same pass: the first round after a run does not compute it again. It costs
memory while kept: the light network's context (256 x 64 x 64 float32) and
lesion logit take 4.5 MB per tissue slice, plus the prepared case (the
sample case: 112 tissue slices, 0.50 GB, and 0.13 GB).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from napari_metseg.case import Case
from napari_metseg.correction.objective import lesion_logit
from napari_metseg.engine import Segmenter
from napari_metseg.model import MetsegNet
from napari_metseg.model.heads import Features
from napari_metseg.preprocess import PreparedCase, restore_slices
from napari_metseg.presence import Presence
from napari_metseg.progress import ProgressCallback, check_cancel, no_progress

#: Slices per forward pass when decoding from the cache.
CHUNK = 8


def model_stamp(model: MetsegNet) -> tuple[int, ...]:
    """Which tensors ``model`` holds, where their data lives and how often each was written
    in place: any training step (optimizers update in place), ``load_state_dict`` or
    swapped weights change it.

    Costs no pass over the weights (torch counts the in-place writes of every
    tensor), unlike summing them, which took up to 1.7 s on a loaded CPU.
    """
    return tuple(
        value
        for tensor in (*model.parameters(), *model.buffers())
        for value in (id(tensor), tensor.data_ptr(), tensor._version)
    )


@dataclass
class CaseContext:
    """The frozen part's output for the tissue slices of one prepared case (its own
    sequences) and the base model's lesion logit there.

    ``slices``: int ``(n,)`` slice indices (the engine skips the others, probability
    0); ``context``: :class:`Features` of those slices on ``device``;
    ``teacher``: float ``(n, size, size)``, ``log P1 - log P0`` of ``model``,
    the model the cache was built from (kept by reference, not copied), as
    :func:`model_stamp` found it then (``stamp``).
    """

    slices: np.ndarray
    context: Features
    teacher: torch.Tensor
    prepared: PreparedCase
    model: MetsegNet
    stamp: tuple[int, ...]
    device: torch.device

    @classmethod
    def build(
        cls,
        model: MetsegNet,
        prepared: PreparedCase,
        device: torch.device,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> CaseContext:
        """Run ``model`` (eval mode, moved to ``device``; its weights untouched) over the tissue
        slices of ``prepared``, keeping its context: the engine's float32 pass, so the same
        numbers as a run's :func:`segment_keeping_context`."""
        progress = progress or no_progress
        segmenter = Segmenter(model, device, precision="float32")
        keeper = _Keeper()
        segmenter.predict_prepared(
            prepared,
            lambda done, total, _: progress(done, total, "caching the frozen part"),
            cancel,
            keeper,
        )
        return keeper.context(model, prepared, segmenter.device)

    def fits(self, model: MetsegNet, prepared: PreparedCase) -> bool:
        """Whether this cache holds what ``model``'s frozen part says about ``prepared``: the
        very model and prepared case it was built from, the model unchanged since.

        Identity, not equality: an equal model loaded again, or the case
        prepared again, does not fit (a rebuild, never a stale cache); keep
        the objects between rounds (:class:`~napari_metseg.correction.Workspace`
        does). ``prepared`` must not be changed in place.
        """
        return (
            prepared is self.prepared and model is self.model and model_stamp(model) == self.stamp
        )

    def predict(self, network: MetsegNet, cancel: threading.Event | None = None) -> np.ndarray:
        """``network``'s lesion probability on the case grid, decoding the cached context.

        Equal (to float tolerance) to segmenting the case with ``network``
        when its frozen part is the cached one.
        """
        network = network.eval()
        logits = []
        with torch.no_grad():
            for start in range(0, self.slices.size, CHUNK):
                check_cancel(cancel)
                logits.append(lesion_logit(network.decode(self.context[start : start + CHUNK])))
        return self._restore(torch.cat(logits))

    def base_probability(self) -> np.ndarray:
        """The cached model's lesion probability on the case grid."""
        return self._restore(self.teacher)

    def _restore(self, logit: torch.Tensor) -> np.ndarray:
        n_slices, size = self.prepared.volumes.shape[1], self.prepared.volumes.shape[2]
        stack = np.zeros((n_slices, size, size), dtype=np.float32)
        stack[self.slices] = torch.sigmoid(logit).cpu().numpy()
        return restore_slices(stack, self.prepared.native_shape)


def segment_keeping_context(
    case: Case,
    model: MetsegNet,
    present: Presence = None,
    device: str | torch.device = "auto",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> tuple[np.ndarray, CaseContext | None]:
    """:func:`~napari_metseg.engine.segment` (the same probability, bit for bit) and fast
    mode's cache of ``case`` with ``model`` and ``present``, computed in the same pass.

    The cache is the one :meth:`CaseContext.build` gives for ``model`` and the
    prepared case it holds, so a round given both does not build it. None
    where the engine would not run float32 (autocast on a GPU): a fast round
    caches float32 outputs.
    """
    progress = progress or no_progress
    progress(0, 1, "pre-processing")
    segmenter = Segmenter(model, device)
    on_device = segmenter.prepare(case, present)
    check_cancel(cancel)
    keeper = _Keeper() if segmenter.precision == "float32" else None
    probability = segmenter.segment_prepared(on_device, progress, cancel, keeper).probability
    if keeper is None or not on_device.tissue.any():
        return probability, None
    prepared = PreparedCase(
        on_device.volumes.cpu().numpy(),
        on_device.sequences,
        on_device.present,
        on_device.native_shape,
        on_device.tissue,
        on_device.config,
    )
    return probability, keeper.context(model, prepared, segmenter.device)


class _Keeper:
    """Collects the engine's per-batch context and lesion logit (its ``keep`` callable)."""

    def __init__(self) -> None:
        self.parts: list[Features] = []
        self.logits: list[torch.Tensor] = []

    def __call__(self, context: Features, logits: torch.Tensor) -> None:
        self.parts.append(context)
        self.logits.append(lesion_logit(logits))

    def context(
        self, model: MetsegNet, prepared: PreparedCase, device: torch.device
    ) -> CaseContext:
        """The cache; joining copies the engine's inference tensors into ordinary ones."""
        slices = np.flatnonzero(prepared.tissue)
        if not slices.size:
            raise ValueError("the prepared case has no slice with head tissue")
        return CaseContext(
            slices,
            Features.cat(self.parts),
            torch.cat(self.logits),
            prepared,
            model,
            model_stamp(model),
            device,
        )


@dataclass
class RoundInputs:
    """What a round on ``case`` starts from, kept for the next: the base model (loaded
    once, never trained: rounds train copies), ``case`` prepared for it with the
    round's presence, and fast mode's cache of the two (None until a fast round or a
    run made it)."""

    case: Case
    model: MetsegNet
    prepared: PreparedCase
    cache: CaseContext | None = None
