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

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cascade.ledger.core import Ledger
from cascade.ledger.rollup import fold, read_rollup, week_index, week_label

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
    return week_label(week_index(ts))


def drift_report(
    ledger: Ledger,
    *,
    targets: Mapping[str, float] | None = None,
    min_evidence: int = 1,
    since: float | None = None,
) -> list[DriftRow]:
    """The drift rows of a ledger, sorted by task, rung and week.

    Read from the rollup (``cascade.ledger.rollup``): its size grows with tasks, rungs and
    weeks, not with the steps.

    Args:
        since: Only the weeks from the one holding this Unix time on (whole weeks).
    """
    targets = targets or {}
    fold(ledger)
    rows = read_rollup(ledger, by_week=True, models=False,
                       since_week=None if since is None else week_index(since))
    out = []
    for r in sorted(rows, key=lambda r: (r["task"], r["model"], r["week"])):
        if not (r["answers"] or r["shadow_calls"] or r["runs"]):
            continue  # only runs without an answer, or steps that were not answers
        if r["task"].startswith("__model__") and not r["answers"]:
            continue
        n = r["scores_user"] + r["scores_shadow"]
        mean = r["score_nano"] / 1e9 / n if n else None
        target = targets.get(r["task"])
        out.append(DriftRow(
            task=r["task"], rung=r["model"], week=week_label(r["week"]), answers=r["answers"],
            accepted=r["accepted"],
            acceptance_rate=r["accepted"] / r["answers"] if r["answers"] else None,
            accepted_score=mean, evidence=n, evidence_user=r["scores_user"],
            evidence_shadow=r["scores_shadow"], runs=r["runs"],
            # the run's cost without its shadow calls: the runs row is written before them
            cost_per_run=r["run_nusd"] / 1e9 / r["runs"] if r["runs"] else None,
            shadow_cost_usd=r["shadow_nusd"] / 1e9, target=target,
            flagged=bool(target is not None and mean is not None and n >= min_evidence
                         and mean < target),
        ))
    return out
