"""The ledger's rollup: per task, model and week, what ``cascade report`` and the drift gauges sum.

Reading those sums from the steps was a scan of the whole ledger (22-40 s per ``/metrics`` scrape
at 1.2M rows). Instead, database triggers turn every change of a ``steps``, ``runs`` or
``feedback`` row into a delta row of ``rollup_log``, in the same transaction as the change, so
no write path (the engine's, a recovery, an import) can leave the rollup behind. ``fold`` moves
the log into ``rollup`` (one row per task, model and ISO week); a read adds ``rollup`` and what
is still in the log. Both are small: their size grows with tasks x models x weeks, not steps.

The log is append-only, so the triggers take no lock that another transaction holds:
concurrent writers on PostgreSQL (workers, replicas) cannot deadlock over a hot rollup row,
and a reservation adds nothing at all (a ``pending`` step is not in the rollup; readers count
the few pending rows from their partial index).

What the columns count, per ``(task, model, week)``:

- of the steps that are not ``pending``, by the step's task, model and time: ``steps``,
  ``calls`` (not ``skip``/``cache``), ``answers`` (``accept``/``escalate``), ``accepted``,
  ``errors``, ``shadow_calls``, ``shadow_nusd``, ``cost_nusd``, ``input_tokens``,
  ``output_tokens``, ``estimated`` (``usage_estimated``), ``unfinished`` (``lost``);
  ``step_runs`` and ``escalated_runs`` count each (run, task) once, at its first such step, so
  added up over weeks they give ``COUNT(DISTINCT run_id)`` (a run is counted in the week of its
  first step);
- of the runs, by the run's task, model (``''`` when it returned no answer) and time: ``runs``,
  ``runs_accepted``, ``run_nusd``; and for accepted runs with a model, their score
  (``score_nano``, ``scores_user``, ``scores_shadow``): the latest user feedback, else the
  latest shadow label.

Money and scores are integer nano-units (as in ``totals``), so deltas add up exactly.
Weeks are numbered from Monday 1969-12-29 UTC (``week_index``); ``week_label`` names them.
There are no DELETE triggers: the ledger never deletes a step, run or feedback row (deleting
one by hand leaves its sums in the rollup). A step's run, task, model and time never change.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from cascade.errors import LedgerError
from cascade.ledger.backends import DEADLINE
from cascade.ledger.core import Ledger
from cascade.ledger.triggers import KEY, METRICS, MONDAY_S, WEEK_S, RollupSql

__all__ = ["fold", "read_rollup", "week_index", "week_label"]

# Folded in chunks, so one fold never holds SQLite's write lock for long.
FOLD_CHUNK = 20_000


def week_index(ts: float) -> int:
    """The week of a Unix time: the same number the triggers compute in SQL."""
    return math.floor((ts + MONDAY_S) / WEEK_S)


def week_label(index: int) -> str:
    """The ISO week (UTC) of a week index: ``2026-W49``."""
    middle = index * WEEK_S - MONDAY_S + WEEK_S // 2
    year, week, _ = datetime.fromtimestamp(middle, tz=timezone.utc).isocalendar()
    return f"{year}-W{week:02d}"


def fold(ledger: Ledger, *, wait: bool = False) -> int:
    """Move the log's rows into ``rollup``, in chunks; returns how many were folded.

    Args:
        wait: Wait for the database's locks like any write. By default a fold that cannot start
            at once (SQLite: another process or thread holds the lock) folds nothing: readers
            add the log anyway, so a skipped fold costs a little reading, never a number.

    Raises:
        LedgerError: the fold failed for another reason than a busy lock.
    """
    sums = ", ".join(f"SUM({c})" for c in METRICS)
    names = ", ".join(METRICS)
    upsert = RollupSql(ledger.backend.name).upsert(METRICS)
    folded = 0
    while True:
        # A deadline already passed: SQLite tries the lock once and never waits.
        token = None if wait else DEADLINE.set(-math.inf)
        try:
            with ledger.backend.transaction() as tx:
                if ledger.backend.name == "sqlite":
                    rows = tx.execute("SELECT MIN(id) AS lo, MAX(id) AS hi FROM rollup_log")
                    if rows[0]["lo"] is None:
                        return folded
                    upto = min(int(rows[0]["hi"]), int(rows[0]["lo"]) + FOLD_CHUNK - 1)
                    tx.execute(f"INSERT INTO rollup ({KEY}, {names}) SELECT {KEY}, {sums}"
                               f" FROM rollup_log WHERE id <= ? GROUP BY 1, 2, 3{upsert}", (upto,))
                    count = tx.rowcount("DELETE FROM rollup_log WHERE id <= ?", (upto,))
                else:
                    # One statement: exactly the rows deleted are added, even while other
                    # transactions append (ids are not committed in order) or fold too.
                    rows = tx.execute(
                        "WITH gone AS (DELETE FROM rollup_log WHERE id IN (SELECT id FROM"
                        " rollup_log ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED) RETURNING *),"
                        f" added AS (INSERT INTO rollup ({KEY}, {names}) SELECT {KEY}, {sums}"
                        f" FROM gone GROUP BY 1, 2, 3 ORDER BY 1, 2, 3{upsert})"
                        " SELECT COUNT(*) AS n FROM gone", (FOLD_CHUNK,))
                    count = int(rows[0]["n"])
        except LedgerError as exc:
            if wait or "locked" not in str(exc):
                raise
            return folded
        finally:
            if token is not None:
                DEADLINE.reset(token)
        folded += count
        if count < FOLD_CHUNK:
            return folded


def read_rollup(
    ledger: Ledger, *, by_week: bool, since_week: int | None = None, models: bool = True
) -> list[dict[str, Any]]:
    """The rollup's sums (folded rows plus the log), per task and model, and week if asked.

    Args:
        by_week: Group by week too (``week`` in each row), else add the weeks up.
        since_week: Only the weeks from this ``week_index`` on.
        models: Leave out rows of runs that returned no answer (model ``''``) if False.
    """
    where = " WHERE week >= ?" if since_week is not None else ""
    args: tuple[Any, ...] = (since_week, since_week) if since_week is not None else ()
    key = KEY if by_week else "task, model"
    names = ", ".join(METRICS)
    rows = ledger.query(
        f"SELECT {key}, " + ", ".join(f"SUM({c}) AS {c}" for c in METRICS)
        + f" FROM (SELECT {KEY}, {names} FROM rollup{where} UNION ALL"
        f" SELECT {KEY}, {names} FROM rollup_log{where}) u GROUP BY {key} ORDER BY {key}",
        args,
    )
    out = []
    for row in rows:
        if not models and row["model"] == "":
            continue
        item: dict[str, Any] = {"task": str(row["task"]), "model": str(row["model"])}
        if by_week:
            item["week"] = int(row["week"])
        item.update({c: int(row[c] or 0) for c in METRICS})
        out.append(item)
    return out
