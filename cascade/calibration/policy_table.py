"""Recorded answers as arrays, the learned estimates fitted on them, and exact simulation.

``AnswerTable`` replays every rung of a task once over a set of queries (through the real
replay provider) and keeps, per rung: whether it answered, what the call cost, the recorded
score, and, lazily, the ``quality_model`` features of each answer for every set of earlier
answers it could see (``agreement`` features and signals read the run's history).

``Estimates`` fits the per-rung quality models and the router on some queries (cross-fitted,
so the queries a threshold is later chosen on were never fitted on) and predicts for any table.

``simulate`` plays a ``Policy`` on a table exactly as the engine would: router skips, calls, the
quality model's verdict on the history actually seen, the top rung answering regardless.
Calibration checks it against the real engine (``run_bench``) before it reports anything.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cascade.calibration.simulation import replay_answer, run_slot
from cascade.config import CascadeConfig
from cascade.config.pricing import cost_usd
from cascade.evaluation import finalized, shown
from cascade.models.features import prompt_features, prompt_text
from cascade.models.linear import Hashing, LinearModel, fit_isotonic, fit_logistic, hashed, sigmoid
from cascade.providers.dataset import ReplayRecord
from cascade.replay.bench import replay_engine
from cascade.types import Completion, Request
from evaluators.agreement import Agreement
from evaluators.quality import Features

__all__ = ["AnswerTable", "Estimates", "FitSettings", "Policy", "candidate_specs", "simulate"]

FOLDS = 5
NEVER = math.inf  # no probability reaches it: the rung never accepts


@dataclass(frozen=True, slots=True, eq=False)
class Policy:
    """Which rungs are kept, when the router skips them, and when their answer is accepted.

    Attributes:
        subset: Kept rung indices, top last.
        skip: Rung index -> skip when the router's probability is below this (0: never skip).
        accept: Rung index -> accept when the quality model's probability is at least this
            (0: always accept; ``NEVER``: never).
    """

    subset: tuple[int, ...]
    skip: Mapping[int, float] = field(default_factory=dict)
    accept: Mapping[int, float] = field(default_factory=dict)

    def _key(self) -> tuple[Any, ...]:
        return (self.subset, tuple(sorted(self.skip.items())), tuple(sorted(self.accept.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


class AnswerTable:
    """Every rung's recorded answer to every query, and the features of each answer."""

    def __init__(
        self,
        cfg: CascadeConfig,
        records: Sequence[ReplayRecord],
        task: str,
        recipe: str | None,
        path: str | None,
    ):
        self.records, self.n, self.task = records, len(records), task
        engine = replay_engine(cfg, records, path=path)
        self.rungs = engine.tasks[task].rungs
        self.keys = [r.key for r in self.rungs]
        # each rung's candidate evaluators, built by the engine: the quality model's signals
        self.signals = [r.slots for r in self.rungs]
        agree = Agreement(Agreement.Config(recipe=recipe), None) if recipe else None  # type: ignore[arg-type]
        self.extractors = [Features(s, agree) for s in self.signals]
        self.completions: list[list[Completion | None]] = []
        self.answered, self.call_cost, self.score = [], [], []
        for rung in self.rungs:
            name = cfg.models[rung.key].name
            outs, costs = [], []
            for r in records:
                done, paid = replay_answer(rung, r)
                outs.append(done)
                costs.append(cost_usd(paid, rung.model.price) if paid else 0.0)
            self.completions.append(outs)
            self.answered.append(np.array([c is not None for c in outs]))
            self.call_cost.append(np.array(costs))
            self.score.append(
                np.array(
                    [
                        r.responses[name].score if name in r.responses and c is not None else 0.0
                        for r, c in zip(records, outs, strict=True)
                    ]
                )
            )
        self.prompts = [prompt_text([m.model_dump() for m in r.messages]) for r in records]
        self._features: dict[tuple[int, int], tuple[list[dict[str, float]], np.ndarray]] = {}

    def request(self, i: int, q: int, pattern: int) -> Request:
        """Query ``q`` as rung ``i`` sees it after the rejected answers of the rungs in bitmask
        ``pattern`` (each as its user would read it)."""
        record = self.records[q]
        earlier = tuple(
            finalized(self.signals[j], c)
            for j in range(i)
            if pattern >> j & 1 and (c := self.completions[j][q]) is not None
        )
        return Request(
            task=self.task,
            messages=tuple(m.model_dump() for m in record.messages),
            run_id="calibrate",
            history=earlier,
            query_id=record.id,
        )

    def features(self, i: int, pattern: int) -> tuple[list[dict[str, float]], np.ndarray]:
        """Rung ``i``'s features per query after the answers of the rungs in bitmask
        ``pattern``, and the side cost (judge calls) of its signals per query."""
        key = (i, pattern)
        if key not in self._features:
            rows: list[dict[str, float]] = []
            side = np.zeros(self.n)
            ex = self.extractors[i]
            for q in range(self.n):
                completion = self.completions[i][q]
                if completion is None:
                    rows.append({})
                    continue
                request = self.request(i, q, pattern)
                clean = finalized(ex.signals, completion)
                verdicts = []
                for slot in ex.signals:
                    verdict, spent = run_slot(slot, request, shown(slot, completion, clean))
                    verdicts.append(verdict)
                    side[q] += spent
                dense, _ = ex.of(request, completion, tuple(verdicts))
                rows.append(dense)
            self._features[key] = (rows, side)
        return self._features[key]


@dataclass(frozen=True, slots=True)
class FitSettings:
    """How the estimates are fitted: the L2 penalties tried and whether text is hashed."""

    l2: tuple[float, ...] = (1.0, 10.0)
    text: bool = False
    hashing: Hashing = field(default_factory=lambda: Hashing(buckets=256, ngrams=2, max_chars=4000))


def _matrix(rows: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    return np.array([[row.get(k, 0.0) for k in names] for row in rows], dtype=float).reshape(
        len(rows), len(names)
    )


def _text_matrix(texts: Sequence[str], hashing: Hashing, kind: str) -> np.ndarray:
    out = np.zeros((len(texts), hashing.buckets))
    for r, text in enumerate(texts):
        for bucket, value in hashed(text, hashing, kind).items():
            out[r, bucket] += value
    return out


@dataclass(frozen=True, slots=True)
class _Design:
    names: list[str]
    mean: np.ndarray
    scale: np.ndarray


def _fit_one(
    x: np.ndarray, t: np.ndarray | None, y: np.ndarray, l2: float, design: _Design, s: FitSettings
) -> LinearModel:
    xs = (x - design.mean) / design.scale
    full = xs if t is None else np.hstack([xs, t])
    w, b = fit_logistic(full, y, l2=l2)
    d = len(design.names)
    return LinearModel(
        dense=design.names,
        weights=[float(v) for v in w[:d]],
        mean=[float(v) for v in design.mean],
        scale=[float(v) for v in design.scale],
        hashing=s.hashing if t is not None else None,
        text=["prompt"] if t is not None else [],
        text_weights=[[float(v) for v in w[d:]]] if t is not None else [],
        bias=b,
    )


def _raw(model: LinearModel, x: np.ndarray, t: np.ndarray | None) -> np.ndarray:
    z = (x - np.array(model.mean)) / np.array(model.scale) @ np.array(model.weights) + model.bias
    if t is not None and model.text_weights:
        z = z + t @ np.array(model.text_weights[0])
    return np.asarray(z)


def fit_calibrated(
    x: np.ndarray,
    t: np.ndarray | None,
    y: np.ndarray,
    s: FitSettings,
    names: list[str],
    seed: int,
) -> tuple[LinearModel, list[tuple[np.ndarray, LinearModel]]]:
    """A logistic model with an isotonic map fitted on its cross-fitted scores.

    Returns:
        (the model fitted on every row, [(held-out row indices, the model not fitted on them)]).
        The L2 penalty is the one with the best cross-fitted log-loss.
    """
    n = len(y)
    mean = x.mean(axis=0) if n else np.zeros(len(names))
    scale = x.std(axis=0) if n else np.ones(len(names))
    design = _Design(names, mean, np.where(scale > 1e-9, scale, 1.0))
    folds = np.array_split(np.random.default_rng(seed).permutation(n), min(FOLDS, max(2, n)))
    best: tuple[float, float, np.ndarray, list[tuple[np.ndarray, LinearModel]]] | None = None
    for l2 in s.l2:
        oof = np.zeros(n)
        models = []
        for held in folds:
            fit = np.setdiff1d(np.arange(n), held)
            m = _fit_one(x[fit], None if t is None else t[fit], y[fit], l2, design, s)
            oof[held] = _raw(m, x[held], None if t is None else t[held])
            models.append((held, m))
        p = np.clip(sigmoid(oof), 1e-6, 1 - 1e-6)
        loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
        if best is None or loss < best[0] - 1e-12:
            best = (loss, l2, oof, models)
    assert best is not None
    _, l2, oof, models = best
    calibrator = fit_isotonic(oof.tolist(), y.tolist())
    final = _fit_one(x, t, y, l2, design, s).model_copy(update={"calibrator": calibrator})
    return final, [(held, m.model_copy(update={"calibrator": calibrator})) for held, m in models]


class Estimates:
    """Quality models (per rung and set of kept earlier rungs) and router models, fitted on
    ``fit_rows`` of a table, with cross-fitted predictions for those rows."""

    def __init__(self, table: AnswerTable, fit_rows: np.ndarray, settings: FitSettings, seed: int):
        self.table, self.rows, self.settings, self.seed = table, fit_rows, settings, seed
        self.quality: dict[tuple[int, int], tuple[LinearModel, list[Any]]] = {}
        self.router: dict[int, tuple[LinearModel, list[Any]]] = {}

    def _prompt_matrix(self, table: AnswerTable) -> np.ndarray | None:
        if not self.settings.text:
            return None
        return _text_matrix(table.prompts, self.settings.hashing, "prompt")

    def quality_model(self, i: int, kept: int) -> tuple[LinearModel, list[Any]]:
        """Rung ``i``'s model when the kept earlier rungs are bitmask ``kept``."""
        if (i, kept) not in self.quality:
            rows, _ = self.table.features(i, kept)
            fit = self.rows[self.table.answered[i][self.rows]]
            names = sorted({k for q in fit for k in rows[q]})
            x = _matrix([rows[q] for q in fit], names)
            t_all = self._prompt_matrix(self.table)
            t = None if t_all is None else t_all[fit]
            final, folds = fit_calibrated(
                x, t, self.table.score[i][fit], self.settings, names, self.seed
            )
            # fold models index rows of ``fit``; map back to table rows
            self.quality[(i, kept)] = (final, [(fit[h], m) for h, m in folds])
        return self.quality[(i, kept)]

    def router_model(self, i: int) -> tuple[LinearModel, list[Any]]:
        """Rung ``i``'s prompt-only success model."""
        if i not in self.router:
            fit = self.rows
            rows = [prompt_features(self.table.prompts[q]) for q in fit]
            names = sorted(rows[0]) if rows else []
            x = _matrix(rows, names)
            t_all = self._prompt_matrix(self.table)
            t = None if t_all is None else t_all[fit]
            final, folds = fit_calibrated(
                x, t, self.table.score[i][fit], self.settings, names, self.seed + 1
            )
            self.router[i] = (final, [(fit[h], m) for h, m in folds])
        return self.router[i]

    def _predict(
        self, model: LinearModel, rows: Sequence[Mapping[str, float]], table: AnswerTable
    ) -> np.ndarray:
        x = _matrix(rows, model.dense)
        t = None
        if model.text_weights:
            assert model.hashing is not None
            t = _text_matrix(table.prompts, model.hashing, "prompt")
        z = _raw(model, x, t)
        return np.asarray(model.calibrator(z) if model.calibrator else sigmoid(z))

    def quality_p(
        self, table: AnswerTable, i: int, kept: int, pattern: int, *, crossfit: bool
    ) -> np.ndarray:
        """P(correct) of rung ``i``'s answer per query of ``table`` with history ``pattern``."""
        final, folds = self.quality_model(i, kept)
        rows, _ = table.features(i, pattern)
        if not crossfit:
            return self._predict(final, rows, table)
        out = self._predict(final, rows, table)
        for held, model in folds:
            out[held] = self._predict(model, rows, table)[held]
        return out

    def router_p(self, table: AnswerTable, i: int, *, crossfit: bool) -> np.ndarray:
        """The router's P(rung ``i`` right | prompt) per query of ``table``."""
        final, folds = self.router_model(i)
        rows = [prompt_features(p) for p in table.prompts]
        out = self._predict(final, rows, table)
        if crossfit:
            for held, model in folds:
                out[held] = self._predict(model, rows, table)[held]
        return out


def simulate(
    policy: Policy,
    table: AnswerTable,
    est: Estimates,
    idx: np.ndarray,
    *,
    crossfit: bool,
    cache: dict[Any, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query (cost, quality) of ``policy`` on rows ``idx`` of ``table``, as the engine
    runs it."""
    cache = {} if cache is None else cache

    def get(key: Any, make: Any) -> np.ndarray:
        if key not in cache:
            cache[key] = make()
        return cache[key]

    n = len(idx)
    cost, quality, last = np.zeros(n), np.zeros(n), np.zeros(n)
    done = np.zeros(n, dtype=bool)
    pattern = np.zeros(n, dtype=np.int64)
    top = policy.subset[-1]
    for i in policy.subset:
        active = ~done
        score = table.score[i][idx]
        answered = table.answered[i][idx]
        if i == top:
            cost += np.where(active, table.call_cost[i][idx], 0.0)
            quality = np.where(active, np.where(answered, score, last), quality)
            break
        threshold = policy.skip.get(i, 0.0)
        if threshold > 0:
            rp = get(("router", i), lambda i=i: est.router_p(table, i, crossfit=crossfit))[idx]
            active &= ~(rp < threshold)
        cost += np.where(active, table.call_cost[i][idx], 0.0)
        ans = active & answered
        kept = sum(1 << j for j in policy.subset if j < i)
        p = np.full(n, -math.inf)
        for pat in np.unique(pattern[ans]):
            sel = ans & (pattern == pat)
            pv = get(
                ("q", i, kept, int(pat)),
                lambda i=i, kept=kept, pat=int(pat): est.quality_p(
                    table, i, kept, pat, crossfit=crossfit
                ),
            )
            _, side = table.features(i, int(pat))
            p[sel] = pv[idx][sel]
            cost[sel] += side[idx][sel]
        acc = ans & (p >= policy.accept.get(i, NEVER))
        quality = np.where(acc, score, quality)
        done |= acc
        rej = ans & ~acc
        last = np.where(rej, score, last)
        pattern = np.where(rej, pattern | (1 << i), pattern)
    return cost, quality


def candidate_specs(raw: Mapping[str, Any], task: str) -> list[list[dict[str, Any]]]:
    """Each rung's candidate evaluators as written in the YAML (its own, else the task's)."""
    raw_task = raw["tasks"][task]
    out = []
    for entry in raw_task["ladder"]:
        own = isinstance(entry, dict) and entry.get("evaluators") is not None
        out.append(copy.deepcopy(entry["evaluators"] if own else raw_task.get("evaluators") or []))
    return out
