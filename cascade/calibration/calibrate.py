"""Tune a ladder's evaluator thresholds on recorded answers: cheapest cascade that keeps quality.

``calibrate`` replays a train set through the real evaluators once (``simulation``),
then simulates every candidate threshold vector and every subset of kept rungs exactly, with
numpy, and writes the winner back into the config.

Choice under a guard against overfitting: the cheapest configuration whose one-sided 90% lower
confidence bound of mean(q_cascade(x) - R * q_top(x)) over train queries is >= 0 (paired normal
approximation). The chosen config is then replayed through ``run_bench`` on train and test.

Tuned: the first evaluator of a rung (cheapest first) that declares a threshold
(``cascade.evaluation.Thresholded``: a ``tunable`` and a ``threshold_value``). The built-ins are
``logprob.min``, ``self_confidence.min``, ``llm_judge.min_score``, ``agreement.min_agree`` and
``length.min_words``; a plug-in that declares one is tuned the same way. "Accept all" is the
evaluator removed (``min_words: 0`` for length, whose ``Tunable.drop`` is False).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cascade.calibration.calibrated_file import write_calibrated
from cascade.calibration.fixed import calibrate_fixed, leveled
from cascade.calibration.policy import calibrate_policy
from cascade.calibration.prepared import load_task, prepare
from cascade.calibration.result import CalibrationResult, held_to_simulation, pct, summary
from cascade.calibration.simulation import ReplayTable, build_views, grids, simulate
from cascade.calibration.threshold_search import GUARD, calibrated_mapping, search, stats
from cascade.config import CascadeConfig, parse_config
from cascade.formatting import plural
from cascade.providers.dataset import ReplayRecord
from cascade.replay.bench import recorded_cost, run_bench

__all__ = ["GUARD", "CalibrationResult", "calibrate", "write_calibrated"]


def _replayed(
    cfg: CascadeConfig,
    raw: Mapping[str, Any],
    records: Sequence[ReplayRecord],
    task: str,
    target: float,
    say: Callable[[str], None],
    label: str,
) -> dict[str, Any]:
    """run_bench's report of the calibrated config, with the bootstrap interval and a check."""
    say(
        f"replaying the calibrated config on {label} ({plural(len(records), 'query')}) "
        "with run_bench"
    )
    report = dict(run_bench(cfg, records, task=task).tasks[task])
    rp = ReplayTable(cfg, raw, None, records, task, tune=False)
    subset = tuple(range(len(rp.rungs)))
    views = build_views(rp, subset, {})
    cost, quality = simulate(views, np.zeros((1, len(subset)), dtype=int))
    return held_to_simulation(report, cost[0], quality[0], rp.q_top, target, label)


def calibrate(
    config_path: str | Path,
    train: str | Path,
    *,
    target_quality: float,
    test: str | Path | None = None,
    task: str | None = None,
    say: Callable[[str], None] = lambda s: None,
    method: Literal["policy", "thresholds"] = "policy",
    delta: float = 0.1,
    fit_fraction: float = 0.5,
    seed: int = 0,
    text_features: bool = False,
    bound: Literal["betting"] = "betting",
    scheme: Literal["auto", "fixed", "holdout", "crossfit"] = "auto",
    guarantee: Literal["pac", "expected"] = "pac",
) -> CalibrationResult:
    """Find the cheapest policy (or thresholds) that keeps quality >= R x always-top.

    ``method="policy"`` (the default) learns quality models and a router and certifies the
    choice by Learn-then-Test (``calibration.policy``): with probability >= 1 - ``delta`` the
    chosen config's expected quality is >= R x always-top's. ``method="thresholds"`` is the
    earlier search over each rung's one evaluator threshold with a heuristic 90% guard.

    Args:
        config_path: The YAML config to calibrate.
        train: A replay dataset to tune on.
        target_quality: R, e.g. 0.95: quality must reach R x the quality of always calling
            the ladder's top rung.
        test: A held-out replay dataset to report on (never used for the choice).
        task: The task to calibrate (default: the only one of the config or the dataset).
        say: Progress lines.

    Returns:
        A ``CalibrationResult``. ``status == "failed"`` when no configuration meets the target
        under the guard, or the cheapest that does costs more than always-top.

    Raises:
        ConfigError: the config is invalid, or uses what replay cannot simulate: the task's
            ``on_exhausted: raise``, ``max_cost_usd``, ``cache`` or budgets, a tuned rung
            without ``accept: all``, or an evaluator that repairs answers.
        DatasetError: a dataset is malformed or holds no query of the task.
        ValueError: ``target_quality`` is not a positive number.
    """
    if not (isinstance(target_quality, (int, float)) and 0 < target_quality < math.inf):
        raise ValueError(f"target_quality must be a positive number, got {target_quality!r}")
    if bound != "betting":
        # d = q - R x q_top with rare large losses (a cheap rung rarely but badly wrong) makes
        # the normal approximation reject a true null about 1 - 1/e of the time when the loss
        # has probability 1/n, at every n (benchmarks/validity.py): no size makes it valid.
        raise ValueError(
            f"bound {bound!r} is not offered: the normal approximation is not valid at any "
            "sample size when losses are rare and large; use bound='betting'"
        )
    if guarantee not in ("pac", "expected"):
        raise ValueError(f"guarantee must be 'pac' or 'expected', got {guarantee!r}")
    if method == "policy" and scheme in ("auto", "fixed"):
        prep = prepare(config_path, train, test, task)
        if scheme == "fixed" or leveled(prep, own=True) is not None:
            say("scheme: fixed (thresholds on the rungs' own signals, certified on every query)")
            return calibrate_fixed(
                config_path,
                train,
                target_quality=target_quality,
                delta=delta,
                test=test,
                task=task,
                seed=seed,
                bound=bound,
                guarantee=guarantee,
                say=say,
                prep=prep,
            )
        say(
            "scheme: holdout (no cheaper rung has a bounded threshold of its own answer: "
            "logprob, self_confidence or llm_judge)"
        )
        scheme = "holdout"
    if method == "policy":
        result: CalibrationResult = calibrate_policy(
            config_path,
            train,
            target_quality=target_quality,
            delta=delta,
            test=test,
            task=task,
            fit_fraction=fit_fraction,
            seed=seed,
            text_features=text_features,
            bound=bound,
            scheme=scheme,
            guarantee=guarantee,
            say=say,
        )
        return result
    if method != "thresholds":
        raise ValueError(f"method must be 'policy' or 'thresholds', got {method!r}")
    started = time.perf_counter()
    loaded = load_task(config_path, train, test, task)
    cfg, raw, shown, task = loaded.cfg, loaded.raw, loaded.shown, loaded.task
    records, test_records = loaded.records, loaded.test_records
    say(
        f"task {task}: {len(records)} train queries, ladder "
        f"{' -> '.join(r.model for r in cfg.tasks[task].ladder)}"
    )
    rp = ReplayTable(cfg, raw, shown, records, task, tune=True)
    grid = grids(rp)
    for i, values in grid.items():
        say(f"  {rp.rungs[i].key}: {len(values)} candidate values of {rp.rungs[i].label}")
    best, all_views = search(rp, grid, target_quality, say)
    top_key = rp.rungs[-1].key
    top_model = cfg.models[top_key]
    top_cost = float(
        np.mean(
            [
                recorded_cost(r.responses[top_model.name], cfg, top_key)
                if top_model.name in r.responses
                else 0.0
                for r in records
            ]
        )
    )
    top_quality = float(rp.q_top.mean())
    say(
        f"searched {best.evaluated:,} configurations over {len(all_views)} rung subsets in "
        f"{time.perf_counter() - started:.1f} s"
    )
    frontier = [(float(c), float(q)) for c, q in zip(best.front_c, best.front_q, strict=True)]
    if best.point is None:
        message = (
            f"target unreachable: no configuration keeps quality >= {target_quality:g} x "
            f"always-top ({target_quality * top_quality:.4f}) on train under the guard "
            f"({GUARD}); the best lower bound of mean(q - R*q_top) is "
            f"{best.best_bound:+.4f}, at quality {best.best_bound_quality:.4f} "
            f"({pct(best.best_bound_quality, top_quality)} of always-top). Lower the "
            "target or add train data."
        )
        return CalibrationResult(
            task=task,
            status="failed",
            message=message,
            target_quality=target_quality,
            guard=GUARD,
            ladder=(),
            thresholds={},
            train={},
            test=None,
            simulated_train={
                "always_top_cost_per_query": top_cost,
                "always_top_quality": top_quality,
                "best_lower_bound": best.best_bound,
            },
            frontier=frontier,
            config={},
        )
    subset, picks = best.point
    views = all_views[subset]
    sim_cost, sim_quality = simulate(views, np.array([picks]))
    _, _, lcb = stats(sim_cost, sim_quality, rp.q_top, target_quality)
    simulated = {
        "cost_per_query": float(sim_cost.mean()),
        "quality": float(sim_quality.mean()),
        "always_top_cost_per_query": top_cost,
        "always_top_quality": top_quality,
        "lower_bound": float(lcb[0]),
    }
    mapping, thresholds = calibrated_mapping(raw, rp, task, subset, grid, picks)
    new_cfg = parse_config(mapping, path=shown)
    train_report = _replayed(new_cfg, mapping, records, task, target_quality, say, "train")
    test_report = None
    if test_records is not None:
        test_report = _replayed(new_cfg, mapping, test_records, task, target_quality, say, "test")
    ladder = tuple(rp.rungs[i].key for i in subset)
    status, message = summary(ladder, thresholds, train_report, test_report, top_cost)
    return CalibrationResult(
        task=task,
        status=status,
        message=message,
        target_quality=target_quality,
        guard=GUARD,
        ladder=ladder,
        thresholds=thresholds,
        train=train_report,
        test=test_report,
        simulated_train=simulated,
        frontier=frontier,
        config=mapping,
    )
