"""``cascade calibrate``'s default method: learn the policy, then certify it (Learn-then-Test).

Scheme ``holdout`` (the default):

1. The train file is split in two (seeded): a *fit* part and a *certify* part.
2. On the fit part, a calibrated ``quality_model`` is fitted per rung from the rung's candidate
   evaluators (their verdicts become features) plus log-probabilities, agreement with earlier
   rungs and the answer's and prompt's shape; a prompt-only router per rung likewise.
   Cross-fitting gives every fit query a prediction from a model that did not see it.
3. Still on the fit part, every policy (kept rungs, router skip thresholds, acceptance
   thresholds) is evaluated on small grids, and on large ones the cheapest policy for each
   price of quality lambda is searched by coordinate descent. The policies no other beats on
   both cost and quality, most conservative first, form the candidate sequence.
4. On the certify part, never used so far, the candidates are tested in that order
   (``calibration.guarantee``): each must show E[q - R x q_top] >= 0 at level delta. The cheapest
   certified candidate is chosen. With probability >= 1 - delta it meets the target.

Scheme ``crossfit``: every train query gets an estimate from the fold models (5 folds) that did
not see it, and candidates are fixed before any data is seen: per subset of kept rungs, one
common acceptance bar on the calibrated probability, from 1.0 down to 0 in steps of 0.005.
Each subset's sequence is tested on all train queries at level delta / (number of subsets).
Twice the data for fitting and certifying, but the deployed model (refit on every query) is not
the fold models the certificate was computed with.

Either way the chosen policy is written as an ordinary config, replayed through the real engine
and held to the simulation's cost and quality (a mismatch is a bug, and raises).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascade.calibration.guarantee import certify, gates_to_cheaper, queries_to_cheaper
from cascade.calibration.policy_search import Search, grid_paths, search_path, subsets
from cascade.calibration.policy_table import (
    FOLDS,
    AnswerTable,
    Estimates,
    FitSettings,
    Policy,
    simulate,
)
from cascade.calibration.prepared import Prepared, prepare
from cascade.calibration.result import (
    CalibrationResult,
    expected_guarantee,
    held_to_simulation,
    plain_guarantee,
    summary,
    top_alone_reason,
)
from cascade.config import CascadeConfig, parse_config
from cascade.errors import DatasetError
from cascade.formatting import plural
from cascade.providers.dataset import ReplayRecord
from cascade.replay.bench import run_bench

__all__ = ["calibrate_policy"]

MIN_CERTIFY = 20


def _describe(table: AnswerTable, policy: Policy) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for i in policy.subset[:-1]:
        settings = {"quality_model.min": float(policy.accept.get(i, math.inf))}
        if policy.skip.get(i, 0.0) > 0:
            settings["router.skip_below"] = float(policy.skip[i])
        out[table.keys[i]] = settings
    return out


def _config(
    raw: Mapping[str, Any],
    task: str,
    table: AnswerTable,
    est: Estimates,
    policy: Policy,
    specs: Sequence[list[dict[str, Any]]],
    recipe: str | None,
) -> dict[str, Any]:
    """The original mapping with the task's ladder and router rewritten for ``policy``."""
    out = copy.deepcopy(dict(raw))
    old = raw["tasks"][task]["ladder"]
    ladder: list[Any] = []
    for i in policy.subset:
        if i == policy.subset[-1]:
            ladder.append(copy.deepcopy(old[i]))
            continue
        entry = copy.deepcopy(old[i]) if isinstance(old[i], dict) else {}
        entry.pop("model", None)
        entry.pop("accept", None)
        threshold = policy.accept.get(i, math.inf)
        kept = sum(1 << j for j in policy.subset if j < i)
        model, _ = est.quality_model(i, kept)
        evaluators: list[dict[str, Any]] = []
        if threshold > 0:
            spec: dict[str, Any] = {
                "type": "quality_model",
                "min": min(1.0, threshold),
                "model": model.model_dump(mode="json", exclude_none=True),
                "signals": copy.deepcopy(specs[i]),
            }
            if recipe is not None:
                spec["recipe"] = recipe
            evaluators.append(spec)
        ladder.append({"model": table.keys[i], **entry, "evaluators": evaluators})
    out["tasks"][task]["ladder"] = ladder
    out["tasks"][task].pop("router", None)
    skips = {table.keys[i]: float(v) for i, v in policy.skip.items() if v > 0}
    if skips:
        out["tasks"][task]["router"] = {
            "model": {
                "rungs": {
                    table.keys[i]: est.router_model(i)[0].model_dump(mode="json", exclude_none=True)
                    for i, v in policy.skip.items()
                    if v > 0
                }
            },
            "skip_below": skips,
        }
    return out


def calibrate_policy(
    config_path: str | Path,
    train: str | Path,
    *,
    target_quality: float,
    delta: float = 0.1,
    test: str | Path | None = None,
    task: str | None = None,
    fit_fraction: float = 0.5,
    seed: int = 0,
    text_features: bool = False,
    bound: str = "betting",
    scheme: str = "holdout",
    guarantee: str = "pac",
    say: Callable[[str], None] = lambda s: None,
    prep: Prepared | None = None,
) -> Any:
    """Learn a policy on part of ``train`` and certify it on the rest; see the module doc.

    Returns:
        A ``calibration.result.CalibrationResult`` whose ``guarantee`` states what was certified.
    """

    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if scheme not in ("holdout", "crossfit"):
        raise ValueError(f"scheme must be 'holdout' or 'crossfit', got {scheme!r}")
    if not 0 < fit_fraction < 1:
        raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction!r}")
    started = time.perf_counter()
    prep = prep if prep is not None else prepare(config_path, train, test, task)
    cfg, raw, shown, task = prep.cfg, prep.raw, prep.shown, prep.task
    records, test_records, specs, recipe, table = (
        prep.records,
        prep.test_records,
        prep.specs,
        prep.recipe,
        prep.table,
    )
    n = table.n
    top = len(table.rungs) - 1
    always_top = Policy((top,))
    if scheme == "holdout":
        order = np.random.default_rng(seed).permutation(n)
        n_fit = round(fit_fraction * n)
        fit_rows, cert_rows = np.sort(order[:n_fit]), np.sort(order[n_fit:])
    else:  # crossfit: every query is fitted on (by 4 of 5 fold models) and certified on
        fit_rows = cert_rows = np.arange(n)
    if len(cert_rows) < MIN_CERTIFY or len(fit_rows) < MIN_CERTIFY:
        raise DatasetError(
            f"{train}: {plural(n, 'query')} of task {task!r}, too few to fit on one part and "
            f"certify on the other (need {2 * MIN_CERTIFY})"
        )
    est = Estimates(table, fit_rows, FitSettings(text=text_features), seed)
    search = Search(table, est, fit_rows)
    if scheme == "holdout":
        say(
            f"task {task}: {n} train queries: {len(fit_rows)} to fit and search, "
            f"{len(cert_rows)} to certify; ladder {' -> '.join(table.keys)}"
        )
        sequences = [search_path(search, subsets(len(table.rungs)))[1:]]
    else:
        say(
            f"task {task}: {n} train queries, cross-fitted in {FOLDS} folds; certified on "
            f"their out-of-fold estimates; ladder {' -> '.join(table.keys)}"
        )
        sequences = grid_paths(len(table.rungs))
    candidates = [always_top, *(p for seq in sequences for p in seq)]
    for p in candidates:
        search.run(p)  # the frontier shows every candidate
    say(f"searched {len(search.points):,} policies; {len(candidates)} candidates to certify")
    q_top = table.score[top][cert_rows]
    top_cost_cert = float(table.call_cost[top][cert_rows].mean())
    crossfit = scheme == "crossfit"
    # crossfit certifies on the search's own rows and estimates: reuse its predictions
    cache: dict[Any, np.ndarray] = search.cache if crossfit else {}
    outcome: dict[Policy, tuple[np.ndarray, np.ndarray]] = {
        p: simulate(p, table, est, cert_rows, crossfit=crossfit, cache=cache) for p in candidates
    }
    certified, tested, level = certify(
        sequences, always_top, outcome, q_top, target_quality, delta, guarantee, bound, seed
    )
    if not certified:
        return CalibrationResult(
            task=task,
            status="failed",
            message=(
                f"target unreachable: no policy, always-top included, could be certified to "
                f"keep quality >= {target_quality:g} x always-top at delta = {delta:g}; "
                "lower the target"
            ),
            target_quality=target_quality,
            guard=f"learn-then-test, delta={delta:g} on {len(cert_rows)} train queries",
            ladder=(),
            thresholds={},
            train={},
            test=None,
            simulated_train={},
            frontier=sorted(set(search.points)),
            config={},
            guarantee=None,
        )
    policy = min(certified, key=lambda p: (float(outcome[p][0].mean()), -len(p.subset)))
    p_chosen = certified[policy]
    chosen = candidates.index(policy)
    pac = guarantee == "pac"
    certificate = {
        "method": (
            "learn-then-test (fixed-sequence testing)"
            if pac
            else "conformal risk control on the held-out part"
        ),
        "guarantee": guarantee,
        "bound": bound if pac else None,
        "delta": delta if pac else None,
        "target_quality": target_quality,
        "statement": (
            plain_guarantee(delta, target_quality, Path(train).name, table.keys[top])
            if pac
            else expected_guarantee(target_quality, Path(train).name, table.keys[top])
        ),
        "fit_queries": len(fit_rows),
        "certify_queries": len(cert_rows),
        "scheme": scheme,
        "candidates": len(candidates),
        "tested": tested,
        "certified": len(certified),
        "chosen": chosen,
        "p_value": p_chosen,
        "certified_cheaper_than_top": chosen != 0,
        "certify_queries_needed": None,
    }
    mapping = _config(raw, task, table, est, policy, specs, recipe)
    new_cfg = parse_config(mapping, path=shown)
    check = _Check(new_cfg, cfg, task, target_quality, policy, est, recipe, shown, say)
    train_report = check.replayed(records, "train")
    test_report = check.replayed(test_records, "test") if test_records is not None else None
    ladder = tuple(table.keys[i] for i in policy.subset)
    thresholds = _describe(table, policy)
    top_cost = float(table.call_cost[top].mean())
    why = None
    if chosen == 0:
        gates = gates_to_cheaper(
            sequences, outcome, certified, top_cost_cert, target_quality * q_top
        )
        needed = queries_to_cheaper(gates, target_quality, level, bound, seed)
        certificate["certify_queries_needed"] = needed
        why = top_alone_reason(gates, needed, len(cert_rows), n)
    status, message = summary(
        ladder, thresholds, train_report, test_report, top_cost, top_alone=why
    )
    say(f"calibration took {time.perf_counter() - started:.1f} s")
    cost_c, q_c = outcome[policy]
    return CalibrationResult(
        task=task,
        status=status,
        message=message,
        target_quality=target_quality,
        guard=f"learn-then-test ({scheme}, {bound} bound), delta={delta:g} on "
        f"{len(cert_rows)} train queries",
        ladder=ladder,
        thresholds=thresholds,
        train=train_report,
        test=test_report,
        simulated_train={
            "certify_cost_per_query": float(cost_c.mean()),
            "certify_quality": float(q_c.mean()),
            "certify_always_top_cost_per_query": float(table.call_cost[top][cert_rows].mean()),
            "certify_always_top_quality": float(q_top.mean()),
        },
        frontier=sorted(set(search.points)),
        config=mapping,
        guarantee=certificate,
    )


@dataclass(frozen=True, slots=True)
class _Check:
    """Replays the written config through the real engine and holds it to the simulation."""

    new_cfg: CascadeConfig
    cfg: CascadeConfig
    task: str
    target: float
    policy: Policy
    est: Estimates
    recipe: str | None
    shown: str
    say: Callable[[str], None]

    def replayed(self, records: Sequence[ReplayRecord], label: str) -> dict[str, Any]:
        """run_bench's report of the calibrated config on ``records``, checked against
        ``simulate`` (the same policy, the same fitted estimates)."""

        self.say(
            f"replaying the calibrated config on {label} ({plural(len(records), 'query')}) "
            "with run_bench"
        )
        report = dict(run_bench(self.new_cfg, records, task=self.task).tasks[self.task])
        table = (
            self.est.table
            if records is self.est.table.records
            else AnswerTable(self.cfg, records, self.task, self.recipe, self.shown)
        )
        rows = np.arange(len(records))
        cost, quality = simulate(self.policy, table, self.est, rows, crossfit=False)
        top = len(table.rungs) - 1
        return held_to_simulation(report, cost, quality, table.score[top], self.target, label)
