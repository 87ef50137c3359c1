"""``--scheme fixed``: certify on every labelled query, with candidates fixed in advance.

The holdout scheme spends half a small train file on fitting and certifies on the other half;
on a few hundred queries neither half is enough. Here nothing is fitted: the candidates are the
levels of ``calibration.levels`` (the same point of every bounded threshold's scale, from the
most conservative down), walked for each of a handful of kept-rung families. Their order is
fixed before any query is read, so every train query certifies:

- ``--guarantee pac`` (the default): each family's sequence is tested by fixed-sequence testing
  at level delta / (number of families) with the betting p-value, stopping at its first failure.
  By Bonferroni, with probability >= 1 - delta no family certifies a level whose expected
  quality is below R x always-top's; the cheapest certified candidate is written.
- ``--guarantee expected``: conformal risk control (Angelopoulos et al., 2022) over the families'
  candidates interleaved level by level. Each query's loss R x q_top - q is made monotone along
  that order (its running maximum, which can only overstate the loss), and the candidates are
  admissible while (sum of the n monotone losses + R) / (n + 1) <= 0, R being the largest loss.
  The promise is over the draw of the train queries: averaged over such draws, the chosen
  cascade's quality on a new query is >= R x always-top's. Not "with probability 1 - delta".

Both assume the train queries and later traffic are exchangeable (drawn alike).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascade.calibration.guarantee import certify, gates_to_cheaper, queries_to_cheaper
from cascade.calibration.levels import LEVELS, LevelTable, families, leveled_specs, threshold_at
from cascade.calibration.policy_table import AnswerTable
from cascade.calibration.prepared import Prepared, prepare
from cascade.calibration.result import (
    CalibrationResult,
    expected_guarantee,
    held_to_simulation,
    plain_guarantee,
    summary,
    top_alone_reason,
)
from cascade.config import MinScore, parse_config
from cascade.errors import ConfigError, DatasetError
from cascade.formatting import plural
from cascade.providers.dataset import ReplayRecord
from cascade.replay.bench import run_bench

__all__ = ["Level", "calibrate_fixed", "leveled"]

MIN_QUERIES = 20


@dataclass(frozen=True, slots=True)
class Level:
    """One candidate: the kept rungs (top last) and the level of their thresholds
    (``None``: the top rung alone)."""

    subset: tuple[int, ...]
    u: float | None


def leveled(prep: Prepared, *, own: bool = False) -> LevelTable | None:
    """The level table of a prepared task, or None when no cheaper rung has a threshold on a
    bounded scale under ``accept: all`` or ``any`` (then the fixed scheme has nothing to try).

    With ``own``, a rung counts only when such a threshold scores its answer alone: what
    ``--scheme auto`` asks before choosing the fixed scheme. Agreement alone is a poor fixed
    signal (a first rung has nothing to agree with; measured on ARC and Winogrande, the learned
    holdout policy saves more), so those ladders go to holdout."""
    accept = [r.accept for r in prep.table.rungs]
    levels = LevelTable(prep.table, accept, prep.specs)
    usable = [
        i
        for i in range(len(accept) - 1)
        if (levels.own_signal(i) if own else levels.leveled(i))
        and not isinstance(accept[i], MinScore)
    ]
    if not usable or any(isinstance(a, MinScore) for a in accept[:-1]):
        return None
    return levels


def _sequence(levels: LevelTable, subset: tuple[int, ...]) -> list[Level]:
    if any(levels.leveled(i) for i in subset[:-1]):
        return [Level(subset, u) for u in LEVELS]
    return [Level(subset, 1.0)]  # nothing to set: one candidate, the rungs' own evaluators


def calibrate_fixed(
    config_path: str | Path,
    train: str | Path,
    *,
    target_quality: float,
    delta: float = 0.1,
    test: str | Path | None = None,
    task: str | None = None,
    seed: int = 0,
    bound: str = "betting",
    guarantee: str = "pac",
    say: Callable[[str], None] = lambda s: None,
    prep: Prepared | None = None,
) -> CalibrationResult:
    """Certify the cheapest level on every train query; see the module doc.

    Raises:
        ConfigError: no cheaper rung has a bounded threshold to set (``logprob``,
            ``self_confidence``, ``agreement``, ``llm_judge``), or a rung uses ``accept:
            {min_score: ...}``; use ``--scheme holdout`` then.
        DatasetError: fewer than 20 train queries of the task.
    """
    started = time.perf_counter()
    prep = prep if prep is not None else prepare(config_path, train, test, task)
    levels = leveled(prep)
    if levels is None:
        raise ConfigError(
            "the fixed scheme sets thresholds on a bounded scale (logprob, self_confidence, "
            "agreement, llm_judge) of the cheaper rungs under accept: all or any; this ladder "
            "has none: use --scheme holdout",
            path=prep.shown,
            location=f"tasks.{prep.task}.ladder",
        )
    table = prep.table
    n, top = table.n, len(table.rungs) - 1
    if n < MIN_QUERIES:
        raise DatasetError(
            f"{train}: {plural(n, 'query')} of task {prep.task!r}, too few to certify "
            f"(need {MIN_QUERIES})"
        )
    rows = np.arange(n)
    q_top = table.score[top]
    always_top = Level((top,), None)
    sequences = [_sequence(levels, s) for s in families(len(table.rungs))]
    say(
        f"task {prep.task}: {n} train queries, all of them certify; {len(sequences)} families "
        f"of fixed thresholds ({guarantee} guarantee); ladder {' -> '.join(table.keys)}"
    )
    outcome: dict[Level, tuple[np.ndarray, np.ndarray]] = {always_top: levels.always_top()}
    for seq in sequences:
        for c in seq:
            outcome[c] = levels.simulate(c.subset, c.u if c.u is not None else 1.0, rows)
    certified, tested, level_used = certify(
        sequences, always_top, outcome, q_top, target_quality, delta, guarantee, bound, seed
    )
    frontier = sorted({(float(c.mean()), float(q.mean())) for c, q in outcome.values()})
    if not certified:
        return CalibrationResult(
            task=prep.task,
            status="failed",
            message=(
                f"target unreachable: nothing, always-top included, could be certified to keep "
                f"quality >= {target_quality:g} x always-top; lower the target"
            ),
            target_quality=target_quality,
            guard=f"fixed sequences ({guarantee}), delta={delta:g} on {n} train queries",
            ladder=(),
            thresholds={},
            train={},
            test=None,
            simulated_train={},
            frontier=frontier,
            config={},
            guarantee=None,
        )
    chosen = min(certified, key=lambda c: (float(outcome[c][0].mean()), -len(c.subset)))
    mapping = _config(prep, levels, chosen)
    new_cfg = parse_config(mapping, path=prep.shown)
    train_report = _replayed(
        prep, new_cfg, levels, chosen, prep.records, "train", target_quality, say
    )
    test_report = (
        _replayed(prep, new_cfg, None, chosen, prep.test_records, "test", target_quality, say)
        if prep.test_records is not None
        else None
    )
    thresholds = _describe(prep, levels, chosen)
    ladder = tuple(table.keys[i] for i in chosen.subset)
    top_cost = float(outcome[always_top][0].mean())
    why = None
    needed = None
    if chosen == always_top:
        gates = gates_to_cheaper(sequences, outcome, certified, top_cost, target_quality * q_top)
        if guarantee == "pac":
            needed = queries_to_cheaper(gates, target_quality, level_used, bound, seed)
        why = top_alone_reason(gates, needed, n, n)
    status, message = summary(
        ladder, thresholds, train_report, test_report, top_cost, top_alone=why
    )
    say(f"calibration took {time.perf_counter() - started:.1f} s")
    cost_c, q_c = outcome[chosen]
    return CalibrationResult(
        task=prep.task,
        status=status,
        message=message,
        target_quality=target_quality,
        guard=f"fixed sequences ({guarantee}"
        + (f", {bound} bound), delta={delta:g}" if guarantee == "pac" else ")")
        + f" on {n} train queries",
        ladder=ladder,
        thresholds=thresholds,
        train=train_report,
        test=test_report,
        simulated_train={
            "certify_cost_per_query": float(cost_c.mean()),
            "certify_quality": float(q_c.mean()),
            "certify_always_top_cost_per_query": top_cost,
            "certify_always_top_quality": float(q_top.mean()),
        },
        frontier=frontier,
        config=mapping,
        guarantee={
            "method": (
                "fixed-sequence testing on every train query (Bonferroni over families)"
                if guarantee == "pac"
                else "conformal risk control (monotone losses, n + 1 correction)"
            ),
            "guarantee": guarantee,
            "bound": bound if guarantee == "pac" else None,
            "delta": delta if guarantee == "pac" else None,
            "target_quality": target_quality,
            "statement": (
                plain_guarantee(delta, target_quality, Path(train).name, table.keys[top])
                if guarantee == "pac"
                else expected_guarantee(target_quality, Path(train).name, table.keys[top])
            ),
            "fit_queries": 0,
            "certify_queries": n,
            "scheme": "fixed",
            "families": len(sequences),
            "candidates": sum(len(s) for s in sequences) + 1,
            "tested": tested,
            "certified": len(certified),
            # as in the holdout scheme: the chosen candidate's position in the tested order
            "chosen": [always_top, *(c for seq in sequences for c in seq)].index(chosen),
            "level": chosen.u,
            "p_value": certified[chosen] if guarantee == "pac" else None,
            "certified_cheaper_than_top": chosen != always_top,
            "certify_queries_needed": needed,
        },
    )


def _config(prep: Prepared, levels: LevelTable, chosen: Level) -> dict[str, Any]:
    """The original mapping with the task's ladder rewritten for ``chosen``."""
    out = copy.deepcopy(dict(prep.raw))
    old = prep.raw["tasks"][prep.task]["ladder"]
    ladder: list[Any] = []
    for i in chosen.subset:
        if i == chosen.subset[-1]:
            ladder.append(copy.deepcopy(old[i]))
            continue
        entry = copy.deepcopy(old[i]) if isinstance(old[i], dict) else {}
        entry.pop("model", None)
        u = chosen.u if chosen.u is not None else 1.0
        specs = leveled_specs(prep.specs[i], prep.table.rungs[i].slots, u)
        ladder.append({"model": prep.table.keys[i], **entry, "evaluators": specs})
    out["tasks"][prep.task]["ladder"] = ladder
    return out


def _describe(prep: Prepared, levels: LevelTable, chosen: Level) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for i in chosen.subset[:-1]:
        settings: dict[str, float] = {}
        for slot, tunable in zip(prep.table.rungs[i].slots, levels.tunables[i], strict=True):
            if tunable is not None and chosen.u is not None:
                value = threshold_at(tunable, chosen.u)
                assert value is not None
                settings[f"{slot.name}.{tunable.setting}"] = float(value)
        out[prep.table.keys[i]] = settings
    return out


def _replayed(
    prep: Prepared,
    new_cfg: Any,
    levels: LevelTable | None,
    chosen: Level,
    records: Sequence[ReplayRecord] | None,
    label: str,
    target: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """run_bench's report of the written config on ``records``, held to the simulation."""
    assert records is not None
    say(
        f"replaying the calibrated config on {label} ({plural(len(records), 'query')}) "
        "with run_bench"
    )
    report = dict(run_bench(new_cfg, records, task=prep.task).tasks[prep.task])
    if levels is None:
        table = AnswerTable(prep.cfg, records, prep.task, prep.recipe, prep.shown)
        levels = LevelTable(table, [r.accept for r in table.rungs], prep.specs)
    table = levels.table
    rows = np.arange(table.n)
    top = len(table.rungs) - 1
    if chosen.u is None:
        cost, quality = levels.always_top()
    else:
        cost, quality = levels.simulate(chosen.subset, chosen.u, rows)
    return held_to_simulation(report, cost, quality, table.score[top], target, label)
