"""``cascade report --by key``: runs, calls, spend and savings per gateway key name."""

from __future__ import annotations

from typing import Any

from cascade.ledger import Ledger
from cascade.report.period import Period
from cascade.report.savings import by_key

__all__ = ["key_report"]


def key_report(ledger: Ledger) -> dict[str, Any]:
    """Runs, steps and spend per gateway key name, with each named key's savings and quality.

    Read from the rows (``steps.key_name``, ``runs.key_name``), not the rollup: a key is a
    gateway notion the rollup does not keep. Rows without a key name (library calls, unnamed
    ``server.api_keys_env`` keys, rows older than schema 8) are under ``""``. Pending and lost
    steps count at their reserved worst case, as the budgets count them, and shadow calls count
    too (unlike ``cascade report --json``'s ``keys``, which sums the runs' own cost, the figure
    savings are measured against). A named key's entry
    also has ``saved_usd``, ``saved_share`` and the quality fields of ``cascade report``'s
    ``keys`` (``cascade.report.savings.by_key``).

    Returns:
        ``{"keys": {name: {"runs", "accepted", "calls", "cost_usd", "unfinished", ...}}}``.
    """
    keys: dict[str, dict[str, Any]] = {}

    def entry(name: Any) -> dict[str, Any]:
        return keys.setdefault(
            name or "", {"runs": 0, "accepted": 0, "calls": 0, "cost_usd": 0.0, "unfinished": 0}
        )

    for row in ledger.query(
        "SELECT key_name, COUNT(*) AS n, COALESCE(SUM(accepted), 0) AS ok FROM runs"
        " GROUP BY key_name"
    ):
        key = entry(row["key_name"])
        key["runs"], key["accepted"] = int(row["n"]), int(row["ok"])
    for row in ledger.query(
        "SELECT key_name, COUNT(*) AS n, COALESCE(SUM(cost_usd), 0) AS c,"
        " COALESCE(SUM(CASE WHEN status <> 'settled' THEN 1 ELSE 0 END), 0) AS u"
        " FROM steps GROUP BY key_name"
    ):
        key = entry(row["key_name"])
        key["calls"], key["cost_usd"] = int(row["n"]), float(row["c"])
        key["unfinished"] = int(row["u"])
    for name, figures in by_key(ledger, Period()).items():
        extra = {k: v for k, v in figures.items() if k not in ("runs", "cost_usd")}
        entry(name).update(extra)
    return {"keys": dict(sorted(keys.items()))}
