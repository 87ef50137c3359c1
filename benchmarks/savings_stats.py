"""The numbers behind ``benchmarks/savings.py``: seeded splits, baselines at matched quality,
per-seed outcomes and their summary over seeds, and the Markdown table.

Everything here is pure (no calibration, no files), so ``tests/calibration/test_savings_harness.py`` checks it
against hand-computed values.

Definitions (all costs are per query and shown relative to always-top on the same test split):

- *Stop at rung i* (a cascade that always stops at rung i) costs the recorded cost of rungs
  0..i and scores rung i's recorded score; a missing recording costs 0 and scores 0, as in
  ``run_bench``'s baselines.
- *Oracle (best)* is ``run_bench``'s oracle: stop at the first rung with the best recorded score.
- *Oracle at R* is the cheapest cascade that knows every score and reaches mean quality
  R x always-top: the linear-programming bound (each query moves up its cost/quality hull in
  order of quality gained per dollar; the last move may be fractional).
- *Random at R, two-point* escalates a random share p of queries from the first rung to the
  top, paying for the first rung on every query: cost c_first + p c_top, quality
  q_first + p (q_top - q_first), with p the smallest share that reaches R x q_top.
- *Random at R, best mix* is the cheapest random per-query choice among every "stop at rung i"
  cascade and "the top rung alone" (always-top is always available to the user): a mix of at
  most two of them, the optimum of that two-constraint linear programme. It can be below the
  two-point figure because mixing first-rung-only with top-alone skips the wasted first call.
- A seed *violates* the target when test quality < R x test always-top quality. A failed
  calibration falls back to always-top (cost ratio 1, quality ratio 1), so it never violates.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "baselines",
    "markdown_table",
    "matched_oracle",
    "random_mix",
    "split_records",
    "spread",
    "summarize",
]

T = TypeVar("T")
EPS = 1e-12
DASH = "\u2013"  # en dash for ranges in the Markdown table


def split_records(
    records: Sequence[T],
    seed: int,
    train_fraction: float = 0.5,
    stratum: Callable[[T], Hashable] | None = None,
) -> tuple[list[T], list[T]]:
    """A seeded random train/test split, stratified by ``stratum`` when given.

    Within each stratum (in first-seen order) the records are shuffled with
    ``random.Random(seed)`` and the first ``round(len * train_fraction)`` go to train. The order
    of records inside each part follows the input order, so a split depends only on the seed.

    Raises:
        ValueError: ``train_fraction`` is not strictly between 0 and 1, or a part is empty.
    """
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    groups: dict[Hashable, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(stratum(record) if stratum else None, []).append(i)
    rng = random.Random(seed)
    train_idx: set[int] = set()
    for members in groups.values():
        shuffled = list(members)
        rng.shuffle(shuffled)
        train_idx.update(shuffled[: round(len(shuffled) * train_fraction)])
    train = [r for i, r in enumerate(records) if i in train_idx]
    test = [r for i, r in enumerate(records) if i not in train_idx]
    if not train or not test:
        raise ValueError(
            f"split of {len(records)} records at train fraction {train_fraction} "
            "leaves a part empty"
        )
    return train, test


def random_mix(cost: Sequence[float], quality: Sequence[float], target: float) -> float:
    """Cheapest expected cost of a random choice among points (cost_i, quality_i) with expected
    quality >= ``target``: the best single point or the best mix of two.

    Returns ``math.inf`` when no point reaches the target.
    """
    best = math.inf
    n = len(cost)
    for i in range(n):
        if quality[i] >= target - EPS:
            best = min(best, cost[i])
        for j in range(n):
            lo, hi = quality[i], quality[j]
            if lo < target < hi:
                w = (target - lo) / (hi - lo)  # weight on the better point j
                best = min(best, (1 - w) * cost[i] + w * cost[j])
    return best


def matched_oracle(cost: np.ndarray, score: np.ndarray, target_total: float) -> float:
    """Mean cost of the cheapest score-aware cascade reaching mean quality target_total / n.

    ``cost`` and ``score`` are (rungs, n): the cumulative cost and the score of stopping at each
    rung. The linear-programming bound: each query starts at rung 0 and climbs its upper concave
    hull of (cost, score) points; all queries' climbs are taken in order of score gained per
    dollar, the last one fractionally. Returns ``math.inf`` if the target cannot be reached.
    """
    rungs, n = int(cost.shape[0]), int(cost.shape[1])
    base_cost = float(cost[0].sum())
    need = target_total - float(score[0].sum())
    if need <= EPS:
        return base_cost / n
    steps: list[tuple[float, float, float]] = []  # (slope, d_cost, d_score)
    for q in range(n):
        c0, s0 = float(cost[0, q]), float(score[0, q])
        while True:
            best: tuple[float, float, int] | None = None  # (slope, d_score, rung)
            for i in range(rungs):
                dc, ds = float(cost[i, q]) - c0, float(score[i, q]) - s0
                if ds <= EPS:
                    continue
                slope = math.inf if dc <= 0 else ds / dc
                if best is None or (slope, ds) > best[:2]:
                    best = (slope, ds, i)
            if best is None:
                break
            i = best[2]
            steps.append((best[0], float(cost[i, q]) - c0, float(score[i, q]) - s0))
            c0, s0 = float(cost[i, q]), float(score[i, q])
    steps.sort(key=lambda s: -s[0])
    total = base_cost
    for _, dc, ds in steps:
        if ds >= need - EPS:
            return (total + dc * need / ds) / n
        total += dc
        need -= ds
    return math.inf


def baselines(cost: np.ndarray, score: np.ndarray, target: float) -> dict[str, Any]:
    """Every baseline of one test split from per-rung recorded costs and scores.

    Args:
        cost: (rungs, n) recorded cost of each rung's call per query (0 where not recorded).
        score: (rungs, n) recorded score per query (0 where not recorded).
        target: R; matched quality is R x always-top's mean quality.

    Returns:
        Absolute means (``always_top``, ``always_first``, ``oracle``) and ratios to always-top
        (``*_cost_ratio``, ``*_quality_ratio``).
    """
    n = cost.shape[1]
    cum = np.cumsum(cost, axis=0)
    c = cum.mean(axis=1)  # stop at rung i
    q = score.mean(axis=1)
    top_cost, top_quality = float(cost[-1].mean()), float(q[-1])
    goal = target * top_quality

    best = score.max(axis=0)
    stop = np.argmax(score >= best[None, :], axis=0)  # first rung with the best score
    oracle_cost = float(cum[stop, np.arange(n)].mean())

    first_c, first_q = float(c[0]), float(q[0])
    if first_q >= goal - EPS or top_quality <= first_q:
        share = 0.0
    else:
        share = min(1.0, (goal - first_q) / (top_quality - first_q))
    two_point = first_c + share * top_cost

    def ratio(x: float, of: float) -> float | None:
        return x / of if of and math.isfinite(x) else None

    return {
        "n": n,
        "always_top": {"cost_per_query": top_cost, "quality": top_quality},
        "always_first": {"cost_per_query": first_c, "quality": first_q},
        "oracle": {"cost_per_query": oracle_cost, "quality": float(best.mean())},
        "always_first_cost_ratio": ratio(first_c, top_cost),
        "always_first_quality_ratio": ratio(first_q, top_quality),
        "oracle_cost_ratio": ratio(oracle_cost, top_cost),
        "oracle_quality_ratio": ratio(float(best.mean()), top_quality),
        "oracle_at_r_cost_ratio": ratio(matched_oracle(cum, score, goal * n), top_cost),
        "random_two_point_share": share,
        "random_two_point_cost_ratio": ratio(two_point, top_cost),
        # Stop-at-rung points with cumulative costs, plus always-top (the top rung alone).
        "random_mix_cost_ratio": ratio(
            random_mix([*c.tolist(), top_cost], [*q.tolist(), top_quality], goal), top_cost
        ),
    }


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """Median, min, max and the quartiles (numpy's linear method); None for no values."""
    if not values:
        return None
    a = np.asarray(values, dtype=float)
    q25, med, q75 = np.percentile(a, [25, 50, 75])
    return {
        "median": float(med),
        "min": float(a.min()),
        "max": float(a.max()),
        "q25": float(q25),
        "q75": float(q75),
    }


def summarize(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (dataset, target) over its seeds, in first-seen order.

    Each run holds ``dataset``, ``target``, ``outcome`` (``ok``, ``failed`` or ``error``),
    ``cost_ratio``, ``quality_ratio``, ``violated``, ``runtime_s`` and ``baselines``.
    Errors are counted and left out of every rate; a failed calibration counts as always-top.
    """
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["target"]), []).append(run)
    out = []
    for (name, target), rows in groups.items():
        done = [r for r in rows if r["outcome"] != "error"]
        failed = sum(r["outcome"] == "failed" for r in done)
        violations = sum(bool(r["violated"]) for r in done)

        def base(key: str, rows: Sequence[Mapping[str, Any]] = rows) -> dict[str, float] | None:
            return spread([r["baselines"][key] for r in rows
                           if r.get("baselines") and r["baselines"].get(key) is not None])

        out.append({
            "dataset": name,
            "target": target,
            "method": rows[0].get("label") or rows[0].get("method") or "default",
            "seeds": len(rows),
            "ok": sum(r["outcome"] == "ok" for r in done),
            "failed": failed,
            "errors": len(rows) - len(done),
            "error_messages": sorted({r["error"] for r in rows if r["outcome"] == "error"}),
            "cost_ratio": spread([r["cost_ratio"] for r in done
                                  if r["cost_ratio"] is not None]),
            # None where always-top scores 0 on the test half (the ratio is undefined).
            "quality_ratio": spread([r["quality_ratio"] for r in done
                                     if r["quality_ratio"] is not None]),
            "violations": violations,
            "violation_rate": violations / len(done) if done else None,
            "failed_share": failed / len(done) if done else None,
            "runtime_s": spread([r["runtime_s"] for r in rows if r.get("runtime_s") is not None]),
            "baselines": {
                key: base(key)
                for key in (
                    "oracle_cost_ratio",
                    "oracle_at_r_cost_ratio",
                    "random_two_point_cost_ratio",
                    "random_mix_cost_ratio",
                    "always_first_cost_ratio",
                    "always_first_quality_ratio",
                )
            },
        })
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _ranged(s: Mapping[str, float] | None) -> str:
    return "-" if s is None else f"{s['median']:.1%} [{s['min']:.1%}{DASH}{s['max']:.1%}]"


def _med(s: Mapping[str, float] | None) -> str:
    return "-" if s is None else _pct(s["median"])


HEADER = (
    f"| dataset | R | method | seeds ok/failed/error | cost/top: median [min{DASH}max] | IQR | "
    f"quality/top: median [min{DASH}max] | violation rate | failed share | oracle at R | "
    "oracle (best) | random at R: two-point / best mix | always-first cost / quality | "
    "s per calibration |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def markdown_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary as one Markdown table: one row per dataset x R, baselines as seed medians."""
    lines = [HEADER]
    for s in summary:
        b = s["baselines"]
        cost = s["cost_ratio"]
        iqr = "-" if cost is None else f"{cost['q25']:.1%}{DASH}{cost['q75']:.1%}"
        runtime = s["runtime_s"]
        lines.append(
            f"| {s['dataset']} | {s['target']:g} | {s['method']} | "
            f"{s['ok']}/{s['failed']}/{s['errors']} | {_ranged(cost)} | {iqr} | "
            f"{_ranged(s['quality_ratio'])} | {_pct(s['violation_rate'])} | "
            f"{_pct(s['failed_share'])} | {_med(b['oracle_at_r_cost_ratio'])} | "
            f"{_med(b['oracle_cost_ratio'])} | {_med(b['random_two_point_cost_ratio'])} / "
            f"{_med(b['random_mix_cost_ratio'])} | {_med(b['always_first_cost_ratio'])} / "
            f"{_med(b['always_first_quality_ratio'])} | "
            f"{'-' if runtime is None else format(runtime['median'], '.2f')} |"
        )
    return "\n".join(lines)
