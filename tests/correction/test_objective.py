"""The correction objective: strokes capped, unmarked voxels anchored to a frozen teacher."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from napari_metseg.correction import LESION, NOT_LESION, correction_loss
from napari_metseg.correction.objective import (
    candidate_hold,
    lesion_logit,
    near_lesion_strokes,
)
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
    teacher = lesion_logit(logits.detach())
    correction_loss(logits, marks, teacher, beta=0.0).backward()
    assert logits.grad.abs().max() < 1e-6


def test_the_anchor_holds_a_uniform_shift_far_harder_than_cross_entropy() -> None:
    """Near the 0.10 threshold, CE to the teacher barely notices a shift that doubles the
    lesion volume; the logit anchor does (why the runaway of issue #13 needed it)."""
    teacher = torch.full((1, 8, 8), float(torch.logit(torch.tensor(0.05))))
    marks = torch.zeros(1, 8, 8, dtype=torch.uint8)
    shifted = torch.stack([torch.zeros(1, 8, 8), teacher + 1.0], dim=1)  # p 0.05 -> 0.125
    loss = functools.partial(correction_loss, beta=0.0, hold_weight=0.0)
    plain = loss(shifted, marks, teacher, anchor_weight=0.0)
    anchored = loss(shifted, marks, teacher, anchor_weight=1.0)
    excess = plain - loss(
        torch.stack([torch.zeros(1, 8, 8), teacher], dim=1), marks, teacher, anchor_weight=0.0
    )
    assert anchored - plain == pytest.approx(1.0)
    assert excess < 0.05


def test_beta_one_is_weighted_ce_against_the_teachers_hard_labels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 5, 5)
    probability = torch.rand(2, 5, 5)
    marks = torch.zeros(2, 5, 5, dtype=torch.uint8)
    teacher = torch.logit(probability)
    loss = correction_loss(
        logits, marks, teacher, beta=1.0, keep_threshold=0.5, anchor_weight=0, hold_weight=0
    )
    expected = weighted_ce(logits, (probability >= 0.5).long(), 3.0)
    torch.testing.assert_close(loss, expected)


def test_strokes_carry_their_share_of_the_loss_whatever_their_count() -> None:
    """9 painted voxels weigh as much as 9,801 (stroke_share), never more or less."""
    logits = torch.zeros(1, 2, 128, 128)  # p = 0.5 everywhere
    teacher = torch.full((1, 128, 128), -5.0)
    losses = []
    for side in (3, 99):  # odd: the centroid is a voxel (the bag prefers the centre)
        marks = torch.zeros(1, 128, 128, dtype=torch.uint8)
        marks[0, :side, :side] = LESION
        stroke = correction_loss(logits, marks, teacher, stroke_share=1.0, stroke_target=0.9)
        rest = correction_loss(logits, torch.zeros_like(marks), teacher)
        mixed = correction_loss(logits, marks, teacher, stroke_share=0.3, stroke_target=0.9)
        losses.append(float(stroke))
        assert float(mixed) == pytest.approx(0.3 * float(stroke) + 0.7 * float(rest), rel=1e-3)
    assert losses[0] == pytest.approx(losses[1]) and losses[0] > 0
    # a mark already at stroke_target is satisfied: no further pull
    satisfied = correction_loss(logits, marks, teacher, stroke_share=1.0, stroke_target=0.5)
    assert float(satisfied) == pytest.approx(0.0, abs=1e-6)


def test_a_lesion_stroke_asks_for_one_lesion_voxel_under_it() -> None:
    """A 3x3 dab on a 1-voxel lesion is 8 voxels of healthy tissue: only its most
    lesion-like voxel is pulled, and each dab of a slice is its own patch."""
    probability = torch.full((1, 12, 12), 0.01)
    probability[0, 2, 2] = 0.95  # the first dab already holds a lesion voxel
    probability[0, 8, 9] = 0.3  # the second dab's best voxel
    marks = torch.zeros(1, 12, 12, dtype=torch.uint8)
    marks[0, 1:4, 1:4] = LESION
    marks[0, 7:10, 7:10] = LESION
    logits = logits_of(probability).requires_grad_(True)
    correction_loss(logits, marks, torch.zeros(1, 12, 12), stroke_share=1.0).backward()
    moved = (logits.grad.abs().sum(dim=1)[0] > 0).nonzero().tolist()
    assert moved == [[8, 9]]


def test_a_painted_lesion_still_missed_pulls_as_hard_as_a_lone_one() -> None:
    """Found painted lesions drop out of the strokes' mean: the one still missed is not
    pulled at a fraction of a lone stroke's strength by the ones already answered."""
    probability = torch.full((1, 12, 12), 0.01)
    probability[0, 2, 2] = 0.95  # the first dab is answered (over stroke_target 0.9)
    probability[0, 8, 8] = 0.3
    both = torch.zeros(1, 12, 12, dtype=torch.uint8)
    both[0, 1:4, 1:4] = LESION
    both[0, 7:10, 7:10] = LESION
    lone = both.clone()
    lone[0, 1:4, 1:4] = 0
    grads = []
    for marks in (both, lone):
        logits = logits_of(probability).requires_grad_(True)
        correction_loss(logits, marks, torch.zeros(1, 12, 12), stroke_share=1.0).backward()
        grads.append(logits.grad[0, :, 8, 8])
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


def test_a_dab_pulls_its_centre_unless_an_edge_voxel_looks_far_more_like_lesion() -> None:
    """A dab is centred on the lesion the annotator saw; an edge voxel a little more
    lesion-like than the centre is the healthy tissue around a 1-voxel lesion."""
    probability = torch.full((1, 9, 9), 0.01)
    probability[0, 5, 5] = 0.02  # a corner of the dab, a little more lesion-like
    marks = torch.zeros(1, 9, 9, dtype=torch.uint8)
    marks[0, 3:6, 3:6] = LESION
    for centre_bias, pulled in ((0.5, [[4, 4]]), (0.0, [[5, 5]])):
        logits = logits_of(probability).requires_grad_(True)
        correction_loss(
            logits, marks, torch.zeros(1, 9, 9), stroke_share=1.0, centre_bias=centre_bias
        ).backward()
        assert (logits.grad.abs().sum(dim=1)[0] > 0).nonzero().tolist() == pulled


def test_a_false_positive_is_pulled_hardest_where_it_is_most_lesion_like() -> None:
    """It must go entirely: its last voxel over the threshold is what keeps it a candidate."""
    probability = torch.full((1, 6, 6), 0.3)
    probability[0, 2, 3] = 0.6
    marks = torch.full((1, 6, 6), NOT_LESION, dtype=torch.uint8)
    logits = logits_of(probability).requires_grad_(True)
    correction_loss(logits, marks, torch.zeros(1, 6, 6), stroke_share=1.0).backward()
    pull = logits.grad[0, 1]
    assert (pull > 0).all()
    assert pull[2, 3] > 10 * pull[0, 0]


@pytest.mark.parametrize(("p_lesion", "pulled"), [(0.1, True), (0.02, True), (0.005, False)])
def test_a_not_lesion_mark_pulls_until_well_under_the_threshold(p_lesion, pulled) -> None:
    """At 0.9 'not lesion' a mark would sit on the 0.10 threshold, still a candidate."""
    logits = torch.zeros(1, 2, 4, 4)
    logits[:, 1] = math.log(p_lesion / (1 - p_lesion))
    marks = torch.full((1, 4, 4), NOT_LESION, dtype=torch.uint8)
    loss = correction_loss(logits, marks, torch.zeros(1, 4, 4), stroke_share=1.0)
    assert (float(loss) > 0) == pulled


def test_the_hold_charges_only_crossing_the_candidate_threshold() -> None:
    cut = float(torch.logit(torch.tensor(0.1)))
    teacher = torch.tensor([[cut - 5.0, cut - 0.5, cut + 0.5, cut + 5.0]])
    # each voxel moves by 1.5 logits towards the other side of the threshold
    margin = teacher + torch.tensor([[1.5, 1.5, -1.5, -1.5]])
    hold = candidate_hold(margin, teacher, 0.1, gap=2.0)
    # far below: may rise to cut - 2 (free); just below: may not rise at all; mirrored above
    torch.testing.assert_close(hold, torch.tensor([[0.0, 1.5**2, 1.5**2, 0.0]]))


def test_voxels_near_a_lesion_stroke_are_left_free() -> None:
    marks = torch.zeros(1, 9, 9, dtype=torch.uint8)
    marks[0, 4, 4] = LESION
    marks[0, 0, 0] = NOT_LESION
    free = near_lesion_strokes(marks, 2)
    assert free.sum() == 5 * 5 - 1 and not free[0, 4, 4] and not free[0, 0, 0]
    logits = torch.randn(1, 2, 9, 9, requires_grad=True)
    correction_loss(logits, marks, torch.zeros(1, 9, 9), free=free).backward()
    moved = logits.grad.abs().sum(dim=1)[0] > 0
    assert not moved[free[0]].any() and moved[4, 4] and moved[8, 8]


@pytest.mark.parametrize("unmarked", ["teacher", "ignore"])
def test_unmarked_voxels_count_only_when_anchored(unmarked) -> None:
    marks = torch.zeros(1, 4, 4, dtype=torch.uint8)
    marks[0, 0, 0], marks[0, 3, 3] = LESION, NOT_LESION
    logits = torch.zeros(1, 2, 4, 4, requires_grad=True)  # p = 0.5: no mark is satisfied
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
