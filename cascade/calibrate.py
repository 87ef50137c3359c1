"""Tune a ladder's evaluator thresholds on recorded answers: cheapest cascade that keeps quality.

``calibrate`` replays a train set through the real evaluators once (``cascade.simulation``),
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from cascade.bench import recorded_cost, run_bench
from cascade.calibrated_file import anchor_paths, pct, write_calibrated
from cascade.config import CascadeConfig, load_config, parse_config
from cascade.dataset import ReplayRecord, load_dataset
from cascade.errors import CascadeError, ConfigError, DatasetError
from cascade.simulation import ReplayTable, build_views, grids, simulate
from cascade.threshold_search import GUARD, SEED, calibrated_mapping, search, stats

__all__ = ["GUARD", "CalibrationResult", "calibrate", "write_calibrated"]

BOOTSTRAP = 1000


@dataclass(frozen=True, slots=True)
class CalibrationResult:
    """What ``calibrate`` found; ``as_json()`` is what the CLI prints or saves.

    Attributes:
        task: The calibrated task.
        status: ``ok``, or ``failed`` (target unreachable, or no cheaper than always-top).
        message: One paragraph saying what was chosen, or why nothing was.
        target_quality: R: quality must reach R x the always-top quality.
        guard: How the choice is protected against overfitting the train set.
        ladder: The kept rungs (model keys), top last.
        thresholds: Model key -> ``{"type.setting": value}``; ``-inf`` means the evaluator
            was removed (accept whenever the rung's other evaluators pass).
        train / test: ``run_bench``'s report of the task on the calibrated config, plus
            ``quality_ratio_ci95`` (bootstrap) and ``target_met``.
        simulated_train: The simulator's own numbers for the chosen point.
        frontier: (cost per query, quality) Pareto points over every configuration evaluated.
        config: The calibrated YAML mapping (empty when nothing was chosen).
    """

    task: str
    status: Literal["ok", "failed"]
    message: str
    target_quality: float
    guard: str
    ladder: tuple[str, ...]
    thresholds: dict[str, dict[str, float]]
    train: dict[str, Any]
    test: dict[str, Any] | None
    simulated_train: dict[str, float]
    frontier: list[tuple[float, float]]
    config: dict[str, Any]
    guarantee: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """A JSON-safe dict (a removed evaluator's ``-inf`` becomes null)."""
        return {
            "task": self.task,
            "status": self.status,
            "message": self.message,
            "target_quality": self.target_quality,
            "guard": self.guard,
            "ladder": list(self.ladder),
            "thresholds": {
                k: {s: (v if math.isfinite(v) else None) for s, v in t.items()}
                for k, t in self.thresholds.items()
            },
            "train": self.train,
            "test": self.test,
            "simulated_train": self.simulated_train,
            "frontier": [list(p) for p in self.frontier],
            "config": self.config,
            "guarantee": self.guarantee,
        }


def _ratio_ci(quality: np.ndarray, q_top: np.ndarray) -> list[float | None]:
    """Bootstrap 95% interval of mean(quality) / mean(q_top), paired, fixed seed."""
    rng = np.random.default_rng(SEED)
    idx = rng.integers(0, len(quality), size=(BOOTSTRAP, len(quality)))
    top = q_top[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where(top > 0, quality[idx].sum(axis=1) / top, np.nan)
    if np.isnan(ratios).all():
        return [None, None]  # always-top never scores: the ratio is undefined
    lo, hi = np.nanpercentile(ratios, [2.5, 97.5])
    return [float(lo), float(hi)]


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
    say(f"replaying the calibrated config on {label} ({len(records)} queries) with run_bench")
    report = dict(run_bench(cfg, records, task=task).tasks[task])
    rp = ReplayTable(cfg, raw, None, records, task, tune=False)
    subset = tuple(range(len(rp.rungs)))
    views = build_views(rp, subset, {})
    cost, quality = simulate(views, np.zeros((1, len(subset)), dtype=int))
    if (
        abs(cost.mean() - report["cost_per_query"]) > 1e-9
        or abs(quality.mean() - report["quality"]) > 1e-9
    ):
        raise CascadeError(
            f"calibration: the simulation disagrees with run_bench on {label} "
            f"(cost {cost.mean()} vs {report['cost_per_query']}, quality "
            f"{quality.mean()} vs {report['quality']}); please report this bug"
        )
    top = report["baselines"]["always_top"]["quality"]
    report["quality_ratio_ci95"] = _ratio_ci(quality[0], rp.q_top)
    report["target_met"] = bool(report["quality"] >= target * top - 1e-12)
    return report


def _resolve_task(
    cfg: CascadeConfig, records: Sequence[ReplayRecord], task: str | None, path: str
) -> str:
    if task is not None:
        if task not in cfg.tasks:
            raise ConfigError(
                f"unknown task {task!r} (defined: {', '.join(cfg.tasks)})",
                path=path,
                location="tasks",
            )
        return task
    if len(cfg.tasks) == 1:
        return next(iter(cfg.tasks))
    named = {r.task for r in records if r.task in cfg.tasks}
    if len(named) == 1:
        return named.pop()
    raise ConfigError(
        f"calibration tunes one task at a time; pass task= (one of {', '.join(cfg.tasks)})",
        path=path,
        location="tasks",
    )


def _check_simulable(cfg: CascadeConfig, task: str, path: str) -> None:
    """Refuse settings the simulator does not model, rather than report numbers it cannot keep."""
    settings = cfg.tasks[task]
    if settings.on_exhausted != "return_last":
        raise ConfigError(
            "calibration needs on_exhausted: return_last (the top rung answers "
            "regardless; with raise, replay has no answer to score)",
            path=path,
            location=f"tasks.{task}.on_exhausted",
        )
    why = {
        "max_cost_usd": "a per-run cost cap skips rungs on worst-case estimates",
        "cache": "cached answers would stand in for the replayed ones",
        "budgets": "period budgets depend on the ledger's history, not on the queries",
    }
    for key, reason in why.items():
        if getattr(settings, key) is not None:
            raise ConfigError(
                f"calibration cannot simulate {key} ({reason}); remove it from "
                "the config to calibrate, and add it back afterwards",
                path=path,
                location=f"tasks.{task}.{key}",
            )
    if cfg.budgets is not None:
        raise ConfigError(
            f"calibration cannot simulate budgets ({why['budgets']}); remove it "
            "from the config to calibrate, and add it back afterwards",
            path=path,
            location="budgets",
        )


def _load(path: Path, task: str, name: str) -> list[ReplayRecord]:
    records = [r for r in load_dataset(path) if (r.task or task) == task]
    if not records:
        raise DatasetError(f"{path}: no query of task {task!r} ({name} set)")
    return records


def _summary(
    ladder: tuple[str, ...],
    thresholds: Mapping[str, Mapping[str, float]],
    train: Mapping[str, Any],
    test: Mapping[str, Any] | None,
    top_cost: float,
) -> tuple[Literal["ok", "failed"], str]:
    """The status and the one-paragraph message of a chosen configuration."""
    cost, quality = train["cost_per_query"], train["quality"]
    top = train["baselines"]["always_top"]
    settings = (
        "; ".join(
            f"{k} {s}={v:g}" if math.isfinite(v) else f"{k} {s.split('.')[0]} removed"
            for k, t in thresholds.items()
            for s, v in t.items()
        )
        or "none"
    )
    message = (
        f"ladder {' -> '.join(ladder)} ({settings}): cost {cost:.6g} USD/query, "
        f"{pct(cost, top['cost_per_query'])} of always-top; quality {quality:.4f}, "
        f"{pct(quality, top['quality'])} of always-top on train"
    )
    if test is not None:
        t_top = test["baselines"]["always_top"]
        message += (
            f"; on test {pct(test['cost_per_query'], t_top['cost_per_query'])} "
            f"of the cost at {pct(test['quality'], t_top['quality'])} of the "
            f"quality (target {'met' if test['target_met'] else 'missed'})"
        )
    if cost > top_cost * (1 + 1e-9):
        return "failed", (
            f"no cascade pays for itself: the cheapest configuration that meets "
            f"the target costs {cost:.6g} USD/query, more than always-top "
            f"({top_cost:.6g}). {message}"
        )
    if len(ladder) == 1:
        return "ok", f"no cheaper cascade meets the target; keep the top rung alone. {message}"
    return "ok", message


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
    bound: Literal["betting", "clt"] = "betting",
    scheme: Literal["holdout", "crossfit"] = "holdout",
) -> CalibrationResult:
    """Find the cheapest policy (or thresholds) that keeps quality >= R x always-top.

    ``method="policy"`` (the default) learns quality models and a router and certifies the
    choice by Learn-then-Test (``cascade.policy``): with probability >= 1 - ``delta`` the
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
    if method == "policy":
        from cascade.policy import calibrate_policy

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
            say=say,
        )
        return result
    if method != "thresholds":
        raise ValueError(f"method must be 'policy' or 'thresholds', got {method!r}")
    started = time.perf_counter()
    shown = str(config_path)
    cfg = load_config(config_path)
    raw = anchor_paths(
        yaml.safe_load(Path(config_path).read_text(encoding="utf-8")),
        Path(config_path).resolve().parent,
    )
    all_train = load_dataset(train)
    task = _resolve_task(cfg, all_train, task, shown)
    _check_simulable(cfg, task, shown)
    records = [r for r in all_train if (r.task or task) == task]
    if not records:
        raise DatasetError(f"{train}: no query of task {task!r} (train set)")
    test_records = _load(Path(test), task, "test") if test is not None else None
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
    status, message = _summary(ladder, thresholds, train_report, test_report, top_cost)
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


