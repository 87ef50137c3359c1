"""Learn-then-Test: certify a quality target with a stated probability, not a heuristic.

The claim for a policy pi is "E[q_pi(x)] >= R * E[q_top(x)]", i.e. the mean of the per-query
difference d(x) = q_pi(x) - R * q_top(x) is at least 0. Each candidate policy's null hypothesis
"E[d] < 0" is tested on held-out queries the policy was not fitted or chosen on, with a
betting (testing-by-betting) p-value, valid for any bounded d at any sample size
(Waudby-Smith & Ramdas, "Estimating means of bounded random variables by betting", 2023).

Candidates are tested in a fixed order chosen on other data (most conservative first), each at
level delta, stopping at the first that fails (fixed-sequence testing, which controls the
family-wise error at delta with no multiplicity correction; Angelopoulos et al., "Learn then
Test", 2021). With probability at least 1 - delta every certified policy meets the target, so
the cheapest certified one does too. The assumption: calibration and future queries are
exchangeable (drawn from the same distribution).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Certificate", "betting_pvalue", "clt_pvalue", "fixed_sequence"]

_BET_CAP = 0.5  # bet at most half the capital that could be lost (WSR's c = 1/2)


def betting_pvalue(d: np.ndarray, low: float, high: float, delta: float, seed: int = 0) -> float:
    """A valid p-value for the null "E[d] < 0", for d bounded in [low, high] with low < 0.

    Capital K_t = prod(1 + lambda_t (x_t - m0)) with x = (d - low) / (high - low) in [0, 1] and
    m0 = -low / (high - low) (the null's boundary). Under the null K is a non-negative
    supermartingale, so P(max_t K_t >= 1/p) <= p (Ville's inequality). The bets lambda_t are
    predictable (WSR's plug-in rule, from the queries before t, in a seeded fixed order).

    Args:
        d: Per-query differences q_pi - R * q_top.
        low / high: Bounds of d (low < 0 < high).
        delta: The level the bets are tuned for (any level may still be read off the p-value).
        seed: The order in which queries are bet on (fixed, so results are reproducible).

    Returns:
        The p-value in (0, 1]; reject the null (certify) when it is <= delta.
    """
    if not low < 0 < high:
        raise ValueError(f"need low < 0 < high, got {low}, {high}")
    n = len(d)
    if n == 0:
        return 1.0
    x = (np.asarray(d, dtype=float) - low) / (high - low)
    x = np.clip(x, 0.0, 1.0)[np.random.default_rng(seed).permutation(n)]
    m0 = -low / (high - low)
    # WSR predictable plug-in: running mean and variance with a prior of 1/2 and 1/4.
    t = np.arange(1, n + 1)
    mu = (0.5 + np.cumsum(x)) / (t + 1)
    var = (0.25 + np.cumsum((x - mu) ** 2)) / (t + 1)
    prev_var = np.r_[0.25, var[:-1]]
    lam = np.minimum(np.sqrt(2 * math.log(1 / delta) / (n * prev_var)), _BET_CAP / m0)
    log_capital = np.cumsum(np.log1p(lam * (x - m0)))
    best = float(np.max(log_capital))
    return 1.0 if best <= 0 else float(min(1.0, math.exp(-best)))


def clt_pvalue(d: np.ndarray) -> float:
    """The one-sided normal-approximation p-value for "E[d] < 0" (asymptotically valid only:
    the betting p-value holds at every sample size, this one as n grows)."""
    n = len(d)
    if n < 2:
        return 1.0
    sd = float(np.std(d, ddof=1))
    mean = float(np.mean(d))
    if sd == 0:
        return 0.0 if mean > 0 else 1.0
    return 0.5 * math.erfc(mean / (sd / math.sqrt(n)) / math.sqrt(2))


@dataclass(frozen=True, slots=True)
class Certificate:
    """The outcome of fixed-sequence testing over an ordered list of candidates.

    Attributes:
        certified: Indices of the candidates that passed, in test order (a prefix).
        pvalues: The p-value of every candidate tested (the first failure included).
        delta: The level.
        n: Held-out queries used.
    """

    certified: tuple[int, ...]
    pvalues: tuple[float, ...]
    delta: float
    n: int


def fixed_sequence(
    diffs: Sequence[np.ndarray],
    low: float,
    high: float,
    delta: float,
    *,
    seed: int = 0,
    bound: str = "betting",
) -> Certificate:
    """Test candidates in the given order at level ``delta``; stop at the first failure.

    ``bound`` is ``betting`` (valid at any sample size) or ``clt`` (normal approximation).
    """
    certified: list[int] = []
    pvalues: list[float] = []
    for k, d in enumerate(diffs):
        p = betting_pvalue(d, low, high, delta, seed=seed) if bound == "betting" else clt_pvalue(d)
        pvalues.append(p)
        if p > delta:
            break
        certified.append(k)
    n = len(diffs[0]) if len(diffs) else 0
    return Certificate(tuple(certified), tuple(pvalues), delta, n)
