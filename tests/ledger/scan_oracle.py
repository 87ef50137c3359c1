"""The reports as the base code computed them, scanning every row (issue 22, item 8): the oracle
the rollup's numbers are checked against. Copied from ``cascade/ledger/drift.py`` and
``cascade/replay/report.py`` before the rollup; only the names changed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from cascade.ledger import Ledger
from cascade.ledger.drift import DriftRow


def _datetime_week(ts: float) -> str:
    year, week, _ = datetime.fromtimestamp(ts, tz=timezone.utc).isocalendar()
    return f"{year}-W{week:02d}"


def scan_drift(
    ledger: Ledger,
    *,
    targets: Mapping[str, float] | None = None,
    min_evidence: int = 1,
    since: float | None = None,
) -> list[DriftRow]:
    """The drift rows as the base code read them: every step, run and feedback row."""
    targets = targets or {}
    where, args = ("WHERE ts >= ?", (since,)) if since is not None else ("", ())
    acc: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"answers": 0, "accepted": 0, "scores": [], "user": 0, "shadow": 0,
                 "costs": [], "shadow_cost": 0.0})
    for row in ledger.query(
        f"SELECT task, model, ts, decision, cost_usd FROM steps {where}", args
    ):
        key = (str(row["task"]), str(row["model"]), _datetime_week(float(row["ts"])))
        if row["decision"] in ("accept", "escalate"):
            acc[key]["answers"] += 1
            acc[key]["accepted"] += row["decision"] == "accept"
        elif row["decision"] == "shadow":
            acc[key]["shadow_cost"] += float(row["cost_usd"])
    # A user's score wins over a shadow label; the latest of each kind.
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    for row in ledger.query(
        "SELECT f.run_id, f.score, f.source FROM feedback f JOIN runs r ON r.run_id = f.run_id"
        f" {where.replace('ts', 'r.ts')} ORDER BY f.ts, f.id", args
    ):
        kind = "user" if row["source"] == "user" else "shadow"
        scores[str(row["run_id"])][kind] = float(row["score"])
    for row in ledger.query(
        "SELECT run_id, task, model, ts, accepted, cost_usd FROM runs"
        f" {where + ' AND' if where else 'WHERE'} model IS NOT NULL", args
    ):
        # the run's cost without its shadow calls: the runs row is written before them
        key = (str(row["task"]), str(row["model"]), _datetime_week(float(row["ts"])))
        acc[key]["costs"].append(float(row["cost_usd"]))
        found = scores.get(str(row["run_id"]))
        if row["accepted"] and found:
            kind = "user" if "user" in found else "shadow"
            acc[key]["scores"].append(found[kind])
            acc[key][kind] += 1
    out = []
    for (task, rung, week), a in sorted(acc.items()):
        if task.startswith("__model__") and not a["answers"]:
            continue
        n = len(a["scores"])
        mean = sum(a["scores"]) / n if n else None
        target = targets.get(task)
        out.append(DriftRow(
            task=task, rung=rung, week=week, answers=a["answers"], accepted=a["accepted"],
            acceptance_rate=a["accepted"] / a["answers"] if a["answers"] else None,
            accepted_score=mean, evidence=n, evidence_user=a["user"],
            evidence_shadow=a["shadow"], runs=len(a["costs"]),
            cost_per_run=sum(a["costs"]) / len(a["costs"]) if a["costs"] else None,
            shadow_cost_usd=a["shadow_cost"], target=target,
            flagged=bool(target is not None and mean is not None and n >= min_evidence
                         and mean < target),
        ))
    return out


def scan_report(ledger: Ledger, *, since: float | None = None) -> dict[str, Any]:
    """The report as the base code read it: every step and run row."""
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
        **scan_savings(ledger, tasks, where, args),
        "tasks": tasks,
    }


_SCORELESS = {"feedback_mean": None, "feedback_count": 0, "shadow_agreement": None,
              "shadow_count": 0}


def _money(runs: list[Any]) -> dict[str, Any]:
    priced = [r for r in runs if r["top_usd"] is not None]
    top = sum(float(r["top_usd"]) for r in priced)
    saved = top - sum(float(r["cost_usd"]) for r in priced)
    return {"top_usd": top, "saved_usd": saved, "saved_share": saved / top if top else None,
            "priced_runs": len(priced)}


def _scores(feedback: list[Any]) -> dict[str, Any]:
    user = [float(f["score"]) for f in feedback if f["source"] == "user"]
    shadow = [float(f["score"]) for f in feedback if f["source"] == "shadow:agreement"]
    return {"feedback_mean": sum(user) / len(user) if user else None,
            "feedback_count": len(user),
            "shadow_agreement": sum(shadow) / len(shadow) if shadow else None,
            "shadow_count": len(shadow)}


def scan_savings(
    ledger: Ledger, tasks: dict[str, dict[str, Any]], where: str, args: tuple[Any, ...]
) -> dict[str, Any]:
    """The savings and quality fields of the report, from every run and feedback row (and
    the shadow steps), in Python: an oracle for the rollup's top_* sums and the SQL."""
    runs = ledger.query(f"SELECT * FROM runs {where}", args)
    feedback = ledger.query("SELECT f.*, r.task AS task, r.model AS model, r.key_name AS"
                            f" key_name FROM feedback f JOIN runs r ON r.run_id = f.run_id"
                            f" {where.replace('ts', 'r.ts')}", args)
    shadows = ledger.query("SELECT run_id, step, cost_usd FROM steps WHERE decision = 'shadow'")
    for name, task in tasks.items():
        mine = [r for r in runs if r["task"] == name]
        task.update(_money(mine), top_exact_runs=sum(
            1 for r in mine if r["top_usd"] is not None and r["top_estimated"] == 0))
        del task["priced_runs"]
        task["priced_runs"] = _money(mine)["priced_runs"]
        task.update(_scores([f for f in feedback if f["task"] == name]))
        labelled = {f["run_id"] for f in feedback if f["source"] == "shadow:agreement"
                    and f["task"] == name}
        last: dict[str, Any] = {}
        for s in shadows:
            if s["run_id"] in labelled and (s["run_id"] not in last
                                            or s["step"] > last[s["run_id"]]["step"]):
                last[s["run_id"]] = s
        measured = [r for r in mine if r["run_id"] in last]
        if measured:
            exact = sum(float(last[r["run_id"]]["cost_usd"]) for r in measured)
            cost = sum(float(r["cost_usd"]) for r in measured)
            estimate = _money(measured)
            task["shadowed"] = {
                "runs": len(measured), "top_usd": exact, "saved_usd": exact - cost,
                "saved_share": (exact - cost) / exact if exact else None,
                "estimated_top_usd": estimate["top_usd"],
                "estimated_saved_usd": estimate["saved_usd"]}
        else:
            task["shadowed"] = None
        answered = {r["model"] for r in mine if r["model"]}
        for model in sorted(answered | set(task["models"])):
            theirs = [r for r in mine if r["model"] == model]
            entry = task["models"].setdefault(model, {
                "calls": 0, "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0,
                "unfinished": 0, "usage_estimated": 0})
            money = _money(theirs)
            entry.update(answered_runs=len(theirs), accepted_rate=sum(
                1 for r in theirs if r["accepted"]) / len(theirs) if theirs else None,
                priced_runs=money.pop("priced_runs"), **money,
                **_scores([f for f in feedback if f["task"] == name and f["model"] == model]))
        task["models"] = dict(sorted(task["models"].items()))
    keys = {}
    for name in sorted({r["key_name"] for r in runs if r["key_name"] is not None}):
        theirs = [r for r in runs if r["key_name"] == name]
        keys[name] = {"runs": len(theirs), "cost_usd": sum(float(r["cost_usd"]) for r in theirs),
                      "accepted_rate": sum(1 for r in theirs if r["accepted"]) / len(theirs),
                      **_money(theirs),
                      **_scores([f for f in feedback if f["key_name"] == name])}
    return {**_money(runs), "top_exact_runs": sum(
        1 for r in runs if r["top_usd"] is not None and r["top_estimated"] == 0), "keys": keys}
