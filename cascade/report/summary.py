"""Spend, calls and escalation rates per task and model, read back from the ledger.

The numbers come from the ledger's rollup (``cascade.ledger.rollup``, sums per task, model and
week kept as rows are written) plus the few steps still pending, so a report costs the same on
a ledger of a thousand steps or ten million, on either backend.
"""

from __future__ import annotations

from typing import Any

from cascade.ledger import Ledger
from cascade.ledger.rollup import fold, read_rollup, week_index
from cascade.ledger.triggers import FEEDBACK_METRICS, MONDAY_S, WEEK_S
from cascade.report.period import Period
from cascade.report.savings import NO_SCORES, by_key, money, scored, shadowed

__all__ = ["ledger_report"]


def ledger_report(ledger: Ledger, *, since: float | None = None) -> dict[str, Any]:
    """Summarise a ledger.

    A run counts as escalated when at least one of its rungs was passed over: its answer was
    rejected, the call failed, or a budget or open circuit skipped it. ``calls`` counts the
    calls that reached a provider (not skipped rungs, not cache hits). ``unfinished`` counts
    calls whose outcome was never recorded: still ``pending``, or ``lost`` (their process died
    or they were cancelled); they are in the spend at their reserved worst case.

    Returns:
        ``{"total_cost_usd", "runs", "unfinished", "tasks": {TASK: {"runs", "cost_usd",
        "escalation_rate", "accepted_rate", "errors", "unfinished", "usage_estimated",
        "shadow_cost_usd", "shadow_calls", "models":
        {MODEL: {"calls", "cost_usd", "input_tokens", "output_tokens", "unfinished",
        "usage_estimated"}}}}}``. ``usage_estimated`` counts the steps billed at the engine's
        estimate because the provider reported no usage. ``since`` keeps the weeks from the
        one holding it on (whole weeks, as the rollup keeps them); costs are summed in
        nano-dollars, as the totals are.

        Savings against always-top (``docs/dashboard.md``): ``top_usd`` (what the runs with a
        figure would have cost at the top rung alone), ``saved_usd`` (that minus what they
        cost), ``saved_share`` (of ``top_usd``), ``priced_runs`` and ``top_exact_runs`` (of
        which the top rung ran, so the figure is its bill), at the top level, per task, and per
        model (the runs it answered, with their ``answered_runs`` and ``accepted_rate``);
        beside them ``feedback_mean``/``feedback_count`` (users' scores) and
        ``shadow_agreement``/``shadow_count`` (shadow labels). Per task, ``shadowed``: the runs
        whose top rung a shadow call measured, with the exact figure and the estimate side by
        side. ``keys``: the same per gateway key (``runs.key_name``).
    """
    since_week = None if since is None else week_index(since)
    fold(ledger)
    tasks: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[int]] = {}  # task -> [runs, accepted] from the runs rows
    answered: dict[tuple[str, str], dict[str, int]] = {}  # (task, model): the runs' sums
    for row in read_rollup(ledger, by_week=False, since_week=since_week):
        runs.setdefault(row["task"], [0, 0])
        runs[row["task"]][0] += row["runs"]
        runs[row["task"]][1] += row["runs_accepted"]
        if row["steps"]:
            _add(_task(tasks, row["task"]), row["model"], row)
        if row["runs"]:
            answered[row["task"], row["model"]] = row
    # Steps still pending are not in the rollup; they are few (calls in flight, or left by a
    # live process), found through their partial index.
    new_runs: dict[str, set[str]] = {}
    for step in ledger.query(
        # (task || '': the run's steps are found through steps_run, never the task's through
        # steps_task_ts; see RollupSql.sibling)
        "SELECT run_id, task, model, ts, cost_usd, EXISTS (SELECT 1 FROM steps o WHERE"
        " o.run_id = s.run_id AND o.task || '' = s.task AND o.status <> 'pending') AS seen"
        " FROM steps s WHERE status = 'pending'"
    ):
        if since_week is not None and week_index(float(step["ts"])) < since_week:
            continue
        nusd = round(float(step["cost_usd"]) * 1e9)
        _add(_task(tasks, step["task"]), step["model"], {
            "steps": 1, "calls": 1, "cost_nusd": nusd, "unfinished": 1})
        if not step["seen"]:
            new_runs.setdefault(step["task"], set()).add(str(step["run_id"]))
    for name, task in tasks.items():
        task["runs"] += len(new_runs.get(name, ()))
        task["escalation_rate"] = task.pop("escalated") / task["runs"] if task["runs"] else 0.0
        counted, accepted = runs.get(name, (0, 0))
        task["accepted_rate"] = accepted / counted if counted else None
        # summed in integer nano-dollars: one rounding, here
        task["cost_usd"] = task["cost_usd"] / 1e9
        task["shadow_cost_usd"] = task["shadow_cost_usd"] / 1e9
        for model in task["models"].values():
            model["cost_usd"] = model["cost_usd"] / 1e9
        task["models"] = dict(sorted(task["models"].items()))
    tasks = dict(sorted(tasks.items()))
    period = Period(since=None if since_week is None else week_start(since_week))
    top = _savings(tasks, answered, ledger, period)
    return {
        "total_cost_usd": sum(t["cost_usd"] for t in tasks.values()),
        "runs": sum(t["runs"] for t in tasks.values()),
        "unfinished": sum(t["unfinished"] for t in tasks.values()),
        **top,
        "tasks": tasks,
        "keys": by_key(ledger, period),
    }


def week_start(index: int) -> float:
    """The Unix time a rollup week begins (``week_index``'s inverse)."""
    return float(index * WEEK_S - MONDAY_S)


def _savings(
    tasks: dict[str, dict[str, Any]],
    answered: dict[tuple[str, str], dict[str, int]],
    ledger: Ledger,
    period: Period,
) -> dict[str, Any]:
    """Add the savings and quality fields to each task and model; returns the totals'."""
    exact = shadowed(ledger, period)
    for name, task in tasks.items():
        mine = {m: r for (t, m), r in answered.items() if t == name}
        top = sum(r["top_nusd"] for r in mine.values())
        cost = sum(r["top_cost_nusd"] for r in mine.values())
        priced = sum(r["top_runs"] for r in mine.values())
        exact_runs = sum(r["top_exact"] for r in mine.values())
        scores = {m: sum(r[m] for r in mine.values()) for m in FEEDBACK_METRICS}
        task.update(money(top, cost), priced_runs=priced, top_exact_runs=exact_runs,
                    **scored(scores), shadowed=exact.get(name))
        for model, r in mine.items():
            if not model:
                continue  # runs that returned no answer
            entry = task["models"].setdefault(model, _model_entry())
            entry.update(answered_runs=r["runs"],
                         accepted_rate=r["runs_accepted"] / r["runs"] if r["runs"] else None,
                         priced_runs=r["top_runs"], **money(r["top_nusd"], r["top_cost_nusd"]),
                         **scored(r))
        for entry in task["models"].values():
            if "saved_usd" not in entry:  # called, never answered a run
                entry.update(answered_runs=0, accepted_rate=None, priced_runs=0,
                             **money(0, 0), **NO_SCORES)
    # Every run's, also those of a task none of whose steps is in the period.
    rows = answered.values()
    return {**money(sum(r["top_nusd"] for r in rows), sum(r["top_cost_nusd"] for r in rows)),
            "priced_runs": sum(r["top_runs"] for r in rows),
            "top_exact_runs": sum(r["top_exact"] for r in rows)}


def _model_entry() -> dict[str, Any]:
    return {"calls": 0, "cost_usd": 0, "input_tokens": 0, "output_tokens": 0,
            "unfinished": 0, "usage_estimated": 0}


def _task(tasks: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return tasks.setdefault(name, {
        "runs": 0, "cost_usd": 0, "escalation_rate": 0.0, "escalated": 0, "accepted_rate": None,
        "errors": 0, "unfinished": 0, "usage_estimated": 0,
        # shadow evaluation (cascade.engine.shadow): in cost_usd, and shown apart here
        "shadow_cost_usd": 0, "shadow_calls": 0, "models": {},
    })


def _add(task: dict[str, Any], model: str, sums: dict[str, int]) -> None:
    """Add a rollup row (or one pending step) of ``task`` to it and to its model."""
    get = sums.get
    task["runs"] += get("step_runs", 0)
    task["cost_usd"] += get("cost_nusd", 0)  # nano-dollars until ledger_report ends
    task["escalated"] += get("escalated_runs", 0)
    task["errors"] += get("errors", 0)
    task["unfinished"] += get("unfinished", 0)
    task["usage_estimated"] += get("estimated", 0)
    task["shadow_cost_usd"] += get("shadow_nusd", 0)
    task["shadow_calls"] += get("shadow_calls", 0)
    entry = task["models"].setdefault(model, _model_entry())
    entry["calls"] += get("calls", 0)
    entry["cost_usd"] += get("cost_nusd", 0)
    entry["input_tokens"] += get("input_tokens", 0)
    entry["output_tokens"] += get("output_tokens", 0)
    entry["unfinished"] += get("unfinished", 0)
    entry["usage_estimated"] += get("estimated", 0)
