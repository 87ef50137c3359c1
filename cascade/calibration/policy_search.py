"""The policy search of ``calibrate_policy``: candidates, cheapest first per price of quality.

On small ladders every combination of kept rungs, router skips and acceptance thresholds is
evaluated; on large ones, coordinate descent finds the cheapest policy for each price of quality
lambda. ``grid_paths`` gives the fixed candidate sequences of the ``crossfit`` scheme.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cascade.calibration.policy_table import AnswerTable, Estimates, Policy, simulate

__all__ = [
    "ACCEPT_POINTS",
    "EXHAUSTIVE",
    "GRID",
    "LAMBDAS",
    "SKIP_QUANTILES",
    "Search",
    "grid_paths",
    "midpoints",
    "search_path",
    "subsets",
]

LAMBDAS = np.geomspace(50.0, 0.02, 28)  # quality-first to cost-first
ACCEPT_POINTS = 64  # candidate acceptance thresholds per rung
SKIP_QUANTILES = (0.1, 0.25, 0.5)
EXHAUSTIVE = 4000  # combinations of one subset evaluated exhaustively (else coordinate descent)


def subsets(rungs: int) -> list[tuple[int, ...]]:
    top = rungs - 1
    out = []
    for mask in range(1 << top):
        out.append((*(j for j in range(top) if mask >> j & 1), top))
    return sorted(out, key=len, reverse=True)


def midpoints(values: np.ndarray, points: int) -> list[float]:
    """Thresholds between distinct values, never equal to one (so no rounding flips a tie)."""
    distinct = np.unique(values[np.isfinite(values)])
    if len(distinct) < 2:
        return []
    mids = (distinct[1:] + distinct[:-1]) / 2
    if len(mids) > points:
        mids = mids[np.unique(np.linspace(0, len(mids) - 1, points).round().astype(int))]
    return [float(m) for m in mids]


class Search:
    """Lambda sweep with coordinate descent over one subset's thresholds, on the fit part."""

    def __init__(self, table: AnswerTable, est: Estimates, rows: np.ndarray):
        self.table, self.est, self.rows = table, est, rows
        self.cache: dict[Any, np.ndarray] = {}
        top = len(table.rungs) - 1
        self.top_cost = float(table.call_cost[top][rows].mean()) or 1e-12
        self.top_quality = float(table.score[top][rows].mean()) or 1e-12
        self.seen: dict[Policy, tuple[float, float]] = {}

    @property
    def points(self) -> list[tuple[float, float]]:
        return list(self.seen.values())

    def run(self, policy: Policy) -> tuple[float, float]:
        if policy not in self.seen:
            cost, quality = simulate(
                policy, self.table, self.est, self.rows, crossfit=True, cache=self.cache
            )
            self.seen[policy] = (float(cost.mean()), float(quality.mean()))
        return self.seen[policy]

    def options(self, subset: tuple[int, ...]) -> dict[tuple[str, int], list[float]]:
        opts: dict[tuple[str, int], list[float]] = {}
        for i in subset[:-1]:
            kept = sum(1 << j for j in subset if j < i)
            p = self.est.quality_p(self.table, i, kept, kept, crossfit=True)[self.rows]
            p = p[self.table.answered[i][self.rows]]
            opts[("accept", i)] = [0.0, *midpoints(p, ACCEPT_POINTS), math.inf]
            rp = self.est.router_p(self.table, i, crossfit=True)[self.rows]
            qs = np.quantile(rp, SKIP_QUANTILES) if len(rp) else []
            opts[("skip", i)] = [0.0, *sorted({float(v) + 1e-12 for v in qs if v > 0})]
        return opts

    def sweep(self, subset: tuple[int, ...]) -> None:
        """Evaluate this subset's policies: every one on a small grid, else the lambda-optimal
        ones (quality-first). What was evaluated is in ``seen``."""
        opts = self.options(subset)
        state = {k: (v[-1] if k[0] == "accept" else 0.0) for k, v in opts.items()}

        def policy(s: Mapping[tuple[str, int], float]) -> Policy:
            return Policy(
                subset,
                {i: v for (kind, i), v in s.items() if kind == "skip"},
                {i: v for (kind, i), v in s.items() if kind == "accept"},
            )

        grid = math.prod(len(v) for v in opts.values())
        if grid <= EXHAUSTIVE:  # small ladders: every combination, so the path is complete
            keys = list(opts)
            for combo in itertools.product(*(opts[k] for k in keys)):
                self.run(policy(dict(zip(keys, combo, strict=True))))
            return
        for lam in LAMBDAS:

            def objective(point: tuple[float, float], lam: float = float(lam)) -> float:
                return point[0] / self.top_cost - lam * point[1] / self.top_quality

            best = objective(self.run(policy(state)))
            for _ in range(6):
                moved = False
                for key, values in opts.items():
                    for v in values:
                        if v == state[key]:
                            continue
                        trial = {**state, key: v}
                        value = objective(self.run(policy(trial)))
                        if value < best - 1e-12:
                            best, state, moved = value, trial, True
                if not moved:
                    break


def search_path(search: Search, kept: Sequence[tuple[int, ...]]) -> list[Policy]:
    """Candidates, most conservative first: every policy the sweeps evaluated that no other
    beats on both cost and quality on the fit part, from the highest quality down."""
    for s in kept:
        search.sweep(s)
    top = len(search.table.rungs) - 1
    always_top = Policy((top,))
    top_cost, _ = search.run(always_top)
    ranked = sorted(search.seen.items(), key=lambda kv: (-kv[1][1], kv[1][0]))
    path = [always_top]
    cheapest = top_cost
    for policy, (c, _) in ranked:
        if c < cheapest - 1e-15:
            path.append(policy)
            cheapest = c
    return path


GRID = tuple(round(1 - k / 200, 3) for k in range(201))  # acceptance bars, 1.0 down to 0.0


def grid_paths(rungs: int) -> list[list[Policy]]:
    """Data-independent candidate sequences: per kept-rung subset, one common acceptance bar
    on the calibrated probability, from 1.0 (conservative) down to 0."""
    out = []
    for subset in subsets(rungs):
        if len(subset) > 1:
            out.append([Policy(subset, {}, dict.fromkeys(subset[:-1], bar)) for bar in GRID])
    return out
