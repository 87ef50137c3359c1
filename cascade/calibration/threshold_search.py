"""The threshold search of ``cascade calibrate --method thresholds``.

Every subset of kept rungs is searched: its grid of candidate thresholds exhaustively when it
is small, else by coordinate descent from several starts. Each configuration's cost and quality
on the train queries come from the exact simulator (``calibration.simulation``). The choice is the
cheapest configuration whose one-sided 90% lower confidence bound of
mean(q_cascade(x) - R * q_top(x)) is >= 0 (paired normal approximation).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cascade.calibration.simulation import DROP, ReplayTable, View, build_views, simulate, subsets

__all__ = ["GUARD", "SEED", "calibrated_mapping", "search"]

Z = 1.2816  # one-sided 90% normal quantile
GUARD = "paired lower confidence bound, z=1.28 (one-sided 90%)"
SEED = 0
_EXHAUSTIVE_LIMIT = 200_000  # grid points per kept-rung subset searched exhaustively
_BATCH_CELLS = 1_000_000  # combinations x queries simulated per numpy batch


def stats(
    cost: np.ndarray, quality: np.ndarray, q_top: np.ndarray, target: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean cost, mean quality and the guard's bound for each row (one per configuration)."""
    n = quality.shape[1]
    diff = quality - target * q_top[None, :]
    sd = diff.std(axis=1, ddof=1) if n > 1 else np.zeros(len(diff))
    return cost.mean(axis=1), quality.mean(axis=1), diff.mean(axis=1) - Z * sd / math.sqrt(n)


def _pareto(cost: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points no other point beats on both cost and quality, cheapest first."""
    order = np.lexsort((-quality, cost))
    c, q = cost[order], quality[order]
    best = np.maximum.accumulate(q)
    keep = np.r_[True, q[1:] > best[:-1]]
    return c[keep], q[keep]


@dataclass(slots=True)
class Best:
    """The running choice: cheapest feasible point (ties: higher quality), and the best bound."""

    point: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    key: tuple[float, float, int] = (math.inf, 0.0, 0)
    best_bound: float = -math.inf
    best_bound_quality: float = 0.0
    evaluated: int = 0
    front_c: np.ndarray = field(default_factory=lambda: np.empty(0))
    front_q: np.ndarray = field(default_factory=lambda: np.empty(0))

    def add(
        self,
        subset: tuple[int, ...],
        combos: np.ndarray,
        mean_c: np.ndarray,
        mean_q: np.ndarray,
        lcb: np.ndarray,
    ) -> None:
        self.evaluated += len(combos)
        c, q = _pareto(np.r_[self.front_c, mean_c], np.r_[self.front_q, mean_q])
        self.front_c, self.front_q = c, q
        top = int(np.argmax(lcb))
        if lcb[top] > self.best_bound:
            self.best_bound, self.best_bound_quality = float(lcb[top]), float(mean_q[top])
        feasible = np.flatnonzero(lcb >= -1e-12)
        if not len(feasible):
            return
        # Cheapest; among equal costs the higher quality; then the more conservative thresholds.
        order = np.lexsort(
            (-combos[feasible].sum(axis=1), -mean_q[feasible], np.round(mean_c[feasible], 15))
        )
        j = feasible[order[0]]
        key = (round(float(mean_c[j]), 15), -float(mean_q[j]), -int(combos[j].sum()))
        if key < self.key:
            self.key, self.point = key, (subset, tuple(int(x) for x in combos[j]))


def _evaluate(
    views: Sequence[View],
    combos: np.ndarray,
    q_top: np.ndarray,
    target: float,
    best: Best,
    subset: tuple[int, ...],
) -> np.ndarray:
    """Simulate ``combos`` in batches, feed the running choice, return their bounds."""
    size = max(1, _BATCH_CELLS // max(1, len(q_top)))
    bounds = []
    for start in range(0, len(combos), size):
        part = combos[start : start + size]
        mean_c, mean_q, lcb = stats(*simulate(views, part), q_top, target)
        best.add(subset, part, mean_c, mean_q, lcb)
        bounds.append(np.c_[mean_c, mean_q, lcb])
    return np.vstack(bounds)


def _descend(
    views: Sequence[View],
    dims: Sequence[int],
    q_top: np.ndarray,
    target: float,
    best: Best,
    subset: tuple[int, ...],
) -> None:
    """Coordinate descent from several starts, for grids too large to search exhaustively."""
    rng = np.random.default_rng(SEED)
    starts = [tuple(d - 1 for d in dims), tuple(d // 2 for d in dims), tuple(0 for _ in dims)]
    starts += [tuple(int(rng.integers(d)) for d in dims) for _ in range(5)]
    for start in starts:
        point = np.array(start)
        for _ in range(20):
            moved = False
            for axis, size in enumerate(dims):
                if size == 1:
                    continue
                combos = np.repeat(point[None, :], size, axis=0)
                combos[:, axis] = np.arange(size)
                res = _evaluate(views, combos, q_top, target, best, subset)
                ok = np.flatnonzero(res[:, 2] >= -1e-12)
                if len(ok):
                    pick = ok[np.lexsort((-res[ok, 1], np.round(res[ok, 0], 15)))[0]]
                else:  # not yet feasible: climb the bound
                    pick = int(np.argmax(res[:, 2]))
                if pick != point[axis]:
                    point[axis], moved = pick, True
            if not moved:
                break


def search(
    rp: ReplayTable, grid: Mapping[int, list[float]], target: float, say: Callable[[str], None]
) -> tuple[Best, dict[tuple[int, ...], list[View]]]:
    """Every subset of kept rungs; its grid exhaustively when small, else coordinate descent."""
    best = Best()
    all_views = {}
    for subset in subsets(len(rp.rungs)):
        views = build_views(rp, subset, grid)
        all_views[subset] = views
        dims = [len(v.accept) for v in views]
        total = math.prod(dims)
        if total <= _EXHAUSTIVE_LIMIT:
            combos = np.indices(dims).reshape(len(dims), -1).T
            _evaluate(views, combos, rp.q_top, target, best, subset)
        else:
            say(
                f"  {total:,} combinations for ladder {names(rp, subset)}: "
                "coordinate descent from 8 starts"
            )
            _descend(views, dims, rp.q_top, target, best, subset)
    return best, all_views


def names(rp: ReplayTable, subset: Sequence[int]) -> str:
    return " -> ".join(rp.rungs[i].key for i in subset)


def calibrated_mapping(
    raw: Mapping[str, Any],
    rp: ReplayTable,
    task: str,
    subset: Sequence[int],
    grid: Mapping[int, list[float]],
    picks: Sequence[int],
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The original mapping with the task's ladder rewritten as explicit, tuned rungs."""
    out = copy.deepcopy(dict(raw))
    old = raw["tasks"][task]["ladder"]
    ladder: list[Any] = []
    thresholds: dict[str, dict[str, float]] = {}
    for i, pick in zip(subset, picks, strict=True):
        rung = rp.rungs[i]
        if i == subset[-1]:
            ladder.append(copy.deepcopy(old[i]))
            continue
        entry = copy.deepcopy(old[i]) if isinstance(old[i], dict) else {}  # keeps accept:
        entry.pop("model", None)
        specs = copy.deepcopy(rung.specs)
        if rung.tuned is not None and rung.tunable is not None:
            theta = grid[i][pick]
            j = rung.spec_of[rung.tuned]
            thresholds[rung.key] = {rung.label: theta}
            if theta == DROP:
                del specs[j]
            else:
                specs[j][rung.tunable.setting] = int(theta) if rung.tunable.integer else theta
        ladder.append({"model": rung.key, **entry, "evaluators": specs})
    out["tasks"][task]["ladder"] = ladder
    return out, thresholds
