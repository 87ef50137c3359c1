"""The rollup (issue 22, item 8): ``cascade report`` and ``report --drift`` read sums kept by
triggers as rows are written, and give the numbers a scan of every row gave (the base code,
``tests/ledger/scan_oracle.py``), on SQLite and PostgreSQL, for random ledgers written the ways
the ledger writes (pending rows settled or lost, free steps, runs replaced, feedback in any
order), folded or not; an upgrade from schema 4 fills the rollup from the rows already there.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from typing import Any

import pytest

from cascade.ledger import Ledger, nano
from cascade.ledger.drift import DriftRow, drift_report, week_of
from cascade.ledger.rollup import fold, read_rollup, week_index
from cascade.ledger.schema import VERSION
from cascade.ledger.triggers import MONDAY_S, WEEK_S, RollupSql
from cascade.replay.report import ledger_report
from tests.ledger.ledger_db import Db
from tests.ledger.scan_oracle import scan_drift, scan_report

T0 = 1_795_000_000.0
DECISIONS = ["accept", "escalate", "error", "shadow", "skip", "cache"]
TARGETS = {"faq": 0.7, "code": 0.5, "__model__mini": 0.6}


def _step_sql(ledger: Ledger, status: str) -> str:
    return ("INSERT INTO steps (run_id, ts, task, step, model, provider, attempts, input_tokens,"
            " cached_input_tokens, output_tokens, cost_usd, latency_ms, decision, error,"
            " verdicts, status, reserved_usd, owner, usage_estimated)"
            f" VALUES (?,?,?,?,?,'p',?,?,0,?,?,1,?,NULL,'[]','{status}',?,?,?)")


def write_random_ledger(ledger: Ledger, rng: random.Random, runs: int = 150,
                        folds: bool = True) -> None:
    """Runs of a few weeks, written in the shapes the ledger writes them."""
    backend = ledger.backend
    run_ids = []
    for i in range(runs):
        task = rng.choice(["faq", "code", "__model__mini", "__model__big"])
        # a run's rows stay within its week (a report from a week on cuts no run in two)
        week = rng.randrange(5)
        start = T0 - (T0 + MONDAY_S) % WEEK_S + week * WEEK_S + rng.uniform(3600, WEEK_S - 7200)
        run_id = f"run-{i}"
        run_ids.append((run_id, task, start))
        with backend.transaction() as tx:
            for n in range(rng.randint(1, 4)):
                ts = start + n * rng.uniform(0.1, 60)
                model = rng.choice(["mini", "big", "huge"])
                decision = rng.choice(DECISIONS)
                cost = rng.choice([0.0, rng.uniform(0, 0.02), 1e-9 * rng.randint(1, 9)])
                if decision in ("skip", "cache") or rng.random() < 0.2:  # written settled
                    tx.execute(_step_sql(ledger, "settled"), (
                        run_id, ts, task, n + 1, model, 1, rng.randint(0, 500),
                        rng.randint(0, 300), cost, decision, 0, None, rng.randint(0, 1)))
                    continue
                reserved = cost + rng.uniform(0, 0.01)
                rows = tx.execute(_step_sql(ledger, "pending") + " RETURNING id", (
                    run_id, ts, task, n + 1, model, 0, 0, 0, reserved, "pending", reserved,
                    "owner-x", 0))
                fate = rng.random()
                if fate < 0.7:  # settled
                    tx.execute(
                        "UPDATE steps SET attempts = 1, input_tokens = ?, output_tokens = ?,"
                        " cost_usd = ?, decision = ?, usage_estimated = ?, status = 'settled'"
                        " WHERE id = ? AND status = 'pending'",
                        (rng.randint(0, 500), rng.randint(0, 300), cost, decision,
                         rng.randint(0, 1), rows[0]["id"]))
                    if rng.random() < 0.1:  # a settled row corrected by hand afterwards
                        tx.execute("UPDATE steps SET cost_usd = ?, decision = ? WHERE id = ?",
                                   (rng.uniform(0, 0.02), rng.choice(DECISIONS), rows[0]["id"]))
                elif fate < 0.85:  # lost (a recovery, or a cancelled call)
                    tx.execute("UPDATE steps SET status = 'lost', decision = 'lost', error = 'x'"
                               " WHERE id = ? AND status = 'pending'", (rows[0]["id"],))
                # else still pending
            if rng.random() < 0.9:
                _write_run(tx, rng, run_id, task, start)
        if folds and rng.random() < 0.05:
            fold(ledger, wait=True)
    for _ in range(2 * runs):  # feedback in any order: users, shadows, older and newer times
        run_id, task, start = rng.choice(run_ids)
        with backend.transaction() as tx:
            tx.execute("INSERT INTO feedback (run_id, ts, score, comment, source)"
                       " VALUES (?,?,?,NULL,?)",
                       (run_id, start + rng.uniform(-100, 10_000), rng.random(),
                        rng.choice(["user", "shadow:agreement", "shadow:agreement"])))
            if rng.random() < 0.1:  # the run's row written again (a retried write)
                _write_run(tx, rng, run_id, task, start)
        if folds and rng.random() < 0.05:
            fold(ledger, wait=True)


def _write_run(tx: Any, rng: random.Random, run_id: str, task: str, start: float) -> None:
    top = rng.choice([None, rng.uniform(0, 0.08)])  # always-top's cost (None: nothing priced)
    tx.execute(
        "INSERT INTO runs (run_id, ts, task, model, accepted, cost_usd, latency_ms, steps,"
        " status, top_usd, top_estimated, key_name) VALUES (?,?,?,?,?,?,1,1,'ok',?,?,?)"
        " ON CONFLICT (run_id) DO UPDATE SET model = excluded.model,"
        " accepted = excluded.accepted, cost_usd = excluded.cost_usd,"
        " top_usd = excluded.top_usd, top_estimated = excluded.top_estimated",
        (run_id, start + 1, task, rng.choice(["mini", "big", None]), rng.randint(0, 1),
         rng.uniform(0, 0.05), top, None if top is None else rng.randint(0, 1),
         rng.choice([None, "team-a", "team-b"])))


def assert_drift_equal(got: list[DriftRow], want: list[DriftRow]) -> None:
    assert [(r.task, r.rung, r.week) for r in got] == [(r.task, r.rung, r.week) for r in want]
    for a, b in zip(got, want, strict=True):
        for field in ("answers", "accepted", "evidence", "evidence_user", "evidence_shadow",
                      "runs", "target", "flagged", "acceptance_rate"):
            assert getattr(a, field) == getattr(b, field), (a, b, field)
        # money and scores are summed in nano-units: at most half a unit off per row
        for field, rows in (("accepted_score", a.evidence), ("cost_per_run", 1),
                            ("shadow_cost_usd", a.answers + 5)):
            x, y = getattr(a, field), getattr(b, field)
            assert (x is None) == (y is None), (a, b, field)
            if x is not None:
                assert x == pytest.approx(y, abs=1e-9 * max(rows, 1)), (a, b, field)


def _close(got: dict[str, Any], field: str, want: Any) -> bool:
    """``got[field]`` is ``want``, to the nano-dollar rounding of the sums; a share of a
    figure made of nano-dollars (the random costs include some) is compared as its amount."""
    if field == "saved_share" and want is not None:
        return bool(got[field] * got["top_usd"] == pytest.approx(want * got["top_usd"], abs=1e-6))
    return bool(got[field] == pytest.approx(want, abs=1e-6))


def assert_report_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["runs"] == want["runs"]
    assert got["unfinished"] == want["unfinished"]
    assert got["total_cost_usd"] == pytest.approx(want["total_cost_usd"], abs=1e-6)
    for key in ("top_usd", "saved_usd", "saved_share", "priced_runs", "top_exact_runs"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert got["keys"].keys() == want["keys"].keys()
    for name, sums in want["keys"].items():
        for field, number in sums.items():
            if number is None:
                assert got["keys"][name][field] is None, (name, field)
            else:
                assert _close(got["keys"][name], field, number), (name, field)
    assert got["tasks"].keys() == want["tasks"].keys()
    for name, task in want["tasks"].items():
        mine = got["tasks"][name]
        assert mine.keys() == task.keys()
        for key, value in task.items():
            if key == "models":
                assert mine["models"].keys() == value.keys()
                for model, sums in value.items():
                    for field, number in sums.items():
                        assert _close(mine["models"][model], field, number), (
                            name, model, field)
            elif key == "shadowed":
                assert (mine[key] is None) == (value is None), name
                for field, number in (value or {}).items():
                    assert _close(mine[key], field, number), (name, field)
            elif value is None:
                assert mine[key] is None, (name, key)
            else:
                assert _close(mine, key, value), (name, key)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reports_equal_a_scan_of_every_row(db: Db, seed: int) -> None:
    """On a random ledger, folded now and then while written, ``cascade report`` and
    ``report --drift`` (all weeks, and from a week on) give the numbers of a full scan."""
    ledger = db.open()
    try:
        write_random_ledger(ledger, random.Random(seed))
        since = T0 + 2 * WEEK_S
        start = week_index(since) * WEEK_S - MONDAY_S  # the rollup keeps whole weeks
        for min_evidence in (1, 3):
            assert_drift_equal(
                drift_report(ledger, targets=TARGETS, min_evidence=min_evidence),
                scan_drift(ledger, targets=TARGETS, min_evidence=min_evidence))
        assert_drift_equal(drift_report(ledger, targets=TARGETS, since=since),
                           scan_drift(ledger, targets=TARGETS, since=start))
        assert_report_equal(ledger_report(ledger), scan_report(ledger))
        assert_report_equal(ledger_report(ledger, since=since), scan_report(ledger, since=start))
    finally:
        ledger.close()


def test_upgrade_from_schema_4_fills_the_rollup(db: Db) -> None:
    """A schema-4 ledger (no rollup) is upgraded in place: the rollup is filled from the rows
    already there, and the reports give the numbers of a full scan before and after more rows
    are written."""
    ledger = db.open()
    try:
        write_random_ledger(ledger, random.Random(7), folds=False)
    finally:
        ledger.close()
    db.drop_rollup()
    ledger = db.open(recover=False)  # the rows left pending stay pending
    try:
        assert ledger.schema_before == 4
        assert db.rows("SELECT version FROM schema_version") == [(VERSION,)]
        assert db.rows("SELECT COUNT(*) FROM rollup_log") == [(0,)]
        assert_drift_equal(drift_report(ledger, targets=TARGETS),
                           scan_drift(ledger, targets=TARGETS))
        assert_report_equal(ledger_report(ledger), scan_report(ledger))
        write_random_ledger(ledger, random.Random(8), runs=40)
        assert_drift_equal(drift_report(ledger, targets=TARGETS),
                           scan_drift(ledger, targets=TARGETS))
        assert_report_equal(ledger_report(ledger), scan_report(ledger))
    finally:
        ledger.close()


def test_a_fold_moves_the_log_in_chunks_and_changes_no_number(
        db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    """Folding empties the log into the rollup, chunk by chunk; the reports read the same before
    and after, and the money is the steps' costs rounded to the nano-dollar, exactly."""
    ledger = db.open()
    try:
        write_random_ledger(ledger, random.Random(5), runs=60, folds=False)
        ((logged,),) = db.rows("SELECT COUNT(*) FROM rollup_log")
        unfolded = read_rollup(ledger, by_week=True)  # the rollup's rows plus the log
        monkeypatch.setattr("cascade.ledger.rollup.FOLD_CHUNK", 7)
        assert fold(ledger, wait=True) == logged > 7
        assert db.rows("SELECT COUNT(*) FROM rollup_log") == [(0,)]
        assert sorted(read_rollup(ledger, by_week=True), key=str) == sorted(unfolded, key=str)
        costs = db.rows("SELECT cost_usd FROM steps WHERE status <> 'pending'")
        assert sum(r["cost_nusd"] for r in read_rollup(ledger, by_week=False)) == sum(
            nano(cost) for (cost,) in costs)
    finally:
        ledger.close()


def test_week_of_matches_the_iso_calendar() -> None:
    """The week numbering the triggers use names the ISO week of the time, around the epoch's
    Thursday, year ends and week boundaries."""
    for ts in (T0, 0.0, 1_767_225_599.0, 1_767_225_600.0, 1_798_761_600.0,
               *(T0 + k * 86400 + 0.5 for k in range(14))):
        year, week, _ = datetime.fromtimestamp(ts, tz=timezone.utc).isocalendar()
        assert week_of(ts) == f"{year}-W{week:02d}", ts
    assert week_index(T0 + WEEK_S) == week_index(T0) + 1


def test_a_settlement_finds_its_runs_steps_through_their_index(db: Db) -> None:
    """The trigger's look-up of a run's other steps uses ``steps_run``, never every step of the
    task through ``steps_task_ts`` (which a planner without statistics picked: its cost grew
    with the ledger at every settlement); the plan is read, on both backends."""
    ledger = db.open()
    try:
        lookup = RollupSql(db.backend).sibling("x")
        if db.backend == "sqlite":
            plan = " ".join(str(r["detail"]) for r in ledger.query(
                f"EXPLAIN QUERY PLAN SELECT {lookup} FROM (SELECT 'r' AS run_id, 't' AS task,"
                " 1 AS id) x"))
        else:
            sql = (lookup.replace("x.run_id", "$1").replace("x.task", "$2")
                   .replace("x.id", "$3"))
            with ledger.backend.transaction() as tx:
                tx.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                tx.execute(f"PREPARE lookup (text, text, bigint) AS SELECT {sql}")
                plan = " ".join(str(next(iter(r.values()))) for r in tx.execute(
                    "EXPLAIN EXECUTE lookup ('r', 't', 1)"))
                tx.execute("DEALLOCATE lookup")
    finally:
        ledger.close()
    assert "steps_run" in plan
    assert "steps_task_ts" not in plan
