"""What a fine-tuning round minimises: a few trusted strokes, a frozen teacher everywhere else.

An annotator marks a handful of voxels (1 = missed lesion, 2 = not a lesion)
and leaves the rest of the case unmarked. Three terms act on the network:

- **Strokes** are trusted: class-weighted cross-entropy (``alpha`` on lesion
  marks), each marked voxel weighing ``stroke_weight`` unmarked voxels. The
  strokes of one slice together never weigh more than ``stroke_share`` of that
  slice, so 9 painted voxels cannot outweigh the 65,000 others: that was the
  first half of the runaway of issue #13.
- **Unmarked voxels** follow the lopsided bootstrap (METHOD.md) with the base
  model as a *frozen teacher*: where the teacher sees a lesion (probability >=
  ``keep_threshold``) the target is lesion with weight ``alpha``; elsewhere it
  is ``beta * CE(0, P) + (1 - beta) * CE(teacher, P)``. The method's bootstrap
  target ``argmax P`` would follow the network being trained, a positive
  feedback loop: whatever a round starts to call lesion the loss then asks
  for (the loss log of the runaway went 0.014 -> 38.5). The teacher does not
  move, so it anchors the prediction away from the strokes, and a lesion
  nobody painted is never taught as hard background: its target keeps the
  teacher's own belief (``beta = 1`` gives class-weighted CE against the
  teacher's hard labels, the comparison in ``bench/correction_loop.py``).
- **An anchor on the logits**: ``anchor_weight * (z - z_teacher)^2`` per
  unmarked voxel, ``z = log P1 - log P0``. Cross-entropy to the teacher hardly
  notices the shift that matters most: a voxel the teacher puts at 0.05 moved
  to 0.125 costs it 0.03, while the mask at the 0.10 threshold gains it; the
  logit anchor charges the same shift 1.0. Measured on the sample case (one
  3x3 dab on a missed 1-voxel lesion, head-only round, AdamW, 30 steps):
  without the anchor (the previous bundled model, lr 1e-5 to 1e-4) the lesion
  volume away from the dab grew from 24.6 to 31-193 cm^3; with it (the
  current bundled model, lr 1e-4), from 14.5 to 15.0 cm^3, and the dab's
  lesion was found.
- ``unmarked="ignore"`` drops the unmarked voxels altogether (only the
  strokes count); kept for the benchmark, where it shows why an anchor is
  needed (full mode on an H200: 103-140 cm^3 and 300 new candidates away from
  one dab, before the trust region's back-off).

"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from napari_metseg.correction.samples import LESION, UNMARKED
from napari_metseg.losses import lopsided_bootstrap

#: How unmarked voxels count: anchored to the frozen teacher, or not at all.
UNMARKED_MODES: tuple[str, ...] = ("teacher", "ignore")


def lesion_margin(logits: torch.Tensor) -> torch.Tensor:
    """``log P1 - log P0`` per voxel of two-class ``logits`` ``(B, 2, H, W)``: float ``(B, H, W)``."""
    logits = logits.float()
    return logits[:, 1] - logits[:, 0]


def voxel_weights(marks: torch.Tensor, stroke_weight: float, stroke_share: float) -> torch.Tensor:
    """Weight of every voxel of ``marks`` ``(B, H, W)``: 1 unmarked, capped ``stroke_weight`` marked.

    Per sample the marked voxels together weigh at most ``stroke_share``
    times the sample's voxel count.
    """
    marked = marks != UNMARKED
    count = marked.flatten(1).sum(dim=1).clamp_min(1).to(torch.float32)
    cap = stroke_share * marks[0].numel() / count
    per_sample = torch.minimum(torch.full_like(count, float(stroke_weight)), cap)
    return torch.where(
        marked, per_sample.view(-1, 1, 1), torch.ones_like(per_sample).view(-1, 1, 1)
    )


def correction_loss(
    logits: torch.Tensor,
    marks: torch.Tensor,
    teacher: torch.Tensor,
    *,
    unmarked: str = "teacher",
    alpha: float = 3.0,
    beta: float = 0.1,
    keep_threshold: float = 0.5,
    stroke_weight: float = 100.0,
    stroke_share: float = 0.05,
    anchor_weight: float = 1.0,
) -> torch.Tensor:
    """Weighted mean loss of a batch of correction samples (module docstring); scalar.

    ``logits`` ``(B, 2, H, W)``; ``marks`` uint8 ``(B, H, W)`` holding 0 / 1 /
    2 (:mod:`napari_metseg.correction.samples`); ``teacher`` float ``(B, H, W)``,
    the base model's lesion logit ``log P1 - log P0`` (no gradient).
    """
    if unmarked not in UNMARKED_MODES:
        raise ValueError(f"unmarked must be one of {list(UNMARKED_MODES)}, got {unmarked!r}")
    if tuple(marks.shape) != tuple(teacher.shape):
        raise ValueError(
            f"marks {tuple(marks.shape)} and teacher {tuple(teacher.shape)} must have one shape"
        )
    marked = marks != UNMARKED
    lesion = (marks == LESION).long()
    weight = voxel_weights(marks, stroke_weight, stroke_share)
    stroke_ce = F.cross_entropy(logits.float(), lesion, reduction="none")
    strokes = (torch.where(lesion == 1, alpha, 1.0) * stroke_ce * weight * marked).sum()
    if unmarked == "ignore":
        return strokes / weight[marked].sum().clamp_min(1.0)
    teacher = teacher.detach().float()
    anchor = torch.sigmoid(teacher)
    target = torch.where(marked, lesion, (anchor >= keep_threshold).long())
    free = lopsided_bootstrap(
        logits, target, alpha, beta, ignore=marked, anchor=anchor, reduction="none"
    )
    held = anchor_weight * ((lesion_margin(logits) - teacher) ** 2 * ~marked)
    return (strokes + free.sum() + held.sum()) / weight.sum()
