"""Replay a ladder once, then simulate it exactly under any thresholds and kept rungs.

``ReplayTable`` asks each rung's replay provider for its recorded answer to every query and runs
the rung's real evaluators on it (for every history a rung can see, since ``agreement`` compares
with the earlier answers). From those numbers ``simulate`` plays the engine's rules for a whole
batch of threshold settings at once: rungs in order, an error step costs nothing, the first
accepted answer ends the run, evaluators run cheapest first and stop at the first rejection
(``accept: all``), and the top rung answers regardless (``on_exhausted: return_last``), or the
last answer obtained is returned when it fails. Recorded scores are read from the records here
and never reach an evaluator. ``calibration.calibrate`` searches with it; its tests compare it with
``run_bench``.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import numpy as np

from cascade.config import CascadeConfig, MinScore
from cascade.config.pricing import cost_usd
from cascade.engine.recorder import Run as _Run
from cascade.engine.recorder import current_run as _current_run
from cascade.errors import CascadeError, ConfigError, ProviderError
from cascade.evaluation import (
    EvaluatorContext,
    Slot,
    Tunable,
    build_one,
    combine,
    decided,
    finalized,
    shown,
    tunable_of,
)
from cascade.providers.dataset import ReplayRecord
from cascade.replay.bench import replay_engine
from cascade.types import Completion, Request, Verdict

__all__ = [
    "DROP",
    "ReplayTable",
    "View",
    "build_views",
    "candidates",
    "grids",
    "replay_answer",
    "run_slot",
    "simulate",
    "subsets",
]

DROP = -math.inf  # the tuned evaluator removed: the rung accepts whenever the others pass
QUANTILES = 30  # at most about this many candidate thresholds per rung


# -- evaluating each rung once per query ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rung:
    index: int
    key: str
    specs: list[dict[str, Any]]
    slots: tuple[Slot, ...]  # engine order (cheapest first)
    spec_of: tuple[int, ...]  # position in ``specs`` of each slot
    accept: str | MinScore
    tuned: int | None  # slot position of the tuned evaluator
    tunable: Tunable | None
    variant: Slot | None  # length without min_words: the other bounds alone
    configured: float  # the tuned setting as configured (for a consistency check)

    @property
    def label(self) -> str:
        """``type.setting`` of the tuned evaluator, e.g. ``logprob.min`` (empty if none)."""
        if self.tuned is None or self.tunable is None:
            return ""
        return f"{self.specs[self.spec_of[self.tuned]]['type']}.{self.tunable.setting}"


# pre_pass, pre_cost, tuned_cost, value, post_pass, post_cost (fixed rungs: accept, cost, 0...)
_Eval = tuple[bool, float, float, float, bool, float]


def replay_answer(rung: Any, record: ReplayRecord) -> tuple[Completion | None, Completion | None]:
    """A rung's recorded answer (None for an error step) and what the call was billed for."""
    messages = tuple(m.model_dump() for m in record.messages)
    try:
        done: Completion = rung.provider.complete(
            messages, model=rung.model.name, params={}, query_id=record.id
        )
    except ProviderError as exc:
        return None, exc.billed  # an error step; a recorded empty answer is still billed
    done = replace(done, model=rung.key)
    return done, done


def run_slot(slot: Slot, request: Request, completion: Completion) -> tuple[Verdict, float]:
    """One verdict and what its side calls (a judge) cost, recorded as the engine would."""
    run = _Run(
        run_id=request.run_id,
        task=request.task,
        started=time.perf_counter(),
        log_content=False,
        query_id=request.query_id,  # a replayed judge looks its reply up by it
    )
    token = _current_run.set(run)
    try:
        verdict = slot.run(request, completion)
    finally:
        _current_run.reset(token)
    return verdict, run.cost()


def _chain(
    slots: Sequence[Slot], request: Request, raw: Completion, clean: Completion
) -> tuple[bool, float]:
    """Run slots in order under ``accept: all`` until one rejects: (all passed, side cost)."""
    cost = 0.0
    for slot in slots:
        verdict, spent = run_slot(slot, request, shown(slot, raw, clean))
        cost += spent
        if not verdict.passed:
            return False, cost
    return True, cost


class ReplayTable:
    """Every rung's answer to every query, and each rung's evaluation per history."""

    def __init__(
        self,
        cfg: CascadeConfig,
        raw: Mapping[str, Any],
        path: str | None,
        records: Sequence[ReplayRecord],
        task: str,
        *,
        tune: bool,
    ):
        self.task, self.records, self.n = task, records, len(records)
        self.engine = replay_engine(cfg, records, path=path)
        raw_task = raw["tasks"][task]
        built = self.engine.tasks[task].rungs
        self.rungs: list[_Rung] = []
        for i, (rung_cfg, rung) in enumerate(zip(cfg.tasks[task].ladder, built, strict=True)):
            own = rung_cfg.evaluators is not None
            raw_rung = raw_task["ladder"][i]
            specs = copy.deepcopy(
                raw_rung["evaluators"] if own else raw_task.get("evaluators") or []
            )
            where = f"tasks.{task}.ladder[{i}]" if own else f"tasks.{task}"
            self.rungs.append(self._plan(i, rung, specs, where, path, tune and i < len(built) - 1))
        top = built[-1]
        self.q_top = np.array([self._score(r, top.key) for r in records])
        self.completions: list[list[Completion | None]] = []
        self.answered, self.call_cost, self.score = [], [], []
        for rung in built:
            calls = [self._complete(rung, r) for r in records]
            outs = [done for done, _ in calls]
            self.completions.append(outs)
            self.answered.append(np.array([c is not None for c in outs]))
            self.call_cost.append(
                np.array([cost_usd(paid, rung.model.price) if paid else 0.0 for _, paid in calls])
            )
            self.score.append(np.array([self._score(r, rung.key) for r in records]))
        self._cache: dict[tuple[int, int, tuple[int, ...]], _Eval] = {}

    def _score(self, record: ReplayRecord, key: str) -> float:
        # Read from the record here; evaluators only ever see the replayed Completion.
        response = record.responses.get(self.engine.config.models[key].name)
        return response.score if response is not None else 0.0

    def _complete(
        self, rung: Any, record: ReplayRecord
    ) -> tuple[Completion | None, Completion | None]:
        return replay_answer(rung, record)

    def _plan(
        self,
        i: int,
        rung: Any,
        specs: list[dict[str, Any]],
        where: str,
        path: str | None,
        tune: bool,
    ) -> _Rung:
        for slot in rung.slots:
            repairs = int(getattr(slot.evaluator, "repair_attempts", 0))
            if "repair_message" in slot.hooks and repairs:
                raise ConfigError(
                    f"evaluator {slot.name!r} re-asks the model (repair_attempts > 0); a repair "
                    "cannot be replayed from recordings, so calibration cannot simulate it. Set "
                    "repair_attempts: 0 to calibrate.",
                    path=path,
                    location=f"{where}.evaluators",
                )
        ctx = EvaluatorContext(
            location=f"{where}.evaluators",
            task=self.task,
            model=rung.key,
            provider_type=self.engine.config.providers[rung.model.provider].type,
            supports_logprobs=bool(getattr(rung.provider, "supports_logprobs", False)),
            services=self.engine.services,
            config_dir=Path(path).parent if path else None,
        )
        costs = [build_one(spec, ctx).cost for spec in specs]
        spec_of = tuple(sorted(range(len(specs)), key=lambda j: costs[j]))
        if [rung.slots[k].cost for k in range(len(spec_of))] != [costs[j] for j in spec_of]:
            raise CascadeError(f"calibration: cannot match the evaluators of {where}")
        # The first evaluator (cheapest first) that declares a tunable threshold. A ``callable``
        # takes no YAML settings, so there is nowhere to write a threshold back: never tuned.
        tuned = (
            next(
                (
                    k
                    for k, j in enumerate(spec_of)
                    if specs[j].get("type") != "callable"
                    and tunable_of(rung.slots[k].evaluator) is not None
                ),
                None,
            )
            if tune
            else None
        )
        if tuned is None:
            return _Rung(
                i, rung.key, specs, rung.slots, spec_of, rung.accept, None, None, None, -math.inf
            )
        if rung.accept != "all":
            raise ConfigError(
                "calibration tunes thresholds only on rungs with accept: all (this rung "
                f"combines its verdicts with {rung.accept!r})",
                path=path,
                location=f"{where}.accept",
            )
        spec = specs[spec_of[tuned]]
        evaluator = rung.slots[tuned].evaluator
        tunable = tunable_of(evaluator)
        assert tunable is not None
        settings = getattr(evaluator, "config", None)
        if not hasattr(settings, tunable.setting):
            raise ConfigError(
                f"evaluator {rung.slots[tuned].name!r} declares the tunable setting "
                f"{tunable.setting!r}, but its config has no such field to read or write",
                path=path,
                location=f"{where}.evaluators",
            )
        variant = None
        if not tunable.drop:
            variant = build_one({**spec, tunable.setting: None}, ctx)
        setting = getattr(settings, tunable.setting)
        configured = -math.inf if setting is None else float(setting)
        return _Rung(
            i, rung.key, specs, rung.slots, spec_of, "all", tuned, tunable, variant, configured
        )

    def evaluate(self, i: int, q: int, history: tuple[int, ...]) -> _Eval:
        """Rung ``i``'s evaluation of query ``q`` after the answers of rungs ``history``."""
        key = (i, q, history)
        if key not in self._cache:
            self._cache[key] = self._evaluate(i, q, history)
        return self._cache[key]

    def _evaluate(self, i: int, q: int, history: tuple[int, ...]) -> _Eval:
        completion = self.completions[i][q]
        if completion is None:
            return (False, 0.0, 0.0, math.nan, False, 0.0)
        record = self.records[q]
        # The engine's history holds each earlier answer as its user would read it.
        earlier = tuple(
            finalized(self.rungs[j].slots, c)
            for j in history
            if (c := self.completions[j][q]) is not None
        )
        clean = finalized(self.rungs[i].slots, completion)
        request = Request(
            task=self.task,
            messages=tuple(m.model_dump() for m in record.messages),
            params={},
            run_id="calib",
            history=earlier,
            query_id=record.id,
        )
        rung = self.rungs[i]
        if rung.tuned is None:  # the engine's loop, any accept policy
            verdicts, cost = [], 0.0
            for slot in rung.slots:
                verdict, spent = run_slot(slot, request, shown(slot, completion, clean))
                verdicts.append(verdict)
                cost += spent
                if decided(rung.accept, verdict):
                    break
            weights = [s.weight for s in rung.slots[: len(verdicts)]]
            return (combine(rung.accept, verdicts, weights), cost, 0.0, math.nan, True, 0.0)
        t = rung.tuned
        pre_pass, pre_cost = _chain(rung.slots[:t], request, completion, clean)
        if not pre_pass:
            return (False, pre_cost, 0.0, math.nan, False, 0.0)
        seen = shown(rung.slots[t], completion, clean)
        verdict, tuned_cost = run_slot(rung.slots[t], request, seen)
        assert rung.tunable is not None
        basis = verdict
        if rung.variant is not None:
            basis, _ = run_slot(rung.variant, request, seen)
        value = rung.slots[t].evaluator.threshold_value(basis, seen)
        if verdict.passed != (value is not None and value >= rung.configured):
            raise CascadeError(
                f"calibration cannot model the {rung.slots[t].name!r} evaluator of rung "
                f"{rung.key!r}: its verdict ({verdict.passed}, score {verdict.score}) does not "
                f"follow from value {value} >= {rung.tunable.setting} {rung.configured}"
            )
        post_pass, post_cost = _chain(rung.slots[t + 1 :], request, completion, clean)
        return (
            True,
            pre_cost,
            tuned_cost,
            math.nan if value is None else value,
            post_pass,
            post_cost,
        )

    def fields(self, subset: Sequence[int], i: int) -> np.ndarray:
        """(6, N) evaluation fields of rung ``i`` inside the kept ``subset``."""
        before = [j for j in subset if j < i]
        rows = [
            self.evaluate(i, q, tuple(j for j in before if self.answered[j][q]))
            for q in range(self.n)
        ]
        return np.array(rows, dtype=float).T.reshape(6, self.n)


# -- candidate thresholds ------------------------------------------------------------------------


def _nice(lo: float, hi: float, integer: bool) -> float | None:
    """The number in (lo, hi] with the fewest decimals, nearest the middle of the interval."""
    if not hi > lo:
        return None
    dlo, dhi = Decimal(repr(lo)), Decimal(repr(hi))
    mid = (dlo + dhi) / 2
    for places in range(-9, 1 if integer else 13):
        step = Decimal(1).scaleb(-places)
        first = (dlo / step).to_integral_value(ROUND_FLOOR) + 1
        last = (dhi / step).to_integral_value(ROUND_FLOOR)
        if first > last:
            continue
        pick = min(max((mid / step).to_integral_value(), first), last)
        value = float(pick * step)
        if lo < value <= hi:
            return value
    return hi if not integer else None


def candidates(values: np.ndarray, tunable: Tunable) -> list[float]:
    """Thresholds that split the observed values in distinct ways, each a round number."""
    finite = np.sort(values[np.isfinite(values)])
    distinct = np.unique(finite)
    if len(distinct) > QUANTILES + 1:
        picks = np.quantile(finite, np.linspace(0, 1, QUANTILES + 1))
        cuts = np.unique(distinct[np.searchsorted(distinct, picks)])
    else:
        cuts = distinct
    low = tunable.low if tunable.low_open else math.nextafter(tunable.low, -math.inf)
    out = {DROP} if tunable.drop else {tunable.low}
    for cut in cuts:
        pos = int(np.searchsorted(distinct, cut))
        below = float(distinct[pos - 1]) if pos else low
        value = _nice(max(below, low), min(float(cut), tunable.high), tunable.integer)
        if value is not None:
            out.add(value)
    top = float(distinct[-1]) if len(distinct) else low
    ceiling = min(tunable.high, 2 * top + 10) if tunable.integer else tunable.high
    never = _nice(max(top, low), ceiling, tunable.integer)
    if never is not None:
        out.add(never)
    return sorted(out)


def subsets(rungs: int) -> list[tuple[int, ...]]:
    """Every choice of kept rungs, the top always kept; the full ladder first."""
    top = rungs - 1
    return [
        (*lower, top)
        for size in range(top, -1, -1)
        for lower in itertools.combinations(range(top), size)
    ]


def grids(table: ReplayTable) -> dict[int, list[float]]:
    """Candidate thresholds of each tuned rung, from the values it shows under every history."""
    out = {}
    for rung in table.rungs[:-1]:
        if rung.tunable is None:
            continue
        seen = [
            table.fields(s, rung.index)[3] for s in subsets(len(table.rungs)) if rung.index in s
        ]
        out[rung.index] = candidates(np.concatenate(seen), rung.tunable)
    return out


# -- exact simulation ----------------------------------------------------------------------------


@dataclass(slots=True)
class View:
    """One kept rung of one subset: acceptance and cost for each candidate threshold."""

    rung: int
    top: bool
    answered: np.ndarray  # (N,)
    score: np.ndarray  # (N,)
    accept: np.ndarray  # (J, N)
    cost: np.ndarray  # (J, N); where the rung did not answer, what the failed call was billed


def build_views(
    table: ReplayTable, subset: Sequence[int], grid: Mapping[int, list[float]]
) -> list[View]:
    """The kept rungs of ``subset``, each with one row per candidate threshold in ``grid``."""
    views = []
    for i in subset:
        pre_pass, pre_cost, tuned_cost, value, post_pass, post_cost = table.fields(subset, i)
        ans, call = table.answered[i], table.call_cost[i]
        pre = pre_pass.astype(bool)
        if i in grid:
            rows_a, rows_c = [], []
            for theta in grid[i]:
                if theta == DROP:
                    ok = np.ones(table.n, dtype=bool)
                    extra = np.zeros(table.n)
                else:
                    with np.errstate(invalid="ignore"):
                        ok = value >= theta
                    extra = tuned_cost
                rows_a.append(ans & pre & ok & post_pass.astype(bool))
                rows_c.append(
                    np.where(
                        ans,
                        call + pre_cost + np.where(pre, extra + np.where(ok, post_cost, 0.0), 0.0),
                        call,  # an error step costs what it was billed (an empty reply)
                    )
                )
            accept, cost = np.array(rows_a), np.array(rows_c)
        else:
            accept = (ans & pre)[None, :]
            cost = np.where(ans, call + pre_cost, call)[None, :]
        views.append(View(i, i == subset[-1], ans, table.score[i], accept, cost))
    return views


def simulate(views: Sequence[View], combos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (combination, query) cost and returned quality; ``combos`` is (B, len(views))."""
    b, n = len(combos), len(views[0].answered)
    cost, quality, last = np.zeros((b, n)), np.zeros((b, n)), np.zeros((b, n))
    done = np.zeros((b, n), dtype=bool)
    for k, view in enumerate(views):
        pick = combos[:, k]
        cost += np.where(done, 0.0, view.cost[pick])
        if view.top:  # answers regardless; if it failed, the last answer obtained is returned
            answer = np.where(view.answered[None, :], view.score[None, :], last)
            quality = np.where(done, quality, answer)
            break
        passes = view.accept[pick]
        accepted = passes & ~done
        quality = np.where(accepted, view.score[None, :], quality)
        rejected = ~done & view.answered[None, :] & ~passes
        last = np.where(rejected, view.score[None, :], last)
        done |= accepted
    return cost, quality
