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

import copy
import datetime as dt
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from cascade.bench import recorded_cost, run_bench
from cascade.config import CascadeConfig, load_config, parse_config
from cascade.dataset import ReplayRecord, load_dataset
from cascade.errors import CascadeError, ConfigError, DatasetError
from cascade.simulation import (
    DROP,
    ReplayTable,
    View,
    build_views,
    grids,
    simulate,
    subsets,
)

__all__ = ["GUARD", "CalibrationResult", "calibrate", "write_calibrated"]

Z = 1.2816  # one-sided 90% normal quantile
GUARD = "paired lower confidence bound, z=1.28 (one-sided 90%)"
BOOTSTRAP = 1000
SEED = 0
_EXHAUSTIVE_LIMIT = 200_000  # grid points per kept-rung subset searched exhaustively
_BATCH_CELLS = 1_000_000  # combinations x queries simulated per numpy batch


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


def _stats(
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
class _Best:
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
    best: _Best,
    subset: tuple[int, ...],
) -> np.ndarray:
    """Simulate ``combos`` in batches, feed the running choice, return their bounds."""
    size = max(1, _BATCH_CELLS // max(1, len(q_top)))
    bounds = []
    for start in range(0, len(combos), size):
        part = combos[start : start + size]
        mean_c, mean_q, lcb = _stats(*simulate(views, part), q_top, target)
        best.add(subset, part, mean_c, mean_q, lcb)
        bounds.append(np.c_[mean_c, mean_q, lcb])
    return np.vstack(bounds)


def _descend(
    views: Sequence[View],
    dims: Sequence[int],
    q_top: np.ndarray,
    target: float,
    best: _Best,
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


def _search(
    rp: ReplayTable, grid: Mapping[int, list[float]], target: float, say: Callable[[str], None]
) -> tuple[_Best, dict[tuple[int, ...], list[View]]]:
    """Every subset of kept rungs; its grid exhaustively when small, else coordinate descent."""
    best = _Best()
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
                f"  {total:,} combinations for ladder {_names(rp, subset)}: "
                "coordinate descent from 8 starts"
            )
            _descend(views, dims, rp.q_top, target, best, subset)
    return best, all_views


def _names(rp: ReplayTable, subset: Sequence[int]) -> str:
    return " -> ".join(rp.rungs[i].key for i in subset)


# -- the calibrated config and the reports -------------------------------------------------------


def _calibrated(
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


def _pct(x: float, of: float) -> str:
    return f"{x / of:.1%}" if of else "-"


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
        f"{_pct(cost, top['cost_per_query'])} of always-top; quality {quality:.4f}, "
        f"{_pct(quality, top['quality'])} of always-top on train"
    )
    if test is not None:
        t_top = test["baselines"]["always_top"]
        message += (
            f"; on test {_pct(test['cost_per_query'], t_top['cost_per_query'])} "
            f"of the cost at {_pct(test['quality'], t_top['quality'])} of the "
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
    raw = _anchor_paths(
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
    best, all_views = _search(rp, grid, target_quality, say)
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
            f"({_pct(best.best_bound_quality, top_quality)} of always-top). Lower the "
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
    _, _, lcb = _stats(sim_cost, sim_quality, rp.q_top, target_quality)
    simulated = {
        "cost_per_query": float(sim_cost.mean()),
        "quality": float(sim_quality.mean()),
        "always_top_cost_per_query": top_cost,
        "always_top_quality": top_quality,
        "lower_bound": float(lcb[0]),
    }
    mapping, thresholds = _calibrated(raw, rp, task, subset, grid, picks)
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


def _anchor_paths(raw: Any, base: Path) -> Any:
    """Make relative ``schema_file`` paths absolute, so the written config works anywhere.

    They resolve against the config's folder, and the calibrated file may be written elsewhere.
    """
    if isinstance(raw, dict):
        out = {}
        for key, value in raw.items():
            if key == "schema_file" and isinstance(value, str) and not Path(value).is_absolute():
                out[key] = str(base / value)
            else:
                out[key] = _anchor_paths(value, base)
        return out
    if isinstance(raw, list):
        return [_anchor_paths(item, base) for item in raw]
    return raw


def write_calibrated(
    result: CalibrationResult, out: str | Path, *, command: str | None = None
) -> None:
    """Write the calibrated config as YAML, with its provenance as a comment header.

    Args:
        result: An ``ok`` result of ``calibrate``.
        out: The file to write.
        command: The command line that produced it, recorded in the header.

    Raises:
        CascadeError: the calibration failed (there is no config to write).
    """
    if result.status != "ok" or not result.config:
        raise CascadeError(f"nothing to write: calibration failed: {result.message}")
    lines = [f"# Calibrated by cascade calibrate on {dt.date.today().isoformat()}."]
    if command:
        lines.append(f"# command: {command}")
    lines += [
        f"# task {result.task}: target quality >= {result.target_quality:g} x always-top (train)",
        f"# guard: {result.guard}",
        f"# ladder: {' -> '.join(result.ladder)}",
    ]
    for key, settings in result.thresholds.items():
        for name, value in settings.items():
            shown = f"{value:g}" if math.isfinite(value) else "removed (accept all)"
            lines.append(f"# threshold {key}: {name} = {shown}")
    for label, report in (("train", result.train), ("test", result.test)):
        if not report:
            continue
        top = report["baselines"]["always_top"]
        lo, hi = report["quality_ratio_ci95"]
        ci = f"{lo:.1%} to {hi:.1%}" if lo is not None and hi is not None else "undefined"
        lines.append(
            f"# {label} (n={report['n']}): cost {report['cost_per_query']:.6g} USD/query "
            f"({_pct(report['cost_per_query'], top['cost_per_query'])} of always-top "
            f"{top['cost_per_query']:.6g}); quality {report['quality']:.4f} "
            f"({_pct(report['quality'], top['quality'])} of always-top {top['quality']:.4f}; "
            f"bootstrap 95% CI {ci})"
        )
    if result.guarantee is not None:
        g = result.guarantee
        lines.append(
            f"# guarantee: {g['statement']} ({g['method']}, {g['bound']} bound, "
            f"{g['certify_queries']} certify queries, p = {g['p_value']:.4g})"
        )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    config = _externalize(result.config, result.task, Path(out))
    body = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    Path(out).write_text("\n".join(lines) + "\n" + body, encoding="utf-8")


def _externalize(config: Mapping[str, Any], task: str, out: Path) -> dict[str, Any]:
    """Move fitted models (quality_model, router) into JSON files beside ``out``.

    The YAML then names each file relative to itself, so the pair can be moved together.
    """
    mapping = copy.deepcopy(dict(config))
    settings = mapping["tasks"][task]
    stem = out.name.removesuffix(out.suffix)
    for entry in settings.get("ladder", []):
        if not isinstance(entry, dict):
            continue
        for spec in entry.get("evaluators") or []:
            if spec.get("type") == "quality_model" and isinstance(spec.get("model"), dict):
                name = f"{stem}.{task}.{entry['model']}.quality.json"
                (out.parent / name).write_text(json.dumps(spec["model"], indent=1))
                spec["model"] = name
    router = settings.get("router")
    if isinstance(router, dict) and isinstance(router.get("model"), dict):
        name = f"{stem}.{task}.router.json"
        (out.parent / name).write_text(json.dumps(router["model"], indent=1))
        router["model"] = name
    return mapping
