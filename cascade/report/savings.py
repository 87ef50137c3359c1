"""The savings against always-top and the quality beside them, aggregated in the database.

Each run row holds what always-top would have cost (``runs.top_usd``, an estimate unless the
top rung ran: ``cascade.engine.savings``). Per task and answering model the sums, and the
feedback's, come from the rollup (``ledger_report``); this module adds what the rollup does not
key on: per gateway key (``runs.key_name``, with its feedback), and the exact figure that shadow
calls of the top rung give on their sample (read through the shadow labels' own index).

Money is summed in integer nano-dollars in SQL, as the rollup does, so the same rows give the
same dollars whichever way they are read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cascade.ledger import Ledger
from cascade.ledger.triggers import FEEDBACK_METRICS, RollupSql
from cascade.report.period import Period

__all__ = ["NO_SCORES", "by_key", "money", "quality", "scored", "shadowed"]

SHADOW = "shadow:agreement"  # cascade.engine.shadow.SOURCE (report is below the engine)


# The quality fields of a group without feedback.
NO_SCORES: dict[str, Any] = {
    "feedback_mean": None,
    "feedback_count": 0,
    "shadow_agreement": None,
    "shadow_count": 0,
}


def money(top_nusd: int, cost_nusd: int) -> dict[str, Any]:
    """``top_usd``, ``saved_usd`` and ``saved_share`` of runs whose always-top figure sums to
    ``top_nusd`` and own cost to ``cost_nusd`` (nano-dollars)."""
    saved = (top_nusd - cost_nusd) / 1e9
    return {
        "top_usd": top_nusd / 1e9,
        "saved_usd": saved,
        "saved_share": saved / (top_nusd / 1e9) if top_nusd else None,
    }


def scored(sums: Mapping[str, int]) -> dict[str, Any]:
    """The quality fields of rows whose FEEDBACK_METRICS sum to ``sums`` (the rollup's)."""
    users, shadows = int(sums["user_scores"]), int(sums["shadow_scores"])
    return {
        "feedback_mean": sums["user_nano"] / 1e9 / users if users else None,
        "feedback_count": users,
        "shadow_agreement": sums["shadow_nano"] / 1e9 / shadows if shadows else None,
        "shadow_count": shadows,
    }


def quality(ledger: Ledger, period: Period) -> dict[str, dict[str, Any]]:
    """The quality fields per gateway key (``runs.key_name``): the rollup has no key, so this
    reads the feedback rows of the keys' runs (summed in nano-units, as the rollup does)."""
    sql = RollupSql(ledger.backend.name)
    values = sql.feedback_values("f")
    where, args = period.runs()
    rows = ledger.query(
        "SELECT r.key_name AS key_name, "
        + ", ".join(f"SUM({v}) AS {m}" for v, m in zip(values, FEEDBACK_METRICS, strict=True))
        + f" FROM feedback f JOIN runs r ON r.run_id = f.run_id WHERE {where}"
        " AND r.key_name IS NOT NULL GROUP BY r.key_name",
        args,
    )
    return {str(r["key_name"]): scored({m: int(r[m] or 0) for m in FEEDBACK_METRICS}) for r in rows}


def by_key(ledger: Ledger, period: Period) -> dict[str, dict[str, Any]]:
    """Per gateway key (``runs.key_name``): runs, acceptance, spend and savings, quality."""
    sql = RollupSql(ledger.backend.name)
    where, args = period.runs()
    rows = ledger.query(
        "SELECT r.key_name AS key_name, COUNT(*) AS runs,"
        " SUM(CASE WHEN r.accepted <> 0 THEN 1 ELSE 0 END) AS accepted,"
        f" SUM({sql.nano('r.cost_usd')}) AS cost,"
        f" SUM(CASE WHEN r.top_usd IS NOT NULL THEN {sql.nano('r.top_usd')} ELSE 0 END) AS top,"
        f" SUM(CASE WHEN r.top_usd IS NOT NULL THEN {sql.nano('r.cost_usd')} ELSE 0 END)"
        " AS top_cost, SUM(CASE WHEN r.top_usd IS NOT NULL THEN 1 ELSE 0 END) AS priced"
        f" FROM runs r WHERE {where} AND r.key_name IS NOT NULL GROUP BY r.key_name"
        " ORDER BY r.key_name",
        args,
    )
    scores = quality(ledger, period)
    out = {}
    for row in rows:
        name, runs = str(row["key_name"]), int(row["runs"])
        out[name] = {
            "runs": runs,
            "cost_usd": int(row["cost"] or 0) / 1e9,
            "accepted_rate": int(row["accepted"] or 0) / runs if runs else None,
            "priced_runs": int(row["priced"] or 0),
            **money(int(row["top"] or 0), int(row["top_cost"] or 0)),
            **scores.get(name, NO_SCORES),
        }
    return out


def shadowed(ledger: Ledger, period: Period) -> dict[str, dict[str, Any]]:
    """Per task, the runs whose top rung answered a shadow call (those with a shadow label):
    the exact always-top cost (that call's bill) beside the estimate recorded for them.

    The top rung's shadow call is the run's last shadow step: shadow calls climb the ladder
    in order, and the label exists only when the top one answered.
    """
    sql = RollupSql(ledger.backend.name)
    where, args = period.runs()
    rows = ledger.query(
        f"WITH labelled AS (SELECT DISTINCT run_id FROM feedback WHERE source = '{SHADOW}'),"
        " top AS (SELECT s.run_id, s.cost_usd FROM steps s JOIN labelled l ON l.run_id ="
        " s.run_id WHERE s.decision = 'shadow' AND s.step = (SELECT MAX(o.step) FROM steps o"
        " WHERE o.run_id = s.run_id AND o.decision = 'shadow'))"
        f" SELECT r.task AS task, COUNT(*) AS runs, SUM({sql.nano('t.cost_usd')}) AS exact,"
        f" SUM({sql.nano('r.cost_usd')}) AS cost,"
        f" SUM(CASE WHEN r.top_usd IS NOT NULL THEN {sql.nano('r.top_usd')} ELSE 0 END) AS est,"
        f" SUM(CASE WHEN r.top_usd IS NOT NULL THEN {sql.nano('r.cost_usd')} ELSE 0 END)"
        f" AS est_cost FROM runs r JOIN top t ON t.run_id = r.run_id WHERE {where}"
        " GROUP BY r.task",
        args,
    )
    out = {}
    for row in rows:
        exact = money(int(row["exact"] or 0), int(row["cost"] or 0))
        estimate = money(int(row["est"] or 0), int(row["est_cost"] or 0))
        out[str(row["task"])] = {
            "runs": int(row["runs"]),
            "top_usd": exact["top_usd"],
            "saved_usd": exact["saved_usd"],
            "saved_share": exact["saved_share"],
            "estimated_top_usd": estimate["top_usd"],
            "estimated_saved_usd": estimate["saved_usd"],
        }
    return out
