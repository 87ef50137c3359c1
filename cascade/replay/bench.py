"""Replay a dataset of recorded answers through the real engine and measure the cascade.

Every provider of the config is swapped for a ``ReplayProvider``; nothing else changes, so the
numbers are those of the code path ``complete`` takes in production. Per task it reports the
cascade's cost and quality next to three baselines: always the top rung, always the first rung,
and the oracle (stop at the first rung with the best recorded score, paying for every rung tried).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade.config import CascadeConfig, load_config
from cascade.engine import Cascade
from cascade.errors import ConfigError, DatasetError, ProviderError
from cascade.ledger import Ledger
from cascade.providers.dataset import RecordedResponse, ReplayRecord, load_dataset
from cascade.providers.replay import ReplayProvider

__all__ = ["BenchResult", "percentile", "recorded_cost", "replay_engine", "run_bench"]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def recorded_cost(response: RecordedResponse, config: CascadeConfig, model_key: str) -> float:
    """What a recording cost: its own ``cost_usd``, else its tokens at the config's price."""
    if response.cost_usd is not None:
        return response.cost_usd
    return config.models[model_key].price.estimate(
        response.input_tokens or 0, response.output_tokens or 0
    )


def replay_engine(
    config: CascadeConfig,
    records: Iterable[ReplayRecord],
    *,
    path: str | None = None,
    ledger: Ledger | bool = False,
) -> Cascade:
    """The config's engine with every provider replaced by one replay provider over ``records``."""
    records = list(records)
    providers = {
        name: ReplayProvider(name, settings, records=records)
        for name, settings in config.providers.items()
    }
    # A replay measures the ladder itself: a persistent cache would carry answers between runs,
    # and period budgets would count a ledger that replays do not write by default.
    tasks = {
        name: task.model_copy(update={"cache": None, "budgets": None})
        for name, task in config.tasks.items()
    }
    config = config.model_copy(update={"tasks": tasks, "budgets": None})
    return Cascade(config, path=path, providers=providers, ledger=ledger)


@dataclass(slots=True)
class _Outcome:
    rung: int | None  # ladder index of the answer returned; None when no rung answered
    accepted: bool
    cost: float
    quality: float
    latency_ms: float | None  # recorded latency summed along the path; None if not recorded
    overhead_ms: float  # the engine's own wall time for this query
    error_steps: int
    deepest: int  # ladder index of the highest rung that was called
    chars: int  # length of the answer returned (judges favour long answers)


@dataclass(slots=True)
class BenchResult:
    """Everything ``cascade bench`` reports; ``as_json()`` is the documented contract."""

    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    dataset: str = ""
    config: str = ""
    queries: int = 0
    wall_s: float = 0.0
    split: str | None = None  # meta.split shared by every record (train, test), else None
    warnings: list[str] = field(default_factory=list)  # e.g. a rung with no recordings

    def as_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "config": self.config,
            "queries": self.queries,
            "queries_per_second": self.queries / self.wall_s if self.wall_s else None,
            "tasks": self.tasks,
        }


def _tasks_of(
    records: Sequence[ReplayRecord],
    config: CascadeConfig,
    default: str | None,
    dataset: str,
    config_path: str | None,
) -> list[str]:
    """Each record's task. The errors name ``--task``, the dataset's tasks and the config's,
    because a query's own task comes before ``--task`` and that is what surprises people.

    Raises:
        ConfigError: ``default`` is not a task of the config.
        DatasetError: a query has no task and there is no default, a query's task is not in
            the config, or ``default`` is given but every query names another task.
    """
    known = ", ".join(config.tasks)
    if default is not None and default not in config.tasks:
        raise ConfigError(
            f"--task {default!r} is not one of the config's tasks ({known})",
            path=config_path,
            location="tasks",
        )
    named = ", ".join(sorted({r.task for r in records if r.task})) or "none"
    tasks = []
    for line, record in enumerate(records, start=1):
        task = record.task or default
        if task is None:
            raise DatasetError(
                f"{dataset}:{line}: query {record.id!r} has no task; pass --task (one of {known})"
            )
        if task not in config.tasks:
            raise DatasetError(
                f"{dataset}:{line}: task {task!r} is not in the config (config tasks: {known}; "
                f"dataset tasks: {named}); a query's own task comes before --task, so bench it "
                f"with a config that has a {task!r} task"
            )
        tasks.append(task)
    if default is not None and default not in tasks:
        raise DatasetError(
            f"{dataset}: --task {default!r} matches no query: every query names its own task "
            f"(dataset tasks: {named}; config tasks: {known}); --task only applies to queries "
            "that name none"
        )
    return tasks


def _check_recorded(
    cfg: CascadeConfig, records: Sequence[ReplayRecord], tasks: Sequence[str], dataset: str
) -> list[str]:
    """Warnings for ladder rungs with no recording at all; an error when a whole ladder has none.

    A rung with some recordings missing is real data (the report counts its error steps); a
    ladder none of whose model names appear in the dataset is a config written for other data,
    and its report would be nothing but errors.

    Raises:
        DatasetError: naming the models and what the dataset does record.
    """
    recorded: set[str] = set()
    for record in records:
        recorded.update(record.responses)
    warnings: list[str] = []
    for name in sorted(set(tasks)):
        missing = [
            f"{rung.model!r} (name {cfg.models[rung.model].name!r})"
            for rung in cfg.tasks[name].ladder
            if cfg.models[rung.model].name not in recorded
        ]
        what = (
            f"task {name!r}: model {', '.join(missing)} has no recordings (the dataset records: "
            f"{', '.join(sorted(recorded)) or 'nothing'}; a model's name: must match a key of "
            "responses)"
        )
        if len(missing) == len(cfg.tasks[name].ladder):
            raise DatasetError(f"{dataset}: {what}")
        if missing:
            warnings.append(f"{dataset}: {what}; every call to it is an error step")
    return warnings


def run_bench(
    config: str | Path | CascadeConfig,
    dataset: str | Path | Sequence[ReplayRecord],
    *,
    task: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    ledger: Ledger | bool = False,
) -> BenchResult:
    """Replay every query of ``dataset`` through the cascade and summarise per task.

    Args:
        config: A config file or a loaded config.
        dataset: A replay JSONL file, or records already loaded.
        task: The task for records that do not name one.
        progress: Called as ``progress(done, total)`` after each query.
        ledger: A ledger to record the replayed steps in (off by default).

    Raises:
        ConfigError: the config is invalid, a recorded model is priced nowhere, or ``task``
            is not a task of the config.
        DatasetError: a malformed line, a record whose task is unknown, or ``task`` given
            while every record names another. Raised before any query runs, so no partial
            report is ever produced.
    """
    if isinstance(config, CascadeConfig):
        cfg, cfg_path = config, None
    else:
        cfg, cfg_path = load_config(config), str(config)
    if isinstance(dataset, (str, Path)):
        records, ds_name = load_dataset(dataset), str(dataset)
    else:
        records, ds_name = list(dataset), "<records>"
    if not records:
        raise DatasetError(f"{ds_name}: the dataset has no queries; nothing to replay")
    tasks = _tasks_of(records, cfg, task, ds_name, cfg_path)
    warnings = _check_recorded(cfg, records, tasks, ds_name)
    engine = replay_engine(cfg, records, path=cfg_path, ledger=ledger)
    outcomes: dict[str, list[_Outcome]] = {}
    started = time.perf_counter()
    for done, (record, name) in enumerate(zip(records, tasks, strict=True), start=1):
        outcomes.setdefault(name, []).append(_replay_one(engine, cfg, record, name))
        if progress is not None:
            progress(done, len(records))
    wall = time.perf_counter() - started
    result = BenchResult(
        dataset=ds_name,
        config=cfg_path or "<config>",
        queries=len(records),
        wall_s=wall,
        warnings=warnings,
    )
    splits = {str(r.meta.get("split")) for r in records if r.meta.get("split") is not None}
    result.split = splits.pop() if len(splits) == 1 else ("mixed" if splits else None)
    for name, outs in outcomes.items():
        chosen = [r for r, t in zip(records, tasks, strict=True) if t == name]
        result.tasks[name] = _summarise(cfg, name, chosen, outs)
    return result


def _replay_one(engine: Cascade, cfg: CascadeConfig, record: ReplayRecord, task: str) -> _Outcome:
    ladder = [r.model for r in cfg.tasks[task].ladder]
    messages = [m.model_dump() for m in record.messages]
    t0 = time.perf_counter()
    try:
        result = engine.complete(task, messages, query_id=record.id)
    except ProviderError as exc:  # no rung answered: the steps are still the truth about cost
        if exc.result is None:
            raise
        result = exc.result
    overhead = (time.perf_counter() - t0) * 1000
    rung = ladder.index(result.model) if result.model else None
    quality = 0.0
    if rung is not None:
        quality = record.responses[cfg.models[ladder[rung]].name].score
    deepest = max(
        (
            ladder.index(s.model)
            for s in result.steps
            if s.decision != "judge" and s.model in ladder
        ),
        default=0,
    )
    latency: float | None = 0.0
    for step in result.steps:
        if step.decision in ("judge", "skip"):
            # a judge's recording is its answer to the query, not its grading; a skipped rung
            # never ran
            continue
        recorded = record.responses.get(cfg.models[step.model].name)
        if recorded is None:
            continue  # no recording: an error step that took no time
        if recorded.latency_ms is None or latency is None:
            latency = None
            break
        latency += recorded.latency_ms
    return _Outcome(
        rung=rung,
        accepted=result.accepted,
        cost=result.cost_usd,
        quality=quality,
        latency_ms=latency,
        overhead_ms=overhead,
        chars=len(result.text),
        error_steps=sum(s.decision == "error" for s in result.steps),
        deepest=deepest,
    )


def _summarise(
    cfg: CascadeConfig, task: str, records: Sequence[ReplayRecord], outs: Sequence[_Outcome]
) -> dict[str, Any]:
    ladder = [r.model for r in cfg.tasks[task].ladder]
    n = len(outs)
    single: dict[str, dict[str, float]] = {}
    per_model_costs: list[list[float]] = [[] for _ in ladder]
    per_model_scores: list[list[float | None]] = [[] for _ in ladder]
    for record in records:
        for i, key in enumerate(ladder):
            response = record.responses.get(cfg.models[key].name)
            per_model_costs[i].append(recorded_cost(response, cfg, key) if response else 0.0)
            per_model_scores[i].append(response.score if response else None)
    for i, key in enumerate(ladder):
        scores = [s or 0.0 for s in per_model_scores[i]]
        texts = [
            r.responses[cfg.models[key].name].text
            for r in records
            if cfg.models[key].name in r.responses
        ]
        single[key] = {
            "cost_per_query": sum(per_model_costs[i]) / n,
            "quality": sum(scores) / n,
            "missing": sum(s is None for s in per_model_scores[i]),
            "answer_chars": sum(map(len, texts)) / len(texts) if texts else 0.0,
        }
    oracle_cost = oracle_quality = 0.0
    for q in range(n):
        recorded = [per_model_scores[i][q] for i in range(len(ladder))]
        best = max((s for s in recorded if s is not None), default=0.0)
        stop = next(
            (i for i, s in enumerate(recorded) if s is not None and s >= best), len(ladder) - 1
        )
        oracle_cost += sum(per_model_costs[i][q] for i in range(stop + 1))
        oracle_quality += best
    cost = sum(o.cost for o in outs) / n
    quality = sum(o.quality for o in outs) / n
    top = single[ladder[-1]]
    answered = [o.rung for o in outs]
    return {
        "n": n,
        "ladder": ladder,
        "escalation_rate": [sum(o.deepest > i for o in outs) / n for i in range(len(ladder) - 1)],
        "accepted_share": [sum(r == i for r in answered) / n for i in range(len(ladder))],
        "unaccepted_share": sum(not o.accepted and o.rung is not None for o in outs) / n,
        "failed": sum(o.rung is None for o in outs),
        "error_steps": sum(o.error_steps for o in outs),
        "cost_per_query": cost,
        "quality": quality,
        "answer_chars": sum(o.chars for o in outs) / n,
        "relative_to_top": {
            "cost": cost / top["cost_per_query"] if top["cost_per_query"] else None,
            "quality": quality / top["quality"] if top["quality"] else None,
        },
        "baselines": {
            "always_top": {"cost_per_query": top["cost_per_query"], "quality": top["quality"]},
            "always_first": {k: single[ladder[0]][k] for k in ("cost_per_query", "quality")},
            "oracle": {"cost_per_query": oracle_cost / n, "quality": oracle_quality / n},
        },
        "models": single,
        "latency_ms": _latency(outs),
        "engine_overhead_ms": {
            f"p{p}": percentile([o.overhead_ms for o in outs], p) for p in (50, 99)
        },
    }


def _latency(outs: Sequence[_Outcome]) -> dict[str, float] | None:
    """Percentiles of recorded path latency; None when the dataset records no latencies."""
    known = [o.latency_ms for o in outs if o.latency_ms is not None]
    if not known:
        return None
    return {f"p{p}": percentile(known, p) for p in (50, 95, 99)}
