"""Tune a ladder's evaluator thresholds on recorded answers: cheapest cascade that keeps quality.

``calibrate`` replays a train set through the real evaluators once, records per query and rung
what each step costs, whether it answered, its recorded score and the value the tuned evaluator
compares with its threshold. Any threshold vector (and any subset of kept rungs) is then
simulated exactly with numpy, following the engine's rules: rungs in order, an error step costs
nothing, the first accepted answer ends the run, the top rung answers regardless
(``on_exhausted: return_last``), evaluators run cheapest first and stop at the first rejection.

Choice under a guard against overfitting: the cheapest configuration whose one-sided 90% lower
confidence bound of mean(q_cascade(x) - R * q_top(x)) over train queries is >= 0 (paired normal
approximation). The chosen config is then replayed through ``run_bench`` on train and test.

Tunable settings (the first evaluator of a rung, cheapest first, whose type is listed here):
``logprob.min``, ``self_confidence.min``, ``llm_judge.min_score``, ``agreement.min_agree``,
``length.min_words``. "Accept all" is the evaluator removed (``min_words: 0`` for length).
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from cascade.bench import recorded_cost, replay_engine, run_bench
from cascade.config import CascadeConfig, MinScore, load_config, parse_config
from cascade.dataset import ReplayRecord, load_dataset
from cascade.engine import _current_run, _Run
from cascade.errors import CascadeError, ConfigError, DatasetError, ProviderError
from cascade.evaluation import EvaluatorContext, Slot, build_one, combine, decided
from cascade.pricing import cost_usd
from cascade.types import Completion, Request, Verdict

__all__ = ["GUARD", "TUNABLE", "CalibrationResult", "Tunable", "calibrate", "write_calibrated"]

Z = 1.2816  # one-sided 90% normal quantile
GUARD = "paired lower confidence bound, z=1.28 (one-sided 90%)"
BOOTSTRAP = 1000
SEED = 0
_EXHAUSTIVE_LIMIT = 200_000  # grid points per kept-rung subset searched exhaustively
_QUANTILES = 30
_BATCH_CELLS = 2_000_000  # combinations x queries simulated per numpy batch
_DROP = -math.inf  # the tuned evaluator removed: the rung accepts whenever the others pass


@dataclass(frozen=True, slots=True)
class Tunable:
    """How calibration reads and writes one evaluator type's threshold.

    Attributes:
        setting: The YAML key that holds the threshold.
        value: Maps the verdict (and the answer) to the number the threshold is compared with,
            so that the evaluator passes exactly when ``value >= threshold``; None never passes.
        low / high: The settings's allowed range; ``low_open`` excludes ``low`` itself.
        integer: Whole-number settings.
        drop: "Accept all" is the evaluator removed (else the ``low`` bound, as for length).
    """

    setting: str
    value: Callable[[Verdict, Completion], float | None]
    low: float
    high: float
    low_open: bool = True
    integer: bool = False
    drop: bool = True


def _score(v: Verdict, c: Completion) -> float | None:
    # A failure scored 0 is "no value" (missing, unreadable or empty), never a pass.
    return None if v.score is None or (not v.passed and v.score == 0.0) else v.score


def _share(v: Verdict, c: Completion) -> float | None:
    if v.score is None:  # no earlier answer: when_first decides, whatever the threshold
        return math.inf if v.passed else None
    return v.score


def _judge(v: Verdict, c: Completion) -> float | None:
    if v.score is None:  # judge failed: fail_closed decides, whatever the threshold
        return math.inf if v.passed else None
    return round(v.score * 10, 9)


def _words(v: Verdict, c: Completion) -> float | None:
    return float(len(c.text.strip().split())) if v.passed else None


TUNABLE: Mapping[str, Tunable] = {
    "logprob": Tunable("min", _score, 0.0, 1.0),
    "self_confidence": Tunable("min", _score, 0.0, 1.0),
    "llm_judge": Tunable("min_score", _judge, 1.0, 10.0, low_open=False),
    "agreement": Tunable("min_agree", _share, 0.0, 1.0),
    "length": Tunable("min_words", _words, 0.0, math.inf, low_open=False, integer=True,
                      drop=False),
}


@dataclass(frozen=True)
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

    def as_json(self) -> dict[str, Any]:
        """A JSON-safe dict (a removed evaluator's ``-inf`` becomes null)."""
        return {
            "task": self.task, "status": self.status, "message": self.message,
            "target_quality": self.target_quality, "guard": self.guard,
            "ladder": list(self.ladder),
            "thresholds": {k: {s: (v if math.isfinite(v) else None) for s, v in t.items()}
                           for k, t in self.thresholds.items()},
            "train": self.train, "test": self.test, "simulated_train": self.simulated_train,
            "frontier": [list(p) for p in self.frontier], "config": self.config,
        }


# -- evaluating each rung once per query ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rung:
    index: int
    key: str
    specs: list[dict[str, Any]]
    slots: tuple[Slot, ...]       # engine order (cheapest first)
    spec_of: tuple[int, ...]      # position in ``specs`` of each slot
    accept: str | MinScore
    tuned: int | None             # slot position of the tuned evaluator
    tunable: Tunable | None
    variant: Slot | None          # length without min_words: the other bounds alone
    configured: float             # the tuned setting as configured (for a consistency check)


# pre_pass, pre_cost, tuned_cost, value, post_pass, post_cost (fixed rungs: accept, cost, 0...)
_Eval = tuple[bool, float, float, float, bool, float]


def _run_slot(slot: Slot, request: Request, completion: Completion) -> tuple[Verdict, float]:
    """One verdict and what its side calls (a judge) cost, recorded as the engine would."""
    run = _Run(run_id=request.run_id, task=request.task, started=time.perf_counter(),
               log_content=False)
    token = _current_run.set(run)
    try:
        verdict = slot.run(request, completion)
    finally:
        _current_run.reset(token)
    return verdict, run.cost()


def _chain(slots: Sequence[Slot], request: Request, completion: Completion) -> tuple[bool, float]:
    """Run slots in order under ``accept: all`` until one rejects: (all passed, side cost)."""
    cost = 0.0
    for slot in slots:
        verdict, spent = _run_slot(slot, request, completion)
        cost += spent
        if not verdict.passed:
            return False, cost
    return True, cost


class _Replay:
    """Every rung's answer to every query, and each rung's evaluation per history."""

    def __init__(self, cfg: CascadeConfig, raw: Mapping[str, Any], path: str | None,
                 records: Sequence[ReplayRecord], task: str, *, tune: bool):
        self.task, self.records, self.n = task, records, len(records)
        self.engine = replay_engine(cfg, records, path=path)
        raw_task = raw["tasks"][task]
        built = self.engine.tasks[task].rungs
        self.rungs: list[_Rung] = []
        for i, (rung_cfg, rung) in enumerate(zip(cfg.tasks[task].ladder, built, strict=True)):
            own = rung_cfg.evaluators is not None
            raw_rung = raw_task["ladder"][i]
            specs = copy.deepcopy(raw_rung["evaluators"] if own else raw_task.get("evaluators")
                                  or [])
            where = f"tasks.{task}.ladder[{i}]" if own else f"tasks.{task}"
            self.rungs.append(self._plan(i, rung, specs, where, path,
                                         tune and i < len(built) - 1))
        top = built[-1]
        self.q_top = np.array([self._score(r, top.key) for r in records])
        self.completions: list[list[Completion | None]] = []
        self.answered, self.call_cost, self.score = [], [], []
        for rung in built:
            outs = [self._complete(rung, r) for r in records]
            self.completions.append(outs)
            self.answered.append(np.array([c is not None for c in outs]))
            self.call_cost.append(np.array(
                [cost_usd(c, rung.model.price) if c is not None else 0.0 for c in outs]))
            self.score.append(np.array([self._score(r, rung.key) for r in records]))
        self._cache: dict[tuple[int, int, tuple[int, ...]], _Eval] = {}

    def _score(self, record: ReplayRecord, key: str) -> float:
        # Read from the record here; evaluators only ever see the replayed Completion.
        response = record.responses.get(self.engine.config.models[key].name)
        return response.score if response is not None else 0.0

    def _complete(self, rung: Any, record: ReplayRecord) -> Completion | None:
        messages = tuple(m.model_dump() for m in record.messages)
        try:
            done: Completion = rung.provider.complete(messages, model=rung.model.name, params={},
                                                      query_id=record.id)
        except ProviderError:
            return None  # an error step: costs nothing, the ladder moves on
        return replace(done, model=rung.key)

    def _plan(self, i: int, rung: Any, specs: list[dict[str, Any]], where: str,
              path: str | None, tune: bool) -> _Rung:
        for slot in rung.slots:
            repairs = int(getattr(slot.evaluator, "repair_attempts", 0))
            if "repair_message" in slot.hooks and repairs:
                raise ConfigError(
                    f"evaluator {slot.name!r} re-asks the model (repair_attempts > 0); a repair "
                    "cannot be replayed from recordings, so calibration cannot simulate it. Set "
                    "repair_attempts: 0 to calibrate.", path=path, location=f"{where}.evaluators")
        ctx = EvaluatorContext(
            location=f"{where}.evaluators", task=self.task, model=rung.key,
            provider_type=self.engine.config.providers[rung.model.provider].type,
            supports_logprobs=bool(getattr(rung.provider, "supports_logprobs", False)),
            services=self.engine,
            config_dir=Path(path).parent if path else None)
        costs = [build_one(spec, ctx).cost for spec in specs]
        spec_of = tuple(sorted(range(len(specs)), key=lambda j: costs[j]))
        if [rung.slots[k].cost for k in range(len(spec_of))] != [costs[j] for j in spec_of]:
            raise CascadeError(f"calibration: cannot match the evaluators of {where}")
        tuned = next((k for k, j in enumerate(spec_of) if specs[j].get("type") in TUNABLE),
                     None) if tune else None
        if tuned is None:
            return _Rung(i, rung.key, specs, rung.slots, spec_of, rung.accept, None, None, None,
                         -math.inf)
        if rung.accept != "all":
            raise ConfigError(
                "calibration tunes thresholds only on rungs with accept: all (this rung "
                f"combines its verdicts with {rung.accept!r})", path=path,
                location=f"{where}.accept")
        spec = specs[spec_of[tuned]]
        tunable = TUNABLE[spec["type"]]
        variant = None
        if not tunable.drop:
            variant = build_one({**spec, tunable.setting: None}, ctx)
        setting = getattr(getattr(rung.slots[tuned].evaluator, "config", None),
                          tunable.setting, None)
        configured = -math.inf if setting is None else float(setting)
        return _Rung(i, rung.key, specs, rung.slots, spec_of, "all", tuned, tunable, variant,
                     configured)

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
        earlier = tuple(c for j in history if (c := self.completions[j][q]) is not None)
        request = Request(task=self.task, messages=tuple(m.model_dump() for m in record.messages),
                          params={}, run_id="calib", history=earlier, query_id=record.id)
        rung = self.rungs[i]
        if rung.tuned is None:  # the engine's loop, any accept policy
            verdicts, cost = [], 0.0
            for slot in rung.slots:
                verdict, spent = _run_slot(slot, request, completion)
                verdicts.append(verdict)
                cost += spent
                if decided(rung.accept, verdict):
                    break
            weights = [s.weight for s in rung.slots[: len(verdicts)]]
            return (combine(rung.accept, verdicts, weights), cost, 0.0, math.nan, True, 0.0)
        t = rung.tuned
        pre_pass, pre_cost = _chain(rung.slots[:t], request, completion)
        if not pre_pass:
            return (False, pre_cost, 0.0, math.nan, False, 0.0)
        verdict, tuned_cost = _run_slot(rung.slots[t], request, completion)
        assert rung.tunable is not None
        basis = verdict
        if rung.variant is not None:
            basis, _ = _run_slot(rung.variant, request, completion)
        value = rung.tunable.value(basis, completion)
        if verdict.passed != (value is not None and value >= rung.configured):
            raise CascadeError(
                f"calibration cannot model the {rung.slots[t].name!r} evaluator of rung "
                f"{rung.key!r}: its verdict ({verdict.passed}, score {verdict.score}) does not "
                f"follow from value {value} >= {rung.tunable.setting} {rung.configured}")
        post_pass, post_cost = _chain(rung.slots[t + 1:], request, completion)
        return (True, pre_cost, tuned_cost, math.nan if value is None else value, post_pass,
                post_cost)

    def fields(self, subset: Sequence[int], i: int) -> np.ndarray:
        """(6, N) evaluation fields of rung ``i`` inside the kept ``subset``."""
        before = [j for j in subset if j < i]
        rows = [self.evaluate(i, q, tuple(j for j in before if self.answered[j][q]))
                for q in range(self.n)]
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
    return hi if not integer else float(math.floor(hi))


def _candidates(values: np.ndarray, tunable: Tunable) -> list[float]:
    """Thresholds that split the observed values in distinct ways, each a round number."""
    finite = np.sort(values[np.isfinite(values)])
    distinct = np.unique(finite)
    if len(distinct) > _QUANTILES + 1:
        picks = np.quantile(finite, np.linspace(0, 1, _QUANTILES + 1))
        cuts = np.unique(distinct[np.searchsorted(distinct, picks)])
    else:
        cuts = distinct
    low = tunable.low if tunable.low_open else math.nextafter(tunable.low, -math.inf)
    out = {_DROP} if tunable.drop else {tunable.low}
    for cut in cuts:
        pos = int(np.searchsorted(distinct, cut))
        below = float(distinct[pos - 1]) if pos else low
        if tunable.integer and not pos:
            below = min(below, float(cut) - 1)
        value = _nice(max(below, low), min(float(cut), tunable.high), tunable.integer)
        if value is not None:
            out.add(value)
    top = float(distinct[-1]) if len(distinct) else low
    ceiling = min(tunable.high, 2 * top + 10) if tunable.integer else tunable.high
    never = _nice(max(top, low), ceiling, tunable.integer)
    if never is not None:
        out.add(never)
    return sorted(out)


# -- exact simulation ----------------------------------------------------------------------------


@dataclass(slots=True)
class _View:
    """One kept rung of one subset: acceptance and cost for each candidate threshold."""

    rung: int
    top: bool
    answered: np.ndarray   # (N,)
    score: np.ndarray      # (N,)
    accept: np.ndarray     # (J, N)
    cost: np.ndarray       # (J, N), zero where the rung did not answer


def _views(rp: _Replay, subset: Sequence[int],
           grids: Mapping[int, list[float]]) -> list[_View]:
    views = []
    for i in subset:
        pre_pass, pre_cost, tuned_cost, value, post_pass, post_cost = rp.fields(subset, i)
        ans, call = rp.answered[i], rp.call_cost[i]
        pre = pre_pass.astype(bool)
        if i in grids:
            rows_a, rows_c = [], []
            for theta in grids[i]:
                if theta == _DROP:
                    ok = np.ones(rp.n, dtype=bool)
                    extra = np.zeros(rp.n)
                else:
                    with np.errstate(invalid="ignore"):
                        ok = value >= theta
                    extra = tuned_cost
                rows_a.append(ans & pre & ok & post_pass.astype(bool))
                rows_c.append(np.where(ans, call + pre_cost
                                       + np.where(pre, extra + np.where(ok, post_cost, 0.0), 0.0),
                                       0.0))
            accept, cost = np.array(rows_a), np.array(rows_c)
        else:
            accept = (ans & pre)[None, :]
            cost = np.where(ans, call + pre_cost, 0.0)[None, :]
        views.append(_View(i, i == subset[-1], ans, rp.score[i], accept, cost))
    return views


def _simulate(views: Sequence[_View], combos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
        accepted = view.accept[pick] & ~done
        quality = np.where(accepted, view.score[None, :], quality)
        rejected = ~done & view.answered[None, :] & ~view.accept[pick]
        last = np.where(rejected, view.score[None, :], last)
        done |= accepted
    return cost, quality


def _stats(cost: np.ndarray, quality: np.ndarray, q_top: np.ndarray,
           target: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = quality.shape[1]
    diff = quality - target * q_top[None, :]
    sd = diff.std(axis=1, ddof=1) if n > 1 else np.zeros(len(diff))
    return cost.mean(axis=1), quality.mean(axis=1), diff.mean(axis=1) - Z * sd / math.sqrt(n)


def _pareto(cost: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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

    def add(self, subset: tuple[int, ...], combos: np.ndarray, mean_c: np.ndarray,
            mean_q: np.ndarray, lcb: np.ndarray) -> None:
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
        order = np.lexsort((-combos[feasible].sum(axis=1), -mean_q[feasible],
                            np.round(mean_c[feasible], 15)))
        j = feasible[order[0]]
        key = (round(float(mean_c[j]), 15), -float(mean_q[j]), -int(combos[j].sum()))
        if key < self.key:
            self.key, self.point = key, (subset, tuple(int(x) for x in combos[j]))


def _evaluate(views: Sequence[_View], combos: np.ndarray, q_top: np.ndarray, target: float,
              best: _Best, subset: tuple[int, ...]) -> np.ndarray:
    """Simulate ``combos`` in batches, feed the running choice, return their bounds."""
    size = max(1, _BATCH_CELLS // max(1, len(q_top)))
    bounds = []
    for start in range(0, len(combos), size):
        part = combos[start:start + size]
        mean_c, mean_q, lcb = _stats(*_simulate(views, part), q_top, target)
        best.add(subset, part, mean_c, mean_q, lcb)
        bounds.append(np.c_[mean_c, mean_q, lcb])
    return np.vstack(bounds)


def _descend(views: Sequence[_View], dims: Sequence[int], q_top: np.ndarray, target: float,
             best: _Best, subset: tuple[int, ...]) -> None:
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


def _search(rp: _Replay, grids: Mapping[int, list[float]], target: float,
            say: Callable[[str], None]) -> tuple[_Best, dict[tuple[int, ...], list[_View]]]:
    top = len(rp.rungs) - 1
    best = _Best()
    all_views = {}
    for size in range(top, -1, -1):
        for lower in itertools.combinations(range(top), size):
            subset = (*lower, top)
            views = _views(rp, subset, grids)
            all_views[subset] = views
            dims = [len(v.accept) for v in views]
            total = math.prod(dims)
            if total <= _EXHAUSTIVE_LIMIT:
                combos = np.indices(dims).reshape(len(dims), -1).T
                _evaluate(views, combos, rp.q_top, target, best, subset)
            else:
                say(f"  {total:,} combinations for ladder {_names(rp, subset)}: "
                    "coordinate descent from 8 starts")
                _descend(views, dims, rp.q_top, target, best, subset)
    return best, all_views


def _names(rp: _Replay, subset: Sequence[int]) -> str:
    return " -> ".join(rp.rungs[i].key for i in subset)


# -- the calibrated config and the reports -------------------------------------------------------


def _calibrated(raw: Mapping[str, Any], rp: _Replay, task: str, subset: Sequence[int],
                grids: Mapping[int, list[float]], picks: Sequence[int]
                ) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    out = copy.deepcopy(dict(raw))
    old = raw["tasks"][task]["ladder"]
    ladder: list[Any] = []
    thresholds: dict[str, dict[str, float]] = {}
    for i, pick in zip(subset, picks, strict=True):
        rung = rp.rungs[i]
        if i == subset[-1]:
            ladder.append(copy.deepcopy(old[i]))
            continue
        entry = {k: copy.deepcopy(v) for k, v in old[i].items()} if isinstance(old[i], dict) \
            else {}
        entry["model"] = rung.key
        specs = copy.deepcopy(rung.specs)
        if rung.tuned is not None and rung.tunable is not None:
            theta = grids[i][pick]
            j = rung.spec_of[rung.tuned]
            label = f"{specs[j]['type']}.{rung.tunable.setting}"
            thresholds[rung.key] = {label: theta}
            if theta == _DROP:
                del specs[j]
            else:
                specs[j][rung.tunable.setting] = int(theta) if rung.tunable.integer else theta
        entry["evaluators"] = specs
        ladder.append({"model": entry.pop("model"), **entry})
    out["tasks"][task]["ladder"] = ladder
    return out, thresholds


def _ratio_ci(quality: np.ndarray, q_top: np.ndarray) -> list[float]:
    """Bootstrap 95% interval of mean(quality) / mean(q_top), paired, fixed seed."""
    rng = np.random.default_rng(SEED)
    idx = rng.integers(0, len(quality), size=(BOOTSTRAP, len(quality)))
    top = q_top[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where(top > 0, quality[idx].sum(axis=1) / top, np.nan)
    if np.isnan(ratios).all():
        return [math.nan, math.nan]
    lo, hi = np.nanpercentile(ratios, [2.5, 97.5])
    return [float(lo), float(hi)]


def _replayed(cfg: CascadeConfig, raw: Mapping[str, Any], records: Sequence[ReplayRecord],
              task: str, target: float, say: Callable[[str], None], label: str
              ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """run_bench's report of the calibrated config, with the bootstrap interval and a check."""
    say(f"replaying the calibrated config on {label} ({len(records)} queries) with run_bench")
    report = dict(run_bench(cfg, records, task=task).tasks[task])
    rp = _Replay(cfg, raw, None, records, task, tune=False)
    subset = tuple(range(len(rp.rungs)))
    views = _views(rp, subset, {})
    cost, quality = _simulate(views, np.zeros((1, len(subset)), dtype=int))
    if abs(cost.mean() - report["cost_per_query"]) > 1e-9 or \
            abs(quality.mean() - report["quality"]) > 1e-9:
        raise CascadeError(f"calibration: the simulation disagrees with run_bench on {label} "
                           f"(cost {cost.mean()} vs {report['cost_per_query']}, quality "
                           f"{quality.mean()} vs {report['quality']}); please report this bug")
    top = report["baselines"]["always_top"]["quality"]
    report["quality_ratio_ci95"] = _ratio_ci(quality[0], rp.q_top)
    report["target_met"] = bool(report["quality"] >= target * top - 1e-12)
    return report, cost[0], quality[0]


def _resolve_task(cfg: CascadeConfig, records: Sequence[ReplayRecord], task: str | None,
                  path: str) -> str:
    if task is not None:
        if task not in cfg.tasks:
            raise ConfigError(f"unknown task {task!r} (defined: {', '.join(cfg.tasks)})",
                              path=path, location="tasks")
        return task
    if len(cfg.tasks) == 1:
        return next(iter(cfg.tasks))
    named = {r.task for r in records if r.task in cfg.tasks}
    if len(named) == 1:
        return named.pop()
    raise ConfigError(f"calibration tunes one task at a time; pass task= (one of "
                      f"{', '.join(cfg.tasks)})", path=path, location="tasks")


def _load(path: Path, task: str, name: str) -> list[ReplayRecord]:
    records = [r for r in load_dataset(path) if (r.task or task) == task]
    if not records:
        raise DatasetError(f"{path}: no query of task {task!r} ({name} set)")
    return records


def _pct(x: float, of: float) -> str:
    return f"{x / of:.1%}" if of else "-"


def calibrate(config_path: str | Path, train: str | Path, *, target_quality: float,
              test: str | Path | None = None, task: str | None = None,
              say: Callable[[str], None] = lambda s: None) -> CalibrationResult:
    """Find the cheapest thresholds (and rungs) that keep quality >= R x always-top on train.

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
        ConfigError: the config is invalid, the task uses ``on_exhausted: raise``, a tuned rung
            does not use ``accept: all``, or an evaluator repairs answers.
        DatasetError: a dataset is malformed or holds no query of the task.
        ValueError: ``target_quality`` is not a positive number.
    """
    if not (isinstance(target_quality, (int, float)) and 0 < target_quality < math.inf):
        raise ValueError(f"target_quality must be a positive number, got {target_quality!r}")
    started = time.perf_counter()
    shown = str(config_path)
    cfg = load_config(config_path)
    raw = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    all_train = load_dataset(train)
    task = _resolve_task(cfg, all_train, task, shown)
    if cfg.tasks[task].on_exhausted != "return_last":
        raise ConfigError("calibration needs on_exhausted: return_last (the top rung answers "
                          "regardless; with raise, replay has no answer to score)",
                          path=shown, location=f"tasks.{task}.on_exhausted")
    records = [r for r in all_train if (r.task or task) == task]
    if not records:
        raise DatasetError(f"{train}: no query of task {task!r} (train set)")
    test_records = _load(Path(test), task, "test") if test is not None else None
    say(f"task {task}: {len(records)} train queries, ladder "
        f"{' -> '.join(r.model for r in cfg.tasks[task].ladder)}")
    rp = _Replay(cfg, raw, shown, records, task, tune=True)
    top = len(rp.rungs) - 1
    # Candidate values come from every history a rung can see (agreement depends on it).
    subsets = [(*lower, top) for size in range(top, -1, -1)
               for lower in itertools.combinations(range(top), size)]
    grids: dict[int, list[float]] = {}
    for rung in rp.rungs[:-1]:
        if rung.tunable is None:
            continue
        seen = [rp.fields(s, rung.index)[3] for s in subsets if rung.index in s]
        grids[rung.index] = _candidates(np.concatenate(seen), rung.tunable)
        say(f"  {rung.key}: {len(grids[rung.index])} candidate values of "
            f"{rung.specs[rung.spec_of[rung.tuned or 0]]['type']}.{rung.tunable.setting}")
    best, all_views = _search(rp, grids, target_quality, say)
    top_model = cfg.models[rp.rungs[top].key]
    top_cost = float(np.mean([recorded_cost(r.responses[top_model.name], cfg, rp.rungs[top].key)
                              if top_model.name in r.responses else 0.0 for r in records]))
    top_quality = float(rp.q_top.mean())
    say(f"searched {best.evaluated:,} configurations over {len(subsets)} rung subsets in "
        f"{time.perf_counter() - started:.1f} s")
    frontier = [(float(c), float(q)) for c, q in zip(best.front_c, best.front_q, strict=True)]
    if best.point is None:
        message = (f"target unreachable: no configuration keeps quality >= {target_quality:g} x "
                   f"always-top ({target_quality * top_quality:.4f}) on train under the guard "
                   f"({GUARD}); the best lower bound of mean(q - R*q_top) is "
                   f"{best.best_bound:+.4f}, at quality {best.best_bound_quality:.4f} "
                   f"({_pct(best.best_bound_quality, top_quality)} of always-top). Lower the "
                   "target or add train data.")
        return CalibrationResult(
            task=task, status="failed", message=message, target_quality=target_quality,
            guard=GUARD, ladder=(), thresholds={}, train={}, test=None,
            simulated_train={"always_top_cost_per_query": top_cost,
                             "always_top_quality": top_quality,
                             "best_lower_bound": best.best_bound},
            frontier=frontier, config={})
    subset, picks = best.point
    views = all_views[subset]
    sim_cost, sim_quality = _simulate(views, np.array([picks]))
    _, _, lcb = _stats(sim_cost, sim_quality, rp.q_top, target_quality)
    simulated = {"cost_per_query": float(sim_cost.mean()), "quality": float(sim_quality.mean()),
                 "always_top_cost_per_query": top_cost, "always_top_quality": top_quality,
                 "lower_bound": float(lcb[0])}
    mapping, thresholds = _calibrated(raw, rp, task, subset, grids, picks)
    new_cfg = parse_config(mapping, path=shown)
    train_report, _, _ = _replayed(new_cfg, mapping, records, task, target_quality, say, "train")
    test_report = None
    if test_records is not None:
        test_report, _, _ = _replayed(new_cfg, mapping, test_records, task, target_quality, say,
                                      "test")
    ladder = tuple(rp.rungs[i].key for i in subset)
    cost, quality = train_report["cost_per_query"], train_report["quality"]
    settings = "; ".join(f"{k} {s}={v:g}" if math.isfinite(v) else f"{k} {s.split('.')[0]} removed"
                         for k, t in thresholds.items() for s, v in t.items()) or "none"
    message = (f"ladder {' -> '.join(ladder)} ({settings}): cost {cost:.6g} USD/query, "
               f"{_pct(cost, top_cost)} of always-top; quality {quality:.4f}, "
               f"{_pct(quality, top_quality)} of always-top on train")
    if test_report is not None:
        t_top = test_report["baselines"]["always_top"]
        message += (f"; on test {_pct(test_report['cost_per_query'], t_top['cost_per_query'])} "
                    f"of the cost at {_pct(test_report['quality'], t_top['quality'])} of the "
                    f"quality (target {'met' if test_report['target_met'] else 'missed'})")
    status: Literal["ok", "failed"] = "ok"
    if cost > top_cost * (1 + 1e-9):
        status = "failed"
        message = (f"no cascade pays for itself: the cheapest configuration that meets the "
                   f"target costs {cost:.6g} USD/query, more than always-top "
                   f"({top_cost:.6g}). {message}")
    elif len(ladder) == 1:
        message = f"no cheaper cascade meets the target; keep the top rung alone. {message}"
    return CalibrationResult(
        task=task, status=status, message=message, target_quality=target_quality, guard=GUARD,
        ladder=ladder, thresholds=thresholds, train=train_report, test=test_report,
        simulated_train=simulated, frontier=frontier, config=mapping)


def write_calibrated(result: CalibrationResult, out: str | Path, *,
                     command: str | None = None) -> None:
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
        f"# task {result.task}: target quality >= {result.target_quality:g} x always-top "
        "(train)",
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
        lines.append(
            f"# {label} (n={report['n']}): cost {report['cost_per_query']:.6g} USD/query "
            f"({_pct(report['cost_per_query'], top['cost_per_query'])} of always-top "
            f"{top['cost_per_query']:.6g}); quality {report['quality']:.4f} "
            f"({_pct(report['quality'], top['quality'])} of always-top {top['quality']:.4f}; "
            f"bootstrap 95% CI {lo:.1%} to {hi:.1%})")
    body = yaml.safe_dump(result.config, sort_keys=False, allow_unicode=True)
    Path(out).write_text("\n".join(lines) + "\n" + body, encoding="utf-8")
