"""Losses on a 2x2 example whose values are worked out by hand.

Logits are ``(0, l)`` per voxel, so ``P(lesion) = sigmoid(l)``; the chosen
``l`` give P(lesion) = 0.75, 0.25 / 0.8, 0.25 and the target marks only the
top-left voxel as lesion. The bottom-left voxel is a "missed lesion": labelled
background but predicted lesion (P = 0.8).
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from napari_metseg import losses
from napari_metseg.losses import (
    BootstrapLoss,
    LopsidedBootstrapLoss,
    WeightedCELoss,
    bootstrap,
    lopsided_bootstrap,
    make_loss,
    weighted_ce,
)

P_LESION = [[0.75, 0.25], [0.8, 0.25]]
LN43 = math.log(4 / 3)  # -ln 0.75
LN5 = math.log(5)  # -ln 0.2
LN54 = math.log(5 / 4)  # -ln 0.8


def example() -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.tensor(P_LESION, dtype=torch.float64)
    lesion_logit = torch.log(p / (1 - p))
    logits = torch.stack([torch.zeros_like(lesion_logit), lesion_logit])[None]  # (1, 2, 2, 2)
    target = torch.tensor([[[1, 0], [0, 0]]])
    return logits, target


def test_weighted_ce_by_hand():
    logits, target = example()
    # 3 * -ln .75, -ln .75, -ln .2, -ln .75
    expected = (3 * LN43 + LN43 + LN5 + LN43) / 4
    assert weighted_ce(logits, target, alpha=3).item() == pytest.approx(expected)
    assert weighted_ce(logits, target.bool(), alpha=1).item() == pytest.approx(
        (LN43 + LN43 + LN5 + LN43) / 4
    )


def test_bootstrap_by_hand():
    logits, target = example()
    # argmax: lesion, background, lesion, background
    expected = (LN43 + LN43 + (0.5 * LN5 + 0.5 * LN54) + LN43) / 4
    assert bootstrap(logits, target, beta=0.5).item() == pytest.approx(expected)


def test_lopsided_bootstrap_by_hand():
    logits, target = example()
    missed = 0.1 * LN5 + 0.9 * LN54
    expected = (3 * LN43 + LN43 + missed + LN43) / 4
    assert lopsided_bootstrap(logits, target, alpha=3, beta=0.1).item() == pytest.approx(expected)


def test_ignore_mask_drops_voxels_from_sum_and_count():
    logits, target = example()
    ignore = torch.tensor([[[False, False], [True, False]]])
    assert lopsided_bootstrap(logits, target, 3, 0.1, ignore).item() == pytest.approx(
        (3 * LN43 + LN43 + LN43) / 3
    )
    assert weighted_ce(logits, target, 3, ignore).item() == pytest.approx(5 * LN43 / 3)


def test_all_ignored_gives_zero_with_graph():
    logits, target = example()
    logits.requires_grad_(True)
    loss = lopsided_bootstrap(logits, target, ignore=torch.ones_like(target, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_beta_one_is_class_weighting():
    logits, target = example()
    assert lopsided_bootstrap(logits, target, alpha=3, beta=1).item() == pytest.approx(
        weighted_ce(logits, target, alpha=3).item()
    )
    assert bootstrap(logits, target, beta=1).item() == pytest.approx(
        weighted_ce(logits, target, alpha=1).item()
    )


def test_gradient_treats_argmax_target_as_constant():
    logits, target = example()
    logits.requires_grad_(True)
    lopsided_bootstrap(logits, target, alpha=3, beta=0.1).backward()
    # d CE(y, P) / d logits = P - onehot(y). Missed-lesion voxel (P = [.2, .8], y = 0,
    # argmax 1): 0.1 * ([.2, .8] - [1, 0]) + 0.9 * ([.2, .8] - [0, 1]), over 4 voxels.
    expected = torch.tensor([0.1 * -0.8 + 0.9 * 0.2, 0.1 * 0.8 + 0.9 * -0.2], dtype=torch.float64)
    assert torch.allclose(logits.grad[0, :, 1, 0], expected / 4)
    # it pushes the missed lesion towards lesion: gradient descent raises logit 1
    assert logits.grad[0, 1, 1, 0] < 0
    # a positive voxel: alpha * (P - onehot(1)) = 3 * [.25, -.25]
    assert torch.allclose(
        logits.grad[0, :, 0, 0], torch.tensor([0.75, -0.75], dtype=torch.float64) / 4
    )


def test_modules_match_functions_and_show_parameters():
    logits, target = example()
    assert WeightedCELoss(3)(logits, target) == weighted_ce(logits, target, 3)
    assert BootstrapLoss(0.5)(logits, target) == bootstrap(logits, target, 0.5)
    assert LopsidedBootstrapLoss(3, 0.1)(logits, target) == lopsided_bootstrap(
        logits, target, 3, 0.1
    )
    assert "alpha=3.0, beta=0.1" in repr(make_loss("lopsided_bootstrap", 3, 0.1))
    assert isinstance(make_loss("bootstrap"), BootstrapLoss)


def test_docstring_example_runs():
    result = doctest.testmod(losses)
    assert result.attempted >= 1 and result.failed == 0


@pytest.mark.parametrize(
    ("logits_shape", "target_shape", "fragment"),
    [
        ((1, 3, 2, 2), (1, 2, 2), "(1, 3, 2, 2)"),
        ((1, 2, 2, 2), (1, 2, 3), "(1, 2, 3)"),
    ],
)
def test_shape_errors_name_shapes(logits_shape, target_shape, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        weighted_ce(torch.zeros(logits_shape), torch.zeros(target_shape, dtype=torch.long))


def test_value_errors_name_values():
    logits, target = example()
    with pytest.raises(ValueError, match="values \\[0, 2\\]"):
        weighted_ce(logits, target * 2)
    with pytest.raises(ValueError, match="float"):
        weighted_ce(logits, target.double())
    with pytest.raises(ValueError, match="1.5"):
        bootstrap(logits, target, beta=1.5)
    with pytest.raises(ValueError, match="-1"):
        lopsided_bootstrap(logits, target, alpha=-1)
    with pytest.raises(ValueError, match="bool mask"):
        weighted_ce(logits, target, ignore=target)
    with pytest.raises(ValueError, match="'dice'"):
        make_loss("dice")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_value_on_cuda():
    logits, target = example()
    on_gpu = lopsided_bootstrap(logits.cuda().half(), target.cuda(), 3, 0.1)
    assert on_gpu.dtype == torch.float32
    assert on_gpu.item() == pytest.approx(
        lopsided_bootstrap(logits, target, 3, 0.1).item(), rel=1e-3
    )
