"""Pulse-sequence dropout and the n/k presence rule (METHOD.md)."""

from __future__ import annotations

import pytest
import torch

from napari_metseg.errors import SequenceError
from napari_metseg.model import apply_presence, sequence_dropout

pytestmark = pytest.mark.usefixtures("one_thread")


N_SEQUENCES, SLICES = 4, 5


def _ones(batch: int) -> torch.Tensor:
    return torch.ones(batch, N_SEQUENCES * SLICES, 3, 3)


def test_apply_presence_zeros_absent_and_scales_present_by_n_over_k() -> None:
    x = _ones(1)
    out = apply_presence(x, torch.tensor([True, False, True, True]))
    per_channel = out[0, :, 0, 0]
    assert torch.all(per_channel[SLICES : 2 * SLICES] == 0)
    torch.testing.assert_close(per_channel[:SLICES], torch.full((SLICES,), 4 / 3))
    torch.testing.assert_close(per_channel[2 * SLICES :], torch.full((2 * SLICES,), 4 / 3))
    two_missing = apply_presence(x, torch.tensor([True, False, False, True]))[0, :, 0, 0]
    torch.testing.assert_close(two_missing[:SLICES], torch.full((SLICES,), 2.0))


def test_apply_presence_per_sample_and_errors() -> None:
    present = torch.tensor([[True, True, True, True], [False, False, False, True]])
    out = apply_presence(_ones(2), present)[:, :, 0, 0]
    torch.testing.assert_close(out[0], torch.ones(N_SEQUENCES * SLICES))
    torch.testing.assert_close(out[1, -SLICES:], torch.full((SLICES,), 4.0))
    with pytest.raises(SequenceError, match="no sequence"):
        apply_presence(_ones(1), torch.zeros(N_SEQUENCES, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not fit"):
        apply_presence(torch.ones(1, 7, 2, 2), torch.ones(N_SEQUENCES, dtype=torch.bool))


def test_sequence_dropout_follows_the_rule_over_many_draws() -> None:
    batch = 4000
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, N_SEQUENCES * SLICES, 2, 2) + 0.1
    out, present = sequence_dropout(x, N_SEQUENCES, p=0.25, generator=generator)

    kept = present.sum(dim=1)
    assert int(kept.min()) >= 1  # never all dropped
    # Dropping all four happens with p^4 = 1/256; those samples keep everything instead.
    dropped = N_SEQUENCES - kept
    expected_mean = N_SEQUENCES * 0.25 - N_SEQUENCES * 0.25**N_SEQUENCES
    assert float(dropped.float().mean()) == pytest.approx(expected_mean, abs=0.05)
    grouped_out = out.reshape(batch, N_SEQUENCES, SLICES, 2, 2)
    grouped_in = x.reshape(batch, N_SEQUENCES, SLICES, 2, 2)
    scale = (N_SEQUENCES / kept.float())[:, None, None, None, None]
    expected = torch.where(present[:, :, None, None, None], grouped_in * scale, 0.0)
    torch.testing.assert_close(grouped_out, expected)  # whole sequences, survivors x n/k


def test_sequence_dropout_keeps_unavailable_sequences_absent() -> None:
    available = torch.tensor([[False, True, True, True]]).repeat(500, 1)
    generator = torch.Generator().manual_seed(1)
    _, present = sequence_dropout(
        _ones(500), N_SEQUENCES, p=0.5, generator=generator, available=available
    )
    assert not present[:, 0].any()
    assert int(present.sum(dim=1).min()) >= 1


def test_sequence_dropout_without_dropping_is_identity_and_validates_p() -> None:
    x = torch.rand(3, N_SEQUENCES * SLICES, 2, 2)
    out, present = sequence_dropout(x, N_SEQUENCES, p=0.0)
    assert present.all()
    torch.testing.assert_close(out, x)
    with pytest.raises(ValueError, match="probability"):
        sequence_dropout(x, N_SEQUENCES, p=1.0)
