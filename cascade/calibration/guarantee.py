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
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Certificate",
    "bets",
    "betting_pvalue",
    "certify",
    "clt_pvalue",
    "crc_admissible",
    "fixed_sequence",
    "gates_to_cheaper",
    "queries_needed",
    "queries_to_cheaper",
]

# Bet at most 90% of the capital that could be lost. WSR suggest c = 1/2; any c < 1 keeps the
# capital positive and the test valid. On few hundred queries the bets that matter sit at the
# cap, and c = 0.9 certified 0.30x top where c = 0.5 kept always-top (benchmarks/RESULTS.md,
# "bounds"); the validity simulation holds at this cap.
_BET_CAP = 0.9


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
    log_capital = np.cumsum(np.log1p(bets(x, m0, delta) * (x - m0)))
    best = float(np.max(log_capital))
    return 1.0 if best <= 0 else float(min(1.0, math.exp(-best)))


def bets(x: np.ndarray, m0: float, delta: float) -> np.ndarray:
    """The bet on each point of ``x`` (in [0, 1], in betting order), from the points before it.

    WSR's predictable plug-in: lambda_t = sqrt(2 log(1/delta) / (n sigma_{t-1}^2)), with the
    running mean and variance of x_1..x_{t-1} (priors 1/2 and 1/4), capped at ``_BET_CAP / m0``.
    Bet t must not read x_t: a bet sized with the point it is placed on is no longer a fair
    game under the null, and Ville's inequality, hence the p-value, no longer holds.
    """
    n = len(x)
    t = np.arange(1, n + 1)
    mu = (0.5 + np.cumsum(x)) / (t + 1)
    var = (0.25 + np.cumsum((x - mu) ** 2)) / (t + 1)
    prev_var = np.r_[0.25, var[:-1]]
    return np.minimum(np.sqrt(2 * math.log(1 / delta) / (n * prev_var)), _BET_CAP / m0)


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


def queries_needed(
    d: np.ndarray,
    low: float,
    high: float,
    delta: float,
    *,
    bound: str = "betting",
    seed: int = 0,
    draws: int = 20,
    power: float = 0.5,
    limit: int = 200_000,
) -> int | None:
    """Roughly how many held-out queries like ``d`` it takes for the test to certify.

    An estimate, not a promise: queries are resampled from ``d`` (so the observed mean and
    spread stand in for the true ones) at sizes growing by a quarter from ``len(d)``, and the
    first size at which a share ``power`` of ``draws`` resamples pass the same test at ``delta``
    is returned. The default power is a half, not the usual 0.8: the estimate is asked for after
    a failed test, when the observed margin tends to be low, and 0.8 would compound that.

    Args:
        d: Per-query differences q_pi - R * q_top of the candidate on the held-out queries.
        low / high: Bounds of d, as for ``betting_pvalue``.
        delta: The level the candidate is tested at.
        bound: ``betting`` or ``clt``, the test the calibration used.
        seed: Seed of the resampling (fixed, so the estimate is reproducible).
        draws: Resamples per size.
        power: The share of resamples that must pass.
        limit: The largest size tried.

    Returns:
        The estimated number of queries (more than ``len(d)``), or None when no size can be
        given: ``d``'s mean is less than one standard error above zero (the margin is within
        the noise, and any size would be invented), or more than ``limit`` would be needed.
    """
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n < 2:
        return None
    mean, standard_error = float(np.mean(d)), float(np.std(d, ddof=1)) / math.sqrt(n)
    if mean <= 0 or mean < standard_error:
        return None
    rng = np.random.default_rng(seed)
    while True:
        n = math.ceil(n * 1.25)
        if n > limit:
            return None
        passed = 0
        for _ in range(draws):
            sample = rng.choice(d, size=n)
            p = (
                betting_pvalue(sample, low, high, delta, seed=seed)
                if bound == "betting"
                else clt_pvalue(sample)
            )
            passed += p <= delta
        if passed >= power * draws:
            return n


def crc_admissible(losses: Sequence[np.ndarray], bound_high: float) -> int:
    """How many candidates, in the given order, conformal risk control admits at risk 0.

    ``losses`` holds each candidate's per-query loss (here R x q_top - q), in an order fixed
    before the data was seen, most conservative first. Each query's loss is replaced by its
    running maximum along that order: a monotone loss that is never below the real one, which
    CRC needs. Candidate k is admissible when (sum over the n queries of the monotone loss +
    ``bound_high``) / (n + 1) <= 0, ``bound_high`` being the largest loss a query can have. Every
    candidate up to the last admissible one then has E[loss on a new query] <= 0, averaged over
    calibration sets (Angelopoulos, Bates, Fisch, Lei & Schuster, "Conformal Risk Control",
    2022; monotone in the order, so any admissible candidate may be chosen, the cheapest one
    included).

    Returns:
        The length of the admissible prefix (0: not even the first).
    """
    if not losses:
        return 0
    worst = np.full(len(losses[0]), -np.inf)
    n = len(worst)
    for k, loss in enumerate(losses):
        worst = np.maximum(worst, loss)
        if (float(worst.sum()) + bound_high) / (n + 1) > 0:
            return k
    return len(losses)


def certify(
    sequences: Sequence[Sequence[Hashable]],
    always_top: Hashable,
    outcome: Mapping[Hashable, tuple[np.ndarray, np.ndarray]],
    q_top: np.ndarray,
    target: float,
    delta: float,
    guarantee: str,
    bound: str,
    seed: int,
) -> tuple[dict[Hashable, float], int, float]:
    """(certified policy -> p-value, candidates tested, the level each sequence was tested at).

    ``pac``: Bonferroni across the sequences, fixed-sequence testing within each. ``expected``:
    conformal risk control over the sequences interleaved (p-values NaN). For R <= 1 always-top
    is certified whatever the data (its per-query difference is never negative); for R > 1 it
    never is, and only the sequences' own candidates can meet the target."""
    certified: dict[Hashable, float] = {}
    safe = target <= 1  # always-top's d = (1 - R) q_top >= 0 on every query: no test needed
    if guarantee == "expected":
        longest = max((len(seq) for seq in sequences), default=0)
        order = [seq[k] for k in range(longest) for seq in sequences if k < len(seq)]
        if safe:
            # always-top leads the order (its loss <= 0 keeps every running maximum as it was)
            # and is CRC's fallback: chosen when nothing else is admissible
            order = [always_top, *order]
            certified[always_top] = math.nan
        admitted = crc_admissible([target * q_top - outcome[p][1] for p in order], target)
        for p in order[:admitted]:
            certified[p] = math.nan
        return certified, len(order), delta
    level = delta / max(1, len(sequences))
    tested = 0
    if safe:
        certified[always_top] = 0.0
    # for R > 1 always-top cannot pass (d <= 0), so it is not put in front of the sequences:
    # it would stop each one before any cheaper candidate is tested
    for seq in sequences:
        diffs = [outcome[p][1] - target * q_top for p in seq]
        cert = fixed_sequence(diffs, -target, 1.0, level, seed=seed, bound=bound)
        tested += len(cert.pvalues)
        for k in cert.certified:
            certified.setdefault(seq[k], cert.pvalues[k])
    return certified, tested, level


def gates_to_cheaper(
    sequences: Sequence[Sequence[Hashable]],
    outcome: Mapping[Hashable, tuple[np.ndarray, np.ndarray]],
    certified: Mapping[Hashable, float],
    top_cost: float,
    bar: np.ndarray,
) -> list[list[np.ndarray]]:
    """Per sequence, d = q - R x q_top of every candidate that must still pass before one
    cheaper than always-top is certified (fixed-sequence testing stops at the first failure);
    sequences with nothing cheaper to reach are left out."""
    gates: list[list[np.ndarray]] = []
    for seq in sequences:
        gate: list[np.ndarray] = []
        for p in seq:
            if p not in certified:
                gate.append(outcome[p][1] - bar)
            if float(outcome[p][0].mean()) < top_cost:
                gates.append(gate)
                break
    return gates


def queries_to_cheaper(
    gates: Sequence[Sequence[np.ndarray]], target: float, level: float, bound: str, seed: int
) -> int | None:
    """Estimated certify queries for the easiest sequence to get through to a cheaper policy,
    or None when none can be estimated (a gate with no positive margin, or too thin a one)."""
    best: int | None = None
    for gate in gates:
        if not all(float(d.mean()) > 0 for d in gate):
            continue
        sizes = [queries_needed(d, -target, 1.0, level, bound=bound, seed=seed) for d in gate]
        if gate and None not in sizes:
            n = max(s for s in sizes if s is not None)
            best = n if best is None else min(best, n)
    return best
