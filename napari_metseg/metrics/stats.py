"""Statistics the studies report: Hanley-McNeil confidence intervals, Wilcoxon rank-sum tests."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

logger = logging.getLogger(__name__)


def hanley_mcneil_ci(
    area: float, n_positive: int, n_negative: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Normal-approximation confidence interval of an area (AUC or AP), clipped to [0, 1].

    Hanley & McNeil (1982), *Radiology* 143:29-36: with ``A`` the area,
    ``Q1 = A / (2 - A)`` and ``Q2 = 2 A^2 / (1 + A)``,
    ``SE^2 = (A (1 - A) + (n1 - 1)(Q1 - A^2) + (n2 - 1)(Q2 - A^2)) / (n1 n2)``
    and the interval is ``A -/+ z SE``. For detection the studies apply it to
    the mAP; we take ``n1`` = ground-truth lesions and ``n2`` = false-positive
    candidates. A count of 0 is taken as 1 so the interval stays defined (at
    ``A`` = 0 or 1 the width is 0 whatever the counts). NaN area gives NaN.

    >>> hanley_mcneil_ci(1.0, 10, 0)
    (1.0, 1.0)
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if n_positive < 0 or n_negative < 0:
        raise ValueError(f"counts must be >= 0, got {n_positive} and {n_negative}")
    if math.isnan(area):
        return (math.nan, math.nan)
    if not 0.0 <= area <= 1.0:
        raise ValueError(f"area must lie in [0, 1], got {area!r}")
    n1, n2 = max(n_positive, 1), max(n_negative, 1)
    q1 = area / (2.0 - area)
    q2 = 2.0 * area**2 / (1.0 + area)
    variance = (area * (1.0 - area) + (n1 - 1) * (q1 - area**2) + (n2 - 1) * (q2 - area**2)) / (
        n1 * n2
    )
    half = float(stats.norm.ppf(0.5 + confidence / 2.0)) * math.sqrt(max(variance, 0.0))
    return (max(0.0, area - half), min(1.0, area + half))


@dataclass(frozen=True)
class RankSumResult:
    """A two-sample Wilcoxon rank-sum test: ``statistic`` (z), ``p_value``, group sizes."""

    statistic: float
    p_value: float
    n_a: int
    n_b: int


def wilcoxon_rank_sum(
    scores_a: Sequence[float], scores_b: Sequence[float], alternative: str = "two-sided"
) -> RankSumResult:
    """Compare two models' per-case scores (e.g. Dice) with a Wilcoxon rank-sum test.

    The studies compare models with the rank-sum (Mann-Whitney) test, which
    treats the two groups as independent; scipy's ``ranksums`` gives the
    normal-approximation z statistic. NaN scores (cases where a metric is
    undefined, e.g. precision without predictions) are left out and logged.
    ``alternative``: ``"two-sided"``, ``"less"`` or ``"greater"`` (a vs b).
    """
    if alternative not in ("two-sided", "less", "greater"):
        raise ValueError(f"alternative must be two-sided, less or greater, got {alternative!r}")
    a = np.asarray(scores_a, dtype=np.float64).ravel()
    b = np.asarray(scores_b, dtype=np.float64).ravel()
    a_valid, b_valid = a[~np.isnan(a)], b[~np.isnan(b)]
    if a_valid.size < a.size or b_valid.size < b.size:
        logger.info(
            "rank-sum test: left out %d and %d NaN scores",
            a.size - a_valid.size,
            b.size - b_valid.size,
        )
    if a_valid.size == 0 or b_valid.size == 0:
        raise ValueError(
            f"each group needs at least one score, got {a_valid.size} and {b_valid.size}"
        )
    result = stats.ranksums(a_valid, b_valid, alternative=alternative)
    return RankSumResult(
        float(result.statistic), float(result.pvalue), int(a_valid.size), int(b_valid.size)
    )
