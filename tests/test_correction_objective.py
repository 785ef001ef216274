"""The correction objective: strokes capped, unmarked voxels anchored to a frozen teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_metseg.correction import LESION, NOT_LESION, correction_loss
from napari_metseg.correction.objective import lesion_margin, voxel_weights
from napari_metseg.losses import lopsided_bootstrap, weighted_ce


def logits_of(probability: torch.Tensor) -> torch.Tensor:
    """Two-class logits whose softmax gives ``probability`` for the lesion class."""
    return torch.stack([torch.zeros_like(probability), torch.logit(probability)], dim=1)


def test_anchor_replaces_the_moving_argmax_by_the_teachers_soft_target() -> None:
    p = torch.tensor([[[0.3, 0.6]]])
    q = torch.tensor([[[0.2, 0.2]]])
    target = torch.tensor([[[0, 0]]])
    per_voxel = lopsided_bootstrap(logits_of(p), target, beta=0.25, anchor=q, reduction="none")
    soft = -(q * p.log() + (1 - q) * (1 - p).log())
    expected = 0.25 * -(1 - p).log() + 0.75 * soft
    torch.testing.assert_close(per_voxel, expected)
    # without an anchor the second voxel (argmax lesion) follows the network itself
    moving = lopsided_bootstrap(logits_of(p), target, beta=0.25, reduction="none")
    assert moving[0, 0, 1] == pytest.approx(
        float(0.25 * -(1 - p[0, 0, 1]).log() - 0.75 * p[0, 0, 1].log())
    )


def test_unmarked_voxels_where_network_equals_teacher_get_no_pull_at_beta_zero() -> None:
    probability = torch.rand(1, 6, 6) * 0.4
    logits = logits_of(probability).requires_grad_(True)
    marks = torch.zeros(1, 6, 6, dtype=torch.uint8)
    teacher = lesion_margin(logits.detach())
    correction_loss(logits, marks, teacher, beta=0.0).backward()
    assert logits.grad.abs().max() < 1e-6


def test_the_anchor_holds_a_uniform_shift_far_harder_than_cross_entropy() -> None:
    """Near the 0.10 threshold, CE to the teacher barely notices a shift that doubles the
    lesion volume; the logit anchor does (why the runaway of issue #13 needed it)."""
    teacher = torch.full((1, 8, 8), float(torch.logit(torch.tensor(0.05))))
    marks = torch.zeros(1, 8, 8, dtype=torch.uint8)
    shifted = torch.stack([torch.zeros(1, 8, 8), teacher + 1.0], dim=1)  # p 0.05 -> 0.125
    plain = correction_loss(shifted, marks, teacher, beta=0.0, anchor_weight=0.0)
    anchored = correction_loss(shifted, marks, teacher, beta=0.0, anchor_weight=1.0)
    excess = plain - correction_loss(
        torch.stack([torch.zeros(1, 8, 8), teacher], dim=1),
        marks,
        teacher,
        beta=0.0,
        anchor_weight=0.0,
    )
    assert anchored - plain == pytest.approx(1.0)
    assert excess < 0.05


def test_beta_one_is_weighted_ce_against_the_teachers_hard_labels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 5, 5)
    probability = torch.rand(2, 5, 5)
    marks = torch.zeros(2, 5, 5, dtype=torch.uint8)
    teacher = torch.logit(probability)
    loss = correction_loss(logits, marks, teacher, beta=1.0, keep_threshold=0.5, anchor_weight=0)
    expected = weighted_ce(logits, (probability >= 0.5).long(), 3.0)
    torch.testing.assert_close(loss, expected)


def test_nine_painted_voxels_never_outweigh_a_slice() -> None:
    marks = torch.zeros(2, 256, 256, dtype=torch.uint8)
    marks[0, :3, :3] = LESION
    marks[1, :100, :100] = NOT_LESION  # a whole rejected component
    weights = voxel_weights(marks, stroke_weight=100.0, stroke_share=0.05)
    assert weights[0, 0, 0] == 100.0 and weights[0, 10, 10] == 1.0
    for sample in range(2):
        painted = weights[sample][marks[sample] != 0].sum()
        assert painted <= 0.05 * 256 * 256 + 1e-2


@pytest.mark.parametrize("unmarked", ["teacher", "ignore"])
def test_unmarked_voxels_count_only_when_anchored(unmarked) -> None:
    marks = torch.zeros(1, 4, 4, dtype=torch.uint8)
    marks[0, 0, 0], marks[0, 3, 3] = LESION, NOT_LESION
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    teacher = torch.full((1, 4, 4), 0.3)
    correction_loss(logits, marks, teacher, unmarked=unmarked).backward()
    moved = logits.grad.abs().sum(dim=1)[0] > 0
    assert moved[0, 0] and moved[3, 3]
    free = moved[torch.from_numpy(np.asarray(marks[0] == 0))]
    assert free.all() if unmarked == "teacher" else not free.any()


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unmarked"):
        correction_loss(
            torch.zeros(1, 2, 2, 2),
            torch.zeros(1, 2, 2, dtype=torch.uint8),
            torch.zeros(1, 2, 2),
            unmarked="bootstrap",
        )
    with pytest.raises(ValueError, match="one shape"):
        correction_loss(
            torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.uint8), torch.zeros(1, 2, 3)
        )
