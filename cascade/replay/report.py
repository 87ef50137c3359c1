"""Spend, calls and escalation rates per task and model, read back from the ledger.

The queries are plain SQL that SQLite and PostgreSQL run alike, so ``cascade report`` reads the
same on both backends.
"""

from __future__ import annotations

from typing import Any

from cascade.ledger import Ledger

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
        estimate because the provider reported no usage.
    """
    where, args = ("WHERE ts >= ?", (since,)) if since is not None else ("", ())
    unfinished = "SUM(CASE WHEN status <> 'settled' THEN 1 ELSE 0 END)"
    tasks: dict[str, dict[str, Any]] = {}
    for row in ledger.query(
        "SELECT task, COUNT(DISTINCT run_id) AS runs, SUM(cost_usd) AS cost,"
        " COUNT(DISTINCT CASE WHEN decision IN ('escalate', 'error', 'skip')"
        " THEN run_id END) AS escalated,"
        " SUM(CASE WHEN decision = 'error' THEN 1 ELSE 0 END) AS errors,"
        " SUM(usage_estimated) AS estimated,"
        " SUM(CASE WHEN decision = 'shadow' THEN cost_usd ELSE 0 END) AS shadow_cost,"
        " SUM(CASE WHEN decision = 'shadow' THEN 1 ELSE 0 END) AS shadow_calls,"
        f" {unfinished} AS unfinished FROM steps {where} GROUP BY task ORDER BY task",
        args,
    ):
        runs = int(row["runs"])
        tasks[row["task"]] = {
            "runs": runs,
            "cost_usd": float(row["cost"] or 0.0),
            "escalation_rate": int(row["escalated"]) / runs if runs else 0.0,
            "accepted_rate": None,
            "errors": int(row["errors"] or 0),
            "unfinished": int(row["unfinished"] or 0),
            "usage_estimated": int(row["estimated"] or 0),
            # shadow evaluation (cascade.engine.shadow): in cost_usd, and shown apart here
            "shadow_cost_usd": float(row["shadow_cost"] or 0.0),
            "shadow_calls": int(row["shadow_calls"] or 0),
            "models": {},
        }
    for row in ledger.query(
        f"SELECT task, AVG(accepted * 1.0) AS accepted FROM runs {where} GROUP BY task",
        args,
    ):
        if row["task"] in tasks:
            tasks[row["task"]]["accepted_rate"] = float(row["accepted"])
    for row in ledger.query(
        "SELECT task, model,"
        " SUM(CASE WHEN decision NOT IN ('skip', 'cache') THEN 1 ELSE 0 END) AS calls,"
        " SUM(cost_usd) AS cost, SUM(input_tokens) AS tin, SUM(output_tokens) AS tout,"
        f" SUM(usage_estimated) AS estimated, {unfinished} AS unfinished FROM steps {where}"
        " GROUP BY task, model ORDER BY task, model",
        args,
    ):
        tasks[row["task"]]["models"][row["model"]] = {
            "calls": int(row["calls"]),
            "cost_usd": float(row["cost"] or 0.0),
            "input_tokens": int(row["tin"] or 0),
            "output_tokens": int(row["tout"] or 0),
            "unfinished": int(row["unfinished"] or 0),
            "usage_estimated": int(row["estimated"] or 0),
        }
    return {
        "total_cost_usd": sum(t["cost_usd"] for t in tasks.values()),
        "runs": sum(t["runs"] for t in tasks.values()),
        "unfinished": sum(t["unfinished"] for t in tasks.values()),
        "tasks": tasks,
    }
