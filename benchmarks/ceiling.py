"""The in-sample ceiling of every dataset: the cheapest candidate of the calibrator's own family,
chosen *on the test answers themselves*, which no honest method can do.

``benchmarks/gsm8k_ceiling.py`` generalised to every ladder. The candidate family is the one the
calibrator searches for that config:

- *levels* (``--scheme auto`` on a ladder whose cheaper rungs have a bounded threshold, and
  ``--scheme fixed``): every kept-rung family of ``cascade.calibration.levels.families`` walked
  along every level of ``LEVELS``, played on the test queries by ``LevelTable.simulate``;
- *policy* (the ``holdout`` scheme ``auto`` falls back to on GSM8K, MBPP and AlpacaEval):
  the per-rung quality models are fitted as ``calibrate`` fits them (seed 0, the same half of
  train), and every kept-rung subset with every combination of acceptance thresholds (midpoints
  of the test queries' own predictions: all of them for one cheaper rung, thinned so a subset
  has at most ``COMBINATIONS``) is played on the test queries. Router skips are left out, so on
  these ladders the figure is the ceiling of the acceptance thresholds alone. On GSM8K's two
  rungs this is ``gsm8k_ceiling.py``'s threshold, and gives its numbers on the same splits.

Always-top is a candidate, so the ceiling is at most 1. The gap between a certified policy and
the ceiling is the price of the guarantee plus the cost of choosing without the answers; the
gap between the ceiling and the oracle is the signals' own limit.

    python benchmarks/ceiling.py --seeds 20 [--datasets gsm8k,arc] [--targets 0.9 0.95]

with no flags reproduces ``gsm8k_ceiling.py``'s 50/50 splits for every dataset (``--train-fraction``
changes it). ``benchmarks/learning_curve.py`` calls ``in_sample_ceiling`` at each dataset's
largest train size.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.savings import DATASETS, load_rows  # noqa: E402
from benchmarks.savings_stats import split_records, spread  # noqa: E402
from cascade.calibration.fixed import leveled  # noqa: E402
from cascade.calibration.levels import LEVELS, LevelTable, families  # noqa: E402
from cascade.calibration.policy_search import midpoints, subsets  # noqa: E402
from cascade.calibration.policy_table import (  # noqa: E402
    AnswerTable,
    Estimates,
    FitSettings,
    Policy,
    simulate,
)
from cascade.calibration.prepared import Prepared, prepare  # noqa: E402
from cascade.providers.dataset import write_dataset  # noqa: E402

__all__ = ["CANDIDATE_CONFIGS", "in_sample_ceiling"]

EPS = 1e-12
COMBINATIONS = 5000  # acceptance-threshold combinations per subset, at most

# The held-aside ladders are calibrated with their candidate evaluators (logprob and agreement
# under accept: any), as in RESULTS.md's policy section.
CANDIDATE_CONFIGS = {
    "ladder-llama": "benchmarks/configs/ladder_llama_candidates.yaml",
    "ladder-qwen-oai": "benchmarks/configs/ladder_qwen_oai_candidates.yaml",
}


def _level_points(held: AnswerTable, specs: list[list[dict]]) -> list[tuple[float, float]]:  # type: ignore[type-arg]
    """(mean cost, mean quality) on ``held`` of every (family, level) of the fixed scheme."""
    levels = LevelTable(held, [r.accept for r in held.rungs], specs)
    rows = np.arange(held.n)
    out = []
    for subset in families(len(held.rungs)):
        grid = LEVELS if any(levels.leveled(i) for i in subset[:-1]) else (1.0,)
        for u in grid:
            cost, quality = levels.simulate(subset, u, rows)
            out.append((float(cost.mean()), float(quality.mean())))
    return out


def _policy_points(prep: Prepared, held: AnswerTable) -> list[tuple[float, float]]:
    """(mean cost, mean quality) on ``held`` of every kept-rung subset and acceptance-threshold
    combination, with quality models fitted as ``calibrate_policy`` fits them."""
    n = prep.table.n
    order = np.random.default_rng(0).permutation(n)  # calibrate's seed 0 and fit_fraction 0.5
    fit = np.sort(order[: round(0.5 * n)])
    est = Estimates(prep.table, fit, FitSettings(), 0)
    rows = np.arange(held.n)
    cache: dict[Any, np.ndarray] = {}
    out = []
    for subset in subsets(len(held.rungs)):
        cheaper = subset[:-1]
        if not cheaper:
            continue  # the top alone is added by the caller
        points = max(1, int(COMBINATIONS ** (1 / len(cheaper))) - 2)
        options = []
        for i in cheaper:
            kept = sum(1 << j for j in subset if j < i)
            p = est.quality_p(held, i, kept, kept, crossfit=False)[held.answered[i]]
            options.append([0.0, *midpoints(p, points), math.inf])
        for combo in itertools.product(*options):
            policy = Policy(subset, {}, dict(zip(cheaper, combo, strict=True)))
            cost, quality = simulate(policy, held, est, rows, crossfit=False, cache=cache)
            out.append((float(cost.mean()), float(quality.mean())))
    return out


def in_sample_ceiling(
    config: str | Path,
    train: str | Path,
    test: str | Path,
    task: str,
    targets: Sequence[float],
    scheme: str = "auto",
) -> dict[str, Any]:
    """The cheapest candidate reaching R x always-top on ``test``, chosen on ``test`` itself.

    Args:
        config: The config the calibrator is given.
        train: Its train file (the policy family fits its quality models on half of it).
        test: The held-out file the candidates are played and chosen on.
        task: The task.
        targets: The R values.
        scheme: The calibrator's ``scheme``: ``auto`` and ``fixed`` use the levels when the
            ladder has them, every other scheme the learned policies.

    Returns:
        ``family`` (``levels`` or ``policy``), ``candidates`` (how many were played) and
        ``cost_ratio``: target (as a string) -> the ceiling's cost / always-top's cost.
    """
    prep = prepare(config, train, test, task)
    assert prep.test_records is not None
    held = AnswerTable(prep.cfg, prep.test_records, prep.task, prep.recipe, prep.shown)
    # the family the calibrator itself would use: auto picks fixed only on an own-answer signal
    if leveled(prep, own=scheme == "auto") is not None and scheme in ("auto", "fixed"):
        family, points = "levels", _level_points(held, prep.specs)
    else:
        family, points = "policy", _policy_points(prep, held)
    top = len(held.rungs) - 1
    top_cost = float(held.call_cost[top].mean())
    top_quality = float(held.score[top].mean())
    points.append((top_cost, top_quality))
    ratios = {}
    for r in targets:
        best = min(c for c, q in points if q >= r * top_quality - EPS)
        ratios[f"{r:g}"] = best / top_cost if top_cost else None
    return {"family": family, "candidates": len(points), "cost_ratio": ratios}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.90, 0.95])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--train-fraction", type=float, default=0.5)
    parser.add_argument("--scheme", default="auto")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(
        "| dataset | family | R | in-sample ceiling cost/top: median [min-max] |\n|---|---|---|---|"
    )
    with tempfile.TemporaryDirectory(prefix="ceiling-") as scratch:
        for name in args.datasets.split(","):
            ds = DATASETS[name]
            rows = load_rows(ds, args.data, Path(scratch))
            stratum = (lambda r, k=ds.stratify: r.meta.get(k)) if ds.stratify else None
            config = ROOT / CANDIDATE_CONFIGS.get(name, ds.config)
            found: dict[str, list[float]] = {f"{r:g}": [] for r in args.targets}
            family = "-"
            for seed in range(args.seeds):
                train, test = split_records(rows, seed, args.train_fraction, stratum)
                train_path, test_path = Path(scratch) / "train.jsonl", Path(scratch) / "test.jsonl"
                write_dataset(train_path, train)
                write_dataset(test_path, test)
                got = in_sample_ceiling(
                    config, train_path, test_path, ds.task, args.targets, args.scheme
                )
                family = got["family"]
                for r, v in got["cost_ratio"].items():
                    found[r].append(v)
            for r, values in found.items():
                s = spread(values)
                assert s is not None
                print(
                    f"| {name} | {family} | {r} | {s['median']:.1%} "
                    f"[{s['min']:.1%}-{s['max']:.1%}] |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
