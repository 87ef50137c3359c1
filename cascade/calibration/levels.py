"""Candidates fixed before any label is seen: thresholds on the rungs' raw signals.

A *level* u in [0, 1] sets every bounded tunable evaluator of every cheaper rung to the same
point of its own scale: ``low + u x (high - low)`` (``logprob.min``, ``self_confidence.min`` and
``agreement.min_agree`` are probabilities or shares, ``llm_judge.min_score`` runs 1..10). u = 1 is
the most conservative setting, u = 0 accepts whatever the other evaluators pass. ``LEVELS`` is a
fixed grid, dense near 1 where confidences crowd, and a *family* is one set of kept rungs walked
along that grid from 1 down to 0.

Nothing here depends on the data: the candidates and their order are known before a query is
read, so every labelled query may certify them (``calibration.fixed``), not only a held-out half.

``LevelTable`` replays each rung once and reads, per query and per history the rung can see,
each evaluator's verdict, the value its threshold is compared with, and what it cost; from those
``simulate`` plays any (family, level) exactly as the engine would: evaluators cheapest first,
stopping when the rung's ``accept`` is decided, the first accepted answer ending the run, the top
rung answering regardless.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cascade.calibration.policy_table import AnswerTable
from cascade.calibration.simulation import run_slot
from cascade.evaluation import Slot, Tunable, finalized, shown, tunable_of

__all__ = [
    "LEVELS",
    "LevelTable",
    "families",
    "leveled_specs",
    "slot_specs",
    "threshold_at",
    "tunable_slots",
]

# 1.0, then 1 - 1e-4 ... 1 - 1 on a log scale (confidences crowd near 1), merged with 0.01 steps.
LEVELS: tuple[float, ...] = tuple(
    sorted(
        {round(float(v), 6) for v in (1 - np.geomspace(1e-4, 1.0, 60))}
        | {round(k / 100, 2) for k in range(101)},
        reverse=True,
    )
)


def families(rungs: int) -> list[tuple[int, ...]]:
    """The kept-rung sets walked by level: each cheaper rung alone before the top (rung i,
    then the top), and the whole ladder. A handful, so the Bonferroni split stays small."""
    top = rungs - 1
    out = [(i, top) for i in range(top)]
    if rungs > 2:
        out.append(tuple(range(rungs)))
    return out


def threshold_at(tunable: Tunable, u: float) -> float | None:
    """The setting at level ``u``, or None when the tunable has no bounded scale (``length``).

    At u = 0 an open lower bound (``min > 0``) becomes ``low + 1e-9 x (high - low)``: the
    evaluator refuses ``low`` itself, and a round number reads better than the next float."""
    if not (math.isfinite(tunable.low) and math.isfinite(tunable.high)):
        return None
    value = tunable.low + u * (tunable.high - tunable.low)
    if tunable.low_open and value <= tunable.low:
        value = tunable.low + 1e-9 * (tunable.high - tunable.low)
    return round(value) if tunable.integer else value


def slot_specs(specs: Sequence[Mapping[str, Any]], slots: Sequence[Slot]) -> list[int]:
    """Per slot, the index of the YAML spec it was built from.

    Slots are the specs built and sorted cheapest first (a stable sort), and each is named as
    ``build_one`` names it (``name``, else the type, else a callable's function name); equal
    names keep their YAML order."""
    names = [
        s.get("name")
        or (
            str(s.get("path", "")).rpartition(":")[2]
            if s.get("type") == "callable"
            else s.get("type")
        )
        for s in specs
    ]
    taken: set[int] = set()
    out = []
    for slot in slots:
        j = next(j for j, name in enumerate(names) if j not in taken and name == slot.name)
        taken.add(j)
        out.append(j)
    return out


def tunable_slots(
    slots: Sequence[Slot], specs: Sequence[Mapping[str, Any]]
) -> list[Tunable | None]:
    """Per slot, its tunable when the level may set it: a bounded threshold of an evaluator
    that has YAML settings to write it to (not a ``callable``) and is not fitted on labels
    (not a ``quality_model``: its threshold is not known before the data)."""
    out: list[Tunable | None] = []
    for slot, j in zip(slots, slot_specs(specs, slots), strict=True):
        t = tunable_of(slot.evaluator)
        usable = (
            t is not None
            and threshold_at(t, 1.0) is not None
            and specs[j].get("type") != "callable"
            and not getattr(slot.evaluator, "learned", False)
        )
        out.append(t if usable else None)
    return out


class LevelTable:
    """Per rung and history, each evaluator's verdict, threshold value and side cost."""

    def __init__(
        self,
        table: AnswerTable,
        accept: Sequence[Any],
        specs: Sequence[Sequence[Mapping[str, Any]]],
    ):
        self.table = table
        self.accept = accept
        self.tunables = [
            tunable_slots(r.slots, sp) for r, sp in zip(table.rungs, specs, strict=True)
        ]
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def leveled(self, i: int) -> bool:
        """Whether rung ``i`` has at least one evaluator the level sets."""
        return any(t is not None for t in self.tunables[i])

    def own_signal(self, i: int) -> bool:
        """Whether rung ``i`` has a level-set evaluator that scores its answer alone (a
        log-probability, a stated confidence, a judge), not by agreement with earlier rungs."""
        return any(
            t is not None and not getattr(s.evaluator, "reads_history", False)
            for s, t in zip(self.table.rungs[i].slots, self.tunables[i], strict=True)
        )

    def fields(self, i: int, pattern: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(passed, value, cost), each (slots, queries), of rung ``i`` after the rejected
        answers of the rungs in bitmask ``pattern``; value is NaN where it never passes."""
        key = (i, pattern)
        if key in self._cache:
            return self._cache[key]
        t = self.table
        slots = t.rungs[i].slots
        passed = np.zeros((len(slots), t.n), dtype=bool)
        value = np.full((len(slots), t.n), np.nan)
        cost = np.zeros((len(slots), t.n))
        for q in range(t.n):
            completion = t.completions[i][q]
            if completion is None:
                continue
            request = t.request(i, q, pattern)
            clean = finalized(slots, completion)
            for k, slot in enumerate(slots):
                seen = shown(slot, completion, clean)
                verdict, spent = run_slot(slot, request, seen)
                passed[k, q], cost[k, q] = verdict.passed, spent
                if self.tunables[i][k] is not None:
                    v = slot.evaluator.threshold_value(verdict, seen)
                    value[k, q] = np.nan if v is None else v
        self._cache[key] = (passed, value, cost)
        return self._cache[key]

    def rung_at(self, i: int, pattern: int, u: float | None) -> tuple[np.ndarray, np.ndarray]:
        """(accepted, evaluator cost) per query of rung ``i`` at level ``u`` (None: as
        configured, for the top rung, which is written unchanged), with the engine's
        short-circuit: cheapest first, stop once ``accept`` is decided."""
        passed, value, cost = self.fields(i, pattern)
        policy = self.accept[i]
        n = self.table.n
        settled = np.zeros(n, dtype=bool)
        spent = np.zeros(n)
        verdict_all = np.ones(n, dtype=bool)
        verdict_any = np.zeros(n, dtype=bool)
        for k, tunable in enumerate(self.tunables[i]):
            ok = passed[k]
            if tunable is not None and u is not None:
                bar = threshold_at(tunable, u)
                with np.errstate(invalid="ignore"):
                    ok = value[k] >= bar
            spent += np.where(settled, 0.0, cost[k])
            verdict_all &= np.where(settled, True, ok)
            verdict_any |= np.where(settled, False, ok)
            settled |= ~ok if policy == "all" else ok
        accepted = verdict_all if policy == "all" else verdict_any
        if not len(self.tunables[i]):
            accepted = np.ones(n, dtype=bool)
        return accepted, spent

    def top_checks(self, reached: np.ndarray, pattern: np.ndarray) -> np.ndarray:
        """What the top rung's own evaluators (as configured) cost on the queries that reached
        it with an answer, after the rejected answers in ``pattern``: the engine runs them too,
        though the top answers regardless."""
        top = len(self.table.rungs) - 1
        cost = np.zeros(self.table.n)
        for pat in np.unique(pattern[reached]):
            sel = reached & (pattern == pat)
            _, spent = self.rung_at(top, int(pat), None)
            cost += np.where(sel, spent, 0.0)
        return cost

    def always_top(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-query (cost, quality) of the top rung alone, its evaluators included."""
        t = self.table
        top = len(t.rungs) - 1
        cost = t.call_cost[top] + self.top_checks(t.answered[top], np.zeros(t.n, dtype=np.int64))
        return cost, t.score[top].copy()

    def simulate(
        self, subset: tuple[int, ...], u: float, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-query (cost, quality) on ``rows`` of ladder ``subset`` at level ``u``."""
        t = self.table
        n = t.n
        cost, quality, last = np.zeros(n), np.zeros(n), np.zeros(n)
        done = np.zeros(n, dtype=bool)
        pattern = np.zeros(n, dtype=np.int64)
        top = subset[-1]
        for i in subset:
            active = ~done
            answered, score = t.answered[i], t.score[i]
            cost += np.where(active, t.call_cost[i], 0.0)
            if i == top:
                quality = np.where(active, np.where(answered, score, last), quality)
                cost += self.top_checks(active & answered, pattern)
                break
            ans = active & answered
            acc = np.zeros(n, dtype=bool)
            for pat in np.unique(pattern[ans]):
                sel = ans & (pattern == pat)
                ok, spent = self.rung_at(i, int(pat), u)
                acc |= sel & ok
                cost += np.where(sel, spent, 0.0)
            quality = np.where(acc, score, quality)
            done |= acc
            rej = ans & ~acc
            last = np.where(rej, score, last)
            pattern = np.where(rej, pattern | (1 << i), pattern)
        return cost[rows], quality[rows]


def leveled_specs(
    specs: Sequence[Mapping[str, Any]], slots: Sequence[Slot], u: float
) -> list[dict[str, Any]]:
    """A rung's YAML evaluator specs with every level-set threshold written at ``u``."""
    out = [copy.deepcopy(dict(s)) for s in specs]
    for j, tunable in zip(slot_specs(specs, slots), tunable_slots(slots, specs), strict=True):
        if tunable is not None:
            out[j][tunable.setting] = threshold_at(tunable, u)
    return out
