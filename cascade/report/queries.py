"""The page's aggregates, each one GROUP BY in the database over a period's rows.

A query returns at most (buckets x tasks x models) rows, whatever the ledger's size: the period
picks a time bucket (``period.bucket_seconds``) so a chart has at most a few hundred points.
The ``ts`` indexes of schema 8 limit a period's queries to its rows.

Latency quantiles are nearest-rank (the smallest value with at least q of the rows at or
below it), computed with window functions, which both SQLite and PostgreSQL have.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cascade.ledger import Ledger
from cascade.ledger.drift import drift_report, week_of
from cascade.ledger.triggers import RollupSql
from cascade.report.period import Period, bucket_seconds

__all__ = ["ESCALATING", "Aggregates", "aggregate", "headline"]

ESCALATING = "('escalate', 'error', 'skip')"  # as cascade report counts an escalation
QUANTILES = (50, 95, 99)


@dataclass(frozen=True, slots=True)
class Aggregates:
    """Everything the page draws, already aggregated (plain rows, JSON-ready)."""

    period: Period
    bucket_s: int
    headline: dict[str, Any]
    spend: list[dict[str, Any]] = field(default_factory=list)  # bucket, task, model, cost_usd
    saved: list[dict[str, Any]] = field(default_factory=list)  # bucket, task, top_usd, cost_usd
    funnel: list[dict[str, Any]] = field(default_factory=list)  # task, model, order, reached..
    latency: list[dict[str, Any]] = field(default_factory=list)  # by, name, p50, p95, p99, n
    models: list[dict[str, Any]] = field(default_factory=list)  # model, runs, calls
    errors: list[dict[str, Any]] = field(default_factory=list)  # bucket, model, errors, lost
    drift: list[dict[str, Any]] = field(default_factory=list)  # DriftRow.as_dict()
    budgets: list[dict[str, Any]] = field(default_factory=list)  # scope, period, spent, limit


def _bucket(dialect: str, ts: str, size: int) -> str:
    if dialect == "sqlite":  # CAST truncates: floor for times after 1970
        return f"CAST({ts} / {size} AS INTEGER) * {size}"
    return f"CAST(floor({ts} / {size}) AS BIGINT) * {size}"


def headline(ledger: Ledger, period: Period) -> dict[str, Any]:
    """Per task and in all: runs, spend, always-top, saved, escalation rate, as ``cascade
    report --json`` counts them (money summed in nano-dollars; a run escalated when one of its
    steps was escalated, failed or skipped)."""
    sql = RollupSql(ledger.backend.name)
    steps, args = period.steps()
    runs, run_args = period.runs()
    tasks: dict[str, dict[str, Any]] = {}
    for row in ledger.query(
        f"SELECT s.task AS task, COUNT(DISTINCT s.run_id) AS runs, SUM({sql.nano('s.cost_usd')})"
        f" AS cost, COUNT(DISTINCT CASE WHEN s.decision IN {ESCALATING} AND s.status <>"
        " 'pending' THEN s.run_id END) AS escalated"
        f" FROM steps s WHERE {steps} GROUP BY s.task ORDER BY s.task",
        args,
    ):
        runs_n = int(row["runs"])
        tasks[str(row["task"])] = {
            "runs": runs_n,
            "cost_usd": int(row["cost"] or 0) / 1e9,
            "escalation_rate": int(row["escalated"]) / runs_n if runs_n else 0.0,
            "top_nusd": 0,
            "top_cost_nusd": 0,
        }
    for row in ledger.query(
        f"SELECT r.task AS task, SUM({sql.nano('r.top_usd')}) AS top,"
        f" SUM({sql.nano('r.cost_usd')}) AS cost FROM runs r WHERE {runs}"
        " AND r.top_usd IS NOT NULL GROUP BY r.task",
        run_args,
    ):
        entry = tasks.setdefault(
            str(row["task"]),
            {"runs": 0, "cost_usd": 0.0, "escalation_rate": 0.0, "top_nusd": 0, "top_cost_nusd": 0},
        )
        entry["top_nusd"], entry["top_cost_nusd"] = int(row["top"] or 0), int(row["cost"] or 0)
    top = sum(t["top_nusd"] for t in tasks.values())
    cost = sum(t["top_cost_nusd"] for t in tasks.values())
    for task in tasks.values():
        t_top, t_cost = task.pop("top_nusd"), task.pop("top_cost_nusd")
        task["saved_usd"] = (t_top - t_cost) / 1e9
        task["saved_share"] = (t_top - t_cost) / t_top if t_top else None
    return {
        "total_cost_usd": sum(t["cost_usd"] for t in tasks.values()),
        "runs": sum(t["runs"] for t in tasks.values()),
        "saved_usd": (top - cost) / 1e9,
        "saved_share": (top - cost) / top if top else None,
        "tasks": dict(sorted(tasks.items())),
    }


def aggregate(
    ledger: Ledger,
    period: Period,
    *,
    budgets: list[dict[str, Any]] | None = None,
    targets: dict[str, float] | None = None,
    rungs: dict[str, list[str]] | None = None,
) -> Aggregates:
    """Every panel's rows for ``period``.

    Args:
        budgets: The budgets' state (``Guard.status()``), when a config names them.
        targets: Each task's quality target, for the drift panel.
        rungs: Each task's ladder (model keys, bottom first), to order its funnel; by default
            the order of the rungs' first steps.
    """
    dialect = ledger.backend.name
    sql = RollupSql(dialect)
    steps, args = period.steps()
    runs, run_args = period.runs()
    span = ledger.query(
        f"SELECT MIN(r.ts) AS lo, MAX(r.ts) AS hi FROM runs r WHERE {runs}", run_args
    )
    lo = period.since if period.since is not None else span[0]["lo"]
    hi = period.until if period.until is not None else span[0]["hi"]
    size = bucket_seconds(float(lo or 0), float(hi or 0))
    s_bucket, r_bucket = _bucket(dialect, "s.ts", size), _bucket(dialect, "r.ts", size)

    def rows(query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        return [dict(zip(r.keys(), r, strict=True)) for r in ledger.query(query, params)]

    spend = rows(
        f"SELECT {s_bucket} AS bucket, s.task AS task, s.model AS model,"
        f" SUM({sql.nano('s.cost_usd')}) AS cost_nusd FROM steps s WHERE {steps}"
        " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        args,
    )
    saved = rows(
        f"SELECT {r_bucket} AS bucket, r.task AS task, SUM({sql.nano('r.top_usd')}) AS top_nusd,"
        f" SUM({sql.nano('r.cost_usd')}) AS cost_nusd, COUNT(*) AS runs FROM runs r WHERE {runs}"
        " AND r.top_usd IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
        run_args,
    )
    funnel = rows(
        "SELECT s.task AS task, s.model AS model, MIN(s.step) AS first_step,"
        " COUNT(DISTINCT s.run_id) AS reached,"
        " SUM(CASE WHEN s.decision IN ('accept', 'escalate') THEN 1 ELSE 0 END) AS answered,"
        " SUM(CASE WHEN s.decision = 'accept' THEN 1 ELSE 0 END) AS accepted,"
        f" SUM(CASE WHEN s.decision IN {ESCALATING} THEN 1 ELSE 0 END) AS escalated"
        f" FROM steps s WHERE {steps} AND s.decision NOT IN ('shadow', 'judge')"
        " GROUP BY 1, 2 ORDER BY 1, 3",
        args,
    )
    order = rungs or {}
    funnel.sort(key=lambda r: (r["task"], _rank(order.get(r["task"]), r["model"]), r["first_step"]))
    latency = [
        *_quantiles(
            ledger,
            "model",
            "s.model",
            "s.latency_ms",
            f"FROM steps s WHERE {steps} AND s.decision NOT IN ('skip', 'cache',"
            " 'lost', 'pending') AND s.status = 'settled'",
            args,
        ),
        *_quantiles(
            ledger, "task", "r.task", "r.latency_ms", f"FROM runs r WHERE {runs}", run_args
        ),
    ]
    models = rows(
        "SELECT COALESCE(r.model, '(no answer)') AS model, COUNT(*) AS runs"
        f" FROM runs r WHERE {runs} GROUP BY 1 ORDER BY 2 DESC, 1",
        run_args,
    )
    errors = rows(
        f"SELECT {s_bucket} AS bucket, s.model AS model,"
        " SUM(CASE WHEN s.decision = 'error' THEN 1 ELSE 0 END) AS errors,"
        " SUM(CASE WHEN s.status = 'lost' THEN 1 ELSE 0 END) AS lost"
        f" FROM steps s WHERE {steps} AND (s.decision = 'error' OR s.status = 'lost')"
        " GROUP BY 1, 2 ORDER BY 1, 2",
        args,
    )
    last = None if period.until is None else week_of(period.until)  # whole weeks, as kept
    drift = [
        r.as_dict()
        for r in drift_report(ledger, targets=targets, since=period.since)
        if (period.task is None or r.task == period.task) and (last is None or r.week <= last)
    ]
    return Aggregates(
        period=period,
        bucket_s=size,
        headline=headline(ledger, period),
        spend=spend,
        saved=saved,
        funnel=funnel,
        latency=latency,
        models=models,
        errors=errors,
        drift=drift,
        budgets=list(budgets or []),
    )


def _rank(ladder: list[str] | None, model: str) -> int:
    return ladder.index(model) if ladder and model in ladder else len(ladder or ())


def _quantiles(
    ledger: Ledger, by: str, column: str, value: str, source: str, args: tuple[Any, ...]
) -> list[dict[str, Any]]:
    """Nearest-rank p50/p95/p99 of ``value`` per ``column``, in one pass of a window."""
    picks = ", ".join(f"MIN(CASE WHEN n * 100 >= c * {q} THEN v END) AS p{q}" for q in QUANTILES)
    query = (
        f"SELECT g, c AS count, {picks} FROM (SELECT {column} AS g, {value} AS v,"
        f" ROW_NUMBER() OVER (PARTITION BY {column} ORDER BY {value}) AS n,"
        f" COUNT(*) OVER (PARTITION BY {column}) AS c {source}) w GROUP BY g, c ORDER BY g"
    )
    return [
        {
            "by": by,
            "name": str(r["g"]),
            "count": int(r["count"]),
            **{f"p{q}": float(r[f"p{q}"]) for q in QUANTILES},
        }
        for r in ledger.query(query, args)
    ]
