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
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from napari_metseg.correction.objective import lesion_logit
from napari_metseg.model import MetsegNet, apply_presence
from napari_metseg.model.heads import Features
from napari_metseg.preprocess import PreparedCase, restore_slices, stack_25d
from napari_metseg.progress import ProgressCallback, check_cancel, no_progress

#: Slices per forward pass when building the cache or decoding from it.
CHUNK = 8


def fingerprint(model: MetsegNet) -> tuple[float, ...]:
    """Sums and sums of squares of every weight and buffer: equal for equal models.

    Cheap (one pass over the weights) and sensitive to any training step.
    """
    values: list[float] = []
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            tensor = tensor.detach().double()
            values += [float(tensor.sum()), float((tensor * tensor).sum())]
    return tuple(values)


@dataclass
class CaseContext:
    """The frozen part's output for the tissue slices of one prepared case (its own
    sequences) and the base model's lesion logit there.

    ``slices``: int ``(n,)`` slice indices (the engine skips the others, probability
    0); ``context``: :class:`Features` of those slices on ``device``;
    ``teacher``: float ``(n, size, size)``, ``log P1 - log P0`` of the model
    the cache was built from.
    """

    slices: np.ndarray
    context: Features
    teacher: torch.Tensor
    prepared: PreparedCase
    fingerprint: tuple[float, ...]
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
        """Run ``model`` (eval mode) over the tissue slices of ``prepared``, keeping its context."""
        progress = progress or no_progress
        model = model.to(device).eval()
        volumes = torch.as_tensor(prepared.volumes).to(device, torch.float32)
        present = torch.from_numpy(prepared.present).to(device)
        slices = np.flatnonzero(prepared.tissue)
        if not slices.size:
            raise ValueError("the prepared case has no slice with head tissue")
        parts, teacher = [], []
        with torch.no_grad():
            for start in range(0, slices.size, CHUNK):
                check_cancel(cancel)
                x = stack_25d(volumes, slices[start : start + CHUNK], prepared.config.context)
                parts.append(model.context(model.features(apply_presence(x, present))))
                teacher.append(lesion_logit(model.decode(parts[-1])))
                progress(min(start + CHUNK, slices.size), slices.size, "caching the frozen part")
        context = Features.cat(parts)
        return cls(slices, context, torch.cat(teacher), prepared, fingerprint(model), device)

    def fits(self, model: MetsegNet, prepared: PreparedCase) -> bool:
        """Whether this cache holds what ``model``'s frozen part says about ``prepared``."""
        return (
            prepared.native_shape == self.prepared.native_shape
            and np.array_equal(prepared.present, self.prepared.present)
            and (
                prepared is self.prepared or np.array_equal(prepared.volumes, self.prepared.volumes)
            )
            and fingerprint(model) == self.fingerprint
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
