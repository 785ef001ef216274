"""Pulse-sequence dropout and the presence rule (METHOD.md, "Input-level dropout").

A missing sequence is fed as zeros and the present ones are multiplied by
``n / k`` (``n`` sequences in the model, ``k`` present), so that the input's
expected magnitude does not depend on how many sequences a scan has. Training
drops sequences at random with the same rule, which is what lets one network
serve every subset. :func:`apply_presence` is the one implementation of the
rule; :func:`sequence_dropout` only draws which sequences to keep.
"""

from __future__ import annotations

import torch

from napari_metseg.errors import SequenceError


def apply_presence(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Zero absent sequences and scale present ones by ``n / k``.

    ``x``: ``(batch, n_sequences * slices, H, W)``, sequence-major channels.
    ``present``: bool ``(n_sequences,)`` for the whole batch or
    ``(batch, n_sequences)`` per sample. Every sample needs at least one
    present sequence (:class:`~napari_metseg.errors.SequenceError` otherwise).
    """
    present = torch.as_tensor(present, dtype=torch.bool, device=x.device)
    if present.ndim == 1:
        present = present.expand(x.shape[0], -1)
    batch, n_sequences = present.shape
    if batch != x.shape[0] or x.shape[1] % n_sequences:
        raise ValueError(
            f"presence of shape {tuple(present.shape)} does not fit input of shape {tuple(x.shape)}"
        )
    kept = present.sum(dim=1, keepdim=True)
    if bool((kept == 0).any()):
        raise SequenceError("no sequence is present: switch at least one sequence on")
    factor = present.to(x.dtype) * (n_sequences / kept.to(x.dtype))
    slices = x.shape[1] // n_sequences
    return x * factor.repeat_interleave(slices, dim=1)[:, :, None, None]


def sequence_dropout(
    x: torch.Tensor,
    n_sequences: int,
    p: float = 0.25,
    generator: torch.Generator | None = None,
    available: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop whole sequences at random for training; returns ``(x_out, present)``.

    Each sequence of each sample is dropped independently with probability
    ``p``; if that would drop every sequence of a sample, none is dropped; the
    survivors are scaled by ``n / k`` (:func:`apply_presence`). ``available``
    (bool ``(batch, n_sequences)``, default all) marks sequences a case really
    has: unavailable ones stay absent and only available ones are drawn.
    ``present`` is bool ``(batch, n_sequences)``.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must lie in [0, 1), got {p}")
    batch = x.shape[0]
    if available is None:
        available = torch.ones(batch, n_sequences, dtype=torch.bool)
    available = torch.as_tensor(available, dtype=torch.bool).cpu()
    if available.shape != (batch, n_sequences):
        raise ValueError(
            f"available must have shape {(batch, n_sequences)}, got {tuple(available.shape)}"
        )
    keep = torch.rand(batch, n_sequences, generator=generator) >= p
    present = available & keep
    nothing_left = ~present.any(dim=1)
    present[nothing_left] = available[nothing_left]
    return apply_presence(x, present.to(x.device)), present.to(x.device)
