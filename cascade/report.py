"""Spend, calls and escalation rates per task and model, read back from the ledger."""

from __future__ import annotations

from typing import Any

from cascade.ledger import Ledger

__all__ = ["ledger_report"]


def ledger_report(ledger: Ledger, *, since: float | None = None) -> dict[str, Any]:
    """Summarise a ledger.

    A run counts as escalated when at least one of its rungs was passed over: its answer was
    rejected, the call failed, or a budget or open circuit skipped it. ``calls`` counts the
    calls that reached a provider (not skipped rungs, not cache hits).

    Returns:
        ``{"total_cost_usd", "runs", "tasks": {TASK: {"runs", "cost_usd", "escalation_rate",
        "accepted_rate", "errors", "usage_estimated", "models": {MODEL: {"calls", "cost_usd",
        "input_tokens", "output_tokens", "usage_estimated"}}}}}``. ``usage_estimated`` counts the
        steps billed at the engine's estimate because the provider reported no usage.
    """
    where, args = ("WHERE ts >= ?", (since,)) if since is not None else ("", ())
    tasks: dict[str, dict[str, Any]] = {}
    for row in ledger.query(
        "SELECT task, COUNT(DISTINCT run_id) AS runs, SUM(cost_usd) AS cost,"
        " COUNT(DISTINCT CASE WHEN decision IN ('escalate', 'error', 'skip')"
        " THEN run_id END) AS escalated,"
        " SUM(decision = 'error') AS errors, SUM(usage_estimated) AS estimated"
        f" FROM steps {where} GROUP BY task ORDER BY task",
        args,
    ):
        tasks[row["task"]] = {
            "runs": row["runs"],
            "cost_usd": row["cost"] or 0.0,
            "escalation_rate": row["escalated"] / row["runs"] if row["runs"] else 0.0,
            "accepted_rate": None,
            "errors": row["errors"] or 0,
            "usage_estimated": row["estimated"] or 0,
            "models": {},
        }
    for row in ledger.query(
        f"SELECT task, AVG(accepted) AS accepted FROM runs {where} GROUP BY task",
        args,
    ):
        if row["task"] in tasks:
            tasks[row["task"]]["accepted_rate"] = row["accepted"]
    for row in ledger.query(
        "SELECT task, model, SUM(decision NOT IN ('skip', 'cache')) AS calls,"
        " SUM(cost_usd) AS cost, SUM(input_tokens) AS tin, SUM(usage_estimated) AS estimated,"
        f" SUM(output_tokens) AS tout FROM steps {where} GROUP BY task, model ORDER BY task, model",
        args,
    ):
        tasks[row["task"]]["models"][row["model"]] = {
            "calls": row["calls"],
            "cost_usd": row["cost"] or 0.0,
            "input_tokens": row["tin"] or 0,
            "output_tokens": row["tout"] or 0,
            "usage_estimated": row["estimated"] or 0,
        }
    return {
        "total_cost_usd": sum(t["cost_usd"] for t in tasks.values()),
        "runs": sum(t["runs"] for t in tasks.values()),
        "tasks": tasks,
    }
