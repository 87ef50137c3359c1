"""A validity simulation of the certification: synthetic ladders whose truth is known.

A *world* is a three-rung ladder: each query has a difficulty z ~ U(0, 1); rung i is right with
probability sigmoid(a_i - b_i z) and shows a confidence signal, that probability plus noise,
clipped to [0, 1] (and sometimes saturated at 1, as recorded log-probabilities are). The
candidates are exactly calibration's: ``levels.families`` x ``levels.LEVELS`` (accept at rung i
when its signal >= u). Each candidate's true mean cost and quality come from a large sample drawn
once.

A *trial* draws n fresh queries, runs the same ``guarantee.certify`` that ``cascade calibrate``
runs, chooses the cheapest certified candidate, and looks up its true quality. Over many
trials: for ``pac`` the share of trials whose choice truly falls below R x always-top must be
<= delta; for ``expected`` the mean of the chosen candidates' true quality must be >= R x
always-top's. ``holdout`` trials fit the candidate order on half the queries (the cheapest
candidate per quality on that half, as the holdout search keeps) and certify on the other half.

Used by ``tests/calibration/test_validity.py`` (a few hundred trials) and
``benchmarks/validity.py`` (thousands).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cascade.calibration.guarantee import certify
from cascade.calibration.levels import LEVELS, families

__all__ = ["WORLDS", "Trials", "World", "run_trials"]

COSTS = (1.0, 5.0, 25.0)


@dataclass(frozen=True, slots=True)
class World:
    """Rung i is right with probability sigmoid(a[i] - b[i] z); its signal has noise ``noise``
    and is saturated at 1 on a share ``saturated`` of queries."""

    name: str
    a: tuple[float, float, float]
    b: tuple[float, float, float]
    noise: float = 0.15
    saturated: float = 0.1

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(scores, signals), each (3, n)."""
        z = rng.random(n)
        p = 1 / (1 + np.exp(-(np.array(self.a)[:, None] - np.array(self.b)[:, None] * z)))
        q = (rng.random((3, n)) < p).astype(float)
        s = np.clip(p + self.noise * rng.standard_normal((3, n)), 0.0, 1.0)
        s = np.where(rng.random((3, n)) < self.saturated, 1.0, s)
        return q, s


# Cheap rungs near, above and below the target: where a wrong certificate is likeliest.
WORLDS: tuple[World, ...] = (
    # top right 90% of the time, the cheaper rungs 85% and 86% with signals that say nothing:
    # accepting more than ~90% of cheap answers falls just below R = 0.95: the null's boundary
    World("boundary", (1.7346, 1.8153, 2.1972), (0.0, 0.0, 0.0), noise=0.2, saturated=0.2),
    World("close", (2.0, 3.0, 3.5), (3.0, 3.0, 2.0)),
    World("cheap-good", (3.0, 3.2, 3.3), (2.0, 2.0, 2.0)),
    World("noisy", (2.5, 3.0, 3.5), (3.0, 2.5, 2.0), noise=0.35),
    World("flat-signal", (2.8, 3.0, 3.4), (1.0, 1.0, 1.0), noise=0.5, saturated=0.4),
)

Candidate = tuple[int, float]  # (family index, level); family -1 is always-top


def _outcome(q: np.ndarray, s: np.ndarray) -> dict[Candidate, tuple[np.ndarray, np.ndarray]]:
    """Per candidate, per-query (cost, quality) on a sample (all levels at once)."""
    n = q.shape[1]
    out: dict[Candidate, tuple[np.ndarray, np.ndarray]] = {
        (-1, 1.0): (np.full(n, COSTS[2]), q[2].copy())
    }
    u = np.array(LEVELS)[:, None]
    for f, subset in enumerate(families(3)):
        cost, quality = np.zeros((len(LEVELS), n)), np.zeros((len(LEVELS), n))
        done = np.zeros((len(LEVELS), n), dtype=bool)
        for i in subset:
            cost += np.where(done, 0.0, COSTS[i])
            if i == subset[-1]:
                quality = np.where(done, quality, q[i][None, :])
                break
            acc = ~done & (s[i][None, :] >= u)
            quality = np.where(acc, q[i][None, :], quality)
            done |= acc
        for k, level in enumerate(LEVELS):
            out[(f, level)] = (cost[k], quality[k])
    return out


def _truth(world: World, seed: int, size: int) -> dict[Candidate, tuple[float, float]]:
    """Each candidate's mean cost and quality on ``size`` queries, drawn in chunks."""
    rng = np.random.default_rng(seed)
    sums: dict[Candidate, np.ndarray] = {}
    chunk = 20_000
    for start in range(0, size, chunk):
        q, s = world.draw(min(chunk, size - start), rng)
        for k, (c, v) in _outcome(q, s).items():
            sums[k] = sums.get(k, np.zeros(2)) + np.array([c.sum(), v.sum()])
    return {k: (float(v[0] / size), float(v[1] / size)) for k, v in sums.items()}


@dataclass(slots=True)
class Trials:
    """What the trials of one (world, n, guarantee, scheme) found."""

    world: str
    n: int
    guarantee: str
    scheme: str
    target: float
    delta: float
    shortfall: list[float] = field(default_factory=list)  # true E[q] - R E[q_top], per trial
    cost: list[float] = field(default_factory=list)  # true cost / always-top's, per trial

    @property
    def violation_rate(self) -> float:
        return float(np.mean(np.array(self.shortfall) < -1e-12))

    @property
    def mean_shortfall(self) -> float:
        return float(np.mean(self.shortfall))

    @property
    def median_cost(self) -> float:
        return float(np.median(self.cost))


def run_trials(
    world: World,
    n: int,
    trials: int,
    *,
    target: float = 0.95,
    delta: float = 0.1,
    guarantee: str = "pac",
    scheme: str = "fixed",
    seed: int = 0,
    truth_size: int = 200_000,
) -> Trials:
    """``trials`` independent calibrations on n fresh queries each; see the module doc."""
    truth = _truth(world, 10_000 + seed, truth_size)
    top_cost, top_quality = truth[(-1, 1.0)]
    out = Trials(world.name, n, guarantee, scheme, target, delta)
    rng = np.random.default_rng(seed)
    for t in range(trials):
        q, s = world.draw(n, rng)
        chosen = _choose(q, s, target, delta, guarantee, scheme, t)
        cost, quality = truth[chosen]
        out.shortfall.append(quality - target * top_quality)
        out.cost.append(cost / top_cost)
    return out


def _choose(
    q: np.ndarray, s: np.ndarray, target: float, delta: float, guarantee: str, scheme: str, t: int
) -> Candidate:
    always_top: Candidate = (-1, 1.0)
    if scheme == "fixed":
        outcome = _outcome(q, s)
        sequences: Sequence[Sequence[Candidate]] = [
            [(f, u) for u in LEVELS] for f in range(len(families(3)))
        ]
    else:  # holdout: the order is fitted on one half, the other half certifies
        n = q.shape[1]
        fit, cert = np.arange(n // 2), np.arange(n // 2, n)
        on_fit = _outcome(q[:, fit], s[:, fit])
        ranked = sorted(
            (k for k in on_fit if k != always_top),
            key=lambda k: (-on_fit[k][1].mean(), on_fit[k][0].mean()),
        )
        path: list[Candidate] = []
        cheapest = COSTS[2]
        for k in ranked:
            if on_fit[k][0].mean() < cheapest - 1e-12:
                path.append(k)
                cheapest = float(on_fit[k][0].mean())
        sequences = [path]
        outcome = _outcome(q[:, cert], s[:, cert])
    q_top = outcome[always_top][1]
    certified, _, _ = certify(
        sequences, always_top, outcome, q_top, target, delta, guarantee, "betting", t
    )
    return min(certified, key=lambda k: float(outcome[k][0].mean()))  # type: ignore[arg-type,return-value]
