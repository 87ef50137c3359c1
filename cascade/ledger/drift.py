"""``cascade report --drift``: is the cascade still as good as when it was calibrated?

Per task, rung (the ``models:`` key) and ISO week (UTC) of the run:

- ``acceptance_rate``: the share of this rung's answers that were accepted (accepted over
  accepted plus rejected; shadow calls, skips and errors are not answers of the ladder);
- ``accepted_score``: the mean score of the answers this rung returned and accepted, from
  feedback: a user's score when there is one, else the shadow label (``evidence`` counts them,
  ``evidence_user`` and ``evidence_shadow`` split them);
- ``cost_per_run``: the mean cost of the runs this rung answered (shadow calls excluded);
  ``shadow_cost_usd``: what this rung's shadow calls cost that week.

A week is ``flagged`` when its ``accepted_score`` is below the task's calibrated target
(``tasks.T.quality_target``, or ``--target``) with at least ``min_evidence`` scores behind it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from cascade.ledger import Ledger

__all__ = ["DriftRow", "drift_report", "week_of"]


@dataclass(frozen=True, slots=True)
class DriftRow:
    task: str
    rung: str
    week: str
    answers: int
    accepted: int
    acceptance_rate: float | None
    accepted_score: float | None
    evidence: int
    evidence_user: int
    evidence_shadow: int
    runs: int
    cost_per_run: float | None
    shadow_cost_usd: float
    target: float | None
    flagged: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def week_of(ts: float) -> str:
    """The ISO week of a Unix time, in UTC: ``2026-W49``."""
    year, week, _ = datetime.fromtimestamp(ts, tz=timezone.utc).isocalendar()
    return f"{year}-W{week:02d}"


def drift_report(
    ledger: Ledger,
    *,
    targets: Mapping[str, float] | None = None,
    min_evidence: int = 1,
    since: float | None = None,
) -> list[DriftRow]:
    """The drift rows of a ledger, sorted by task, rung and week."""
    targets = targets or {}
    where, args = ("WHERE ts >= ?", (since,)) if since is not None else ("", ())
    acc: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"answers": 0, "accepted": 0, "scores": [], "user": 0, "shadow": 0,
                 "costs": [], "shadow_cost": 0.0})
    for row in ledger.query(
        f"SELECT task, model, ts, decision, cost_usd FROM steps {where}", args
    ):
        key = (str(row["task"]), str(row["model"]), week_of(float(row["ts"])))
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
        key = (str(row["task"]), str(row["model"]), week_of(float(row["ts"])))
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
