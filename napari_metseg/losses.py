"""Voxel-wise losses for two-class lesion segmentation (METHOD.md, "Robustness
to missed lesions").

Expert masks miss lesions, small ones most. Plain (class-weighted)
cross-entropy then teaches the network that a missed lesion is background.
The *lopsided bootstrap* keeps trusting the positive labels but lets the
network's own confident prediction decide part of every negative voxel's
target, so a missed lesion the network already sees is not punished fully.

All three functions take ``logits`` of shape ``(B, 2, *spatial)`` (class 0 is
background, class 1 lesion) and ``target`` of shape ``(B, *spatial)`` holding
0 / 1 (long or bool). ``ignore`` (bool, like ``target``) marks voxels that do
not count at all, e.g. the voxels an annotator of a sparse correction never
looked at. The result is the mean over the counted voxels (0, still attached
to the graph, when none counts). The cross-entropy of a voxel is
``CE(y, P) = -log P_y`` with ``P = softmax(logits)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "LOSSES",
    "BootstrapLoss",
    "LopsidedBootstrapLoss",
    "WeightedCELoss",
    "bootstrap",
    "lopsided_bootstrap",
    "make_loss",
    "weighted_ce",
]

#: Names accepted by :func:`make_loss` (and the training configuration).
LOSSES: tuple[str, ...] = ("weighted_ce", "bootstrap", "lopsided_bootstrap")


def _check(
    logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes and values; return float log-probabilities and a long target."""
    if logits.ndim < 2 or logits.shape[1] != 2:
        raise ValueError(
            f"logits must have shape (B, 2, *spatial) for two classes, got {tuple(logits.shape)}"
        )
    if tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
            f"expected {(logits.shape[0], *logits.shape[2:])}"
        )
    if target.dtype.is_floating_point or target.dtype.is_complex:
        raise ValueError(f"target must be long or bool (0 / 1 labels), got dtype {target.dtype}")
    if ignore is not None:
        if tuple(ignore.shape) != tuple(target.shape):
            raise ValueError(
                f"ignore mask shape {tuple(ignore.shape)} does not match target {tuple(target.shape)}"
            )
        if ignore.dtype != torch.bool:
            raise ValueError(f"ignore must be a bool mask, got dtype {ignore.dtype}")
    target = target.long()
    if target.numel() and (bool((target < 0).any()) or bool((target > 1).any())):
        values = torch.unique(target).tolist()
        raise ValueError(f"target must hold only 0 and 1, got values {values}")
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # half precision (AMP) logits: the log-softmax in float32
    return F.log_softmax(logits, dim=1), target


def _ce(log_p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-voxel ``-log P_label``, shape of ``labels``."""
    return -log_p.gather(1, labels.unsqueeze(1)).squeeze(1)


def _self_ce(log_p: torch.Tensor) -> torch.Tensor:
    """Per-voxel ``CE(argmax P, P)``; the argmax is a constant (no gradient through it)."""
    predicted = log_p.detach().argmax(dim=1)
    return _ce(log_p, predicted)


def _mean(per_voxel: torch.Tensor, ignore: torch.Tensor | None) -> torch.Tensor:
    if ignore is None:
        return per_voxel.mean() if per_voxel.numel() else per_voxel.sum()
    counted = ~ignore
    n = counted.sum()
    total = (per_voxel * counted).sum()
    return total / n.clamp(min=1)


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not alpha > 0:
        raise ValueError(f"alpha (weight of positive voxels) must be > 0, got {alpha}")
    return alpha


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta (trust in the given labels) must lie in [0, 1], got {beta}")
    return beta


def weighted_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 3.0,
    ignore: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class-weighted cross-entropy: ``alpha * CE`` on lesion voxels, ``CE`` elsewhere.

    ``alpha`` > 0 counters the imbalance of a few lesion voxels among millions
    (the method uses 3). Shapes as in the module docstring; returns a scalar.
    """
    alpha = _check_alpha(alpha)
    log_p, target = _check(logits, target, ignore)
    weight = torch.where(target == 1, alpha, 1.0)
    return _mean(weight * _ce(log_p, target), ignore)


def bootstrap(
    logits: torch.Tensor,
    target: torch.Tensor,
    beta: float = 0.5,
    ignore: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hard bootstrap of Reed et al. (2014): ``beta * CE(Y, P) + (1 - beta) * CE(argmax P, P)``.

    ``beta`` in ``[0, 1]`` is the trust in the given labels; the rest of the
    target is the network's own prediction, which carries no gradient.
    """
    beta = _check_beta(beta)
    log_p, target = _check(logits, target, ignore)
    per_voxel = beta * _ce(log_p, target) + (1.0 - beta) * _self_ce(log_p)
    return _mean(per_voxel, ignore)


def lopsided_bootstrap(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 3.0,
    beta: float = 0.1,
    ignore: torch.Tensor | None = None,
    anchor: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Lopsided bootstrap: weighted CE on lesion voxels, bootstrap on background voxels.

    Where ``Y = 1``: ``alpha * CE(Y, P)``; where ``Y = 0``:
    ``beta * CE(Y, P) + (1 - beta) * CE(argmax P, P)``, the argmax a constant.
    ``beta = 1`` is exactly :func:`weighted_ce`. The study's best setting was
    ``(alpha, beta) = (3, 0.1)``.

    ``anchor`` (lesion probability of a frozen teacher, float shaped like
    ``target``) replaces the moving ``argmax P`` by the teacher's soft
    prediction: ``(1 - beta) * CE(anchor, P)``. Fine-tuning on a handful of
    voxels needs it: there the moving argmax is a positive feedback loop
    (whatever the network starts to call lesion, the loss then asks for),
    which the bootstrap paper warns about and which made one 9-voxel stroke
    mark a whole brain. ``reduction="none"`` returns the per-voxel loss
    (ignored voxels 0) for callers that weight voxels themselves.
    """
    alpha = _check_alpha(alpha)
    beta = _check_beta(beta)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    log_p, target = _check(logits, target, ignore)
    given = _ce(log_p, target)
    if anchor is None:
        follow = _self_ce(log_p)
    else:
        if tuple(anchor.shape) != tuple(target.shape):
            raise ValueError(
                f"anchor shape {tuple(anchor.shape)} does not match target {tuple(target.shape)}"
            )
        q = anchor.detach().to(log_p.dtype)
        follow = -(q * log_p[:, 1] + (1.0 - q) * log_p[:, 0])
    negative = beta * given + (1.0 - beta) * follow
    per_voxel = torch.where(target == 1, alpha * given, negative)
    if reduction == "none":
        return per_voxel if ignore is None else per_voxel * ~ignore
    return _mean(per_voxel, ignore)


class WeightedCELoss(nn.Module):
    """Class-weighted cross-entropy as a module (see :func:`weighted_ce`).

    ``loss = mean_v w_v * (-log P_{v, y_v})`` with ``w_v = alpha`` where
    ``y_v = 1`` and 1 elsewhere, over the voxels ``v`` not ignored.
    """

    def __init__(self, alpha: float = 3.0) -> None:
        super().__init__()
        self.alpha = _check_alpha(alpha)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``logits`` ``(B, 2, H[, W, D])``, ``target`` / ``ignore`` ``(B, H[, W, D])``."""
        return weighted_ce(logits, target, self.alpha, ignore)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class BootstrapLoss(nn.Module):
    """Hard bootstrapping loss (Reed et al. 2014, "Training deep neural networks on
    noisy labels with bootstrapping", arXiv:1412.6596).

    ``loss = mean_v beta * CE(y_v, P_v) + (1 - beta) * CE(argmax P_v, P_v)``;
    the argmax target is treated as a constant. ``beta = 1`` is plain CE.
    """

    def __init__(self, beta: float = 0.5) -> None:
        super().__init__()
        self.beta = _check_beta(beta)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``logits`` ``(B, 2, H[, W, D])``, ``target`` / ``ignore`` ``(B, H[, W, D])``."""
        return bootstrap(logits, target, self.beta, ignore)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class LopsidedBootstrapLoss(nn.Module):
    """Lopsided bootstrap loss for masks that miss lesions (Reed et al. 2014's
    hard bootstrap applied to the background class only, with class weighting).

    Per voxel ``v`` with label ``y_v`` and probabilities ``P_v``::

        y_v = 1:  alpha * CE(1, P_v)
        y_v = 0:  beta * CE(0, P_v) + (1 - beta) * CE(argmax P_v, P_v)

    averaged over the voxels not ignored; ``argmax P_v`` carries no gradient.
    With ``beta = 1`` it is the class-weighted cross-entropy:

    >>> import torch
    >>> logits = torch.tensor([[[[2.0, -1.0]], [[0.5, 1.0]]]])  # (B=1, 2, H=1, W=2)
    >>> target = torch.tensor([[[1, 0]]])
    >>> lopsided = LopsidedBootstrapLoss(alpha=3.0, beta=1.0)(logits, target)
    >>> weighted = WeightedCELoss(alpha=3.0)(logits, target)
    >>> bool(torch.isclose(lopsided, weighted))
    True
    """

    def __init__(self, alpha: float = 3.0, beta: float = 0.1) -> None:
        super().__init__()
        self.alpha = _check_alpha(alpha)
        self.beta = _check_beta(beta)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``logits`` ``(B, 2, H[, W, D])``, ``target`` / ``ignore`` ``(B, H[, W, D])``."""
        return lopsided_bootstrap(logits, target, self.alpha, self.beta, ignore)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}"


def make_loss(name: str, alpha: float = 3.0, beta: float = 0.1) -> nn.Module:
    """The loss module named ``name`` (one of :data:`LOSSES`), for configurations.

    ``alpha`` is ignored by ``bootstrap`` and ``beta`` by ``weighted_ce``.
    """
    if name == "weighted_ce":
        return WeightedCELoss(alpha)
    if name == "bootstrap":
        return BootstrapLoss(beta)
    if name == "lopsided_bootstrap":
        return LopsidedBootstrapLoss(alpha, beta)
    raise ValueError(f"unknown loss {name!r}; choose one of {list(LOSSES)}")
