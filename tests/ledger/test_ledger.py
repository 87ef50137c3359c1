"""The SQLite ledger: a row per step with attempts and cost, no rows lost under concurrency."""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cascade import Cascade, Ledger, ProviderError
from cascade.ledger.writer import flush_all
from cascade.replay.report import ledger_report
from cascade.testing import FakeProvider, make_completion
from tests.engine.test_engine import config


def build(tmp_path: Path, script: dict[str, list[Any]], **kwargs: Any) -> tuple[Cascade, Path]:
    path = tmp_path / "ledger.sqlite"
    engine = Cascade.from_dict(config(**kwargs), providers={"p": FakeProvider("p", script)},
                               ledger=Ledger(path), sleep=lambda s: None)
    return engine, path


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    flush_all()  # what the ledgers of this process queued for their writer threads
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_row_per_step_with_attempts_and_cost(tmp_path: Path) -> None:
    """Every step, failed ones included, has a row with its attempts, tokens and cost."""
    boom = ProviderError("HTTP 503", provider="p", model="small", status_code=503, retryable=True)
    engine, path = build(tmp_path, {
        "small": [boom],
        "medium": [make_completion("no", input_tokens=100, output_tokens=1)],
        "large": [make_completion("a fine answer", input_tokens=100, output_tokens=3)],
    })
    result = engine.complete("t", "q")
    got = rows(path, "SELECT step, model, provider, attempts, input_tokens, output_tokens, "
                     "cost_usd, decision, error FROM steps ORDER BY step")
    assert got == [
        (1, "small", "p", 2, 0, 0, 0.0, "error", "HTTP 503"),
        (2, "medium", "p", 1, 100, 1, pytest.approx((100 * 3 + 1 * 6) / 1e6), "escalate", None),
        (3, "large", "p", 1, 100, 3, pytest.approx((100 * 10 + 3 * 30) / 1e6), "accept", None),
    ]
    run = rows(path, "SELECT run_id, task, model, accepted, cost_usd, steps FROM runs")
    assert run == [(result.run_id, "t", "large", 1, pytest.approx(result.cost_usd), 3)]


def test_ledger_matches_result_steps(tmp_path: Path) -> None:
    """result.steps and the ledger tell the same story."""
    engine, path = build(tmp_path, {"small": ["no"], "medium": ["a fine answer"]})
    result = engine.complete("t", "q")
    ledger = rows(path, "SELECT model, attempts, cost_usd, decision FROM steps ORDER BY step")
    assert ledger == [(s.model, s.attempts, s.cost_usd, s.decision) for s in result.steps]


def test_verdicts_are_recorded(tmp_path: Path) -> None:
    """Each step's verdicts are stored as JSON."""
    engine, path = build(tmp_path, {"small": ["no"], "medium": ["a fine answer"]})
    engine.complete("t", "q")
    (verdicts,) = rows(path, "SELECT verdicts FROM steps WHERE step = 1")[0]
    assert '"passed": false' in verdicts
    assert "below the minimum 3" in verdicts


def test_failed_run_is_recorded(tmp_path: Path) -> None:
    """A run where every rung failed still leaves its steps and a run row."""
    boom = ProviderError("down", provider="p", model="x", status_code=503)
    engine, path = build(tmp_path, {"small": [boom], "medium": [boom], "large": [boom]})
    with pytest.raises(ProviderError):
        engine.complete("t", "q")
    assert len(rows(path, "SELECT * FROM steps")) == 3
    assert rows(path, "SELECT accepted, status FROM runs") == [(0, "failed")]


def test_wal_mode(tmp_path: Path) -> None:
    """The ledger runs in WAL mode so reports can read while runs write."""
    Ledger(tmp_path / "l.sqlite").close()
    assert rows(tmp_path / "l.sqlite", "PRAGMA journal_mode") == [("wal",)]


def test_threads_lose_no_rows(tmp_path: Path) -> None:
    """200 runs from 8 threads leave exactly 2 steps and 1 run row each."""
    engine, path = build(tmp_path, {"small": ["no"], "medium": ["a fine answer"]})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: engine.complete("t", f"q{i}"), range(200)))
    assert rows(path, "SELECT COUNT(*) FROM steps") == [(400,)]
    assert rows(path, "SELECT COUNT(*) FROM runs") == [(200,)]


def test_asyncio_tasks_lose_no_rows(tmp_path: Path) -> None:
    """300 concurrent acomplete calls leave every row."""
    engine, path = build(tmp_path, {"small": ["no"], "medium": ["a fine answer"]})

    async def main() -> None:
        await asyncio.gather(*(engine.acomplete("t", f"q{i}") for i in range(300)))

    asyncio.run(main())
    assert rows(path, "SELECT COUNT(*) FROM steps") == [(600,)]
    assert rows(path, "SELECT COUNT(DISTINCT run_id) FROM runs") == [(300,)]


def test_report_json_keys_and_numbers(tmp_path: Path) -> None:
    """The report sums cost, counts runs and computes the escalation rate per task and model."""
    engine, path = build(tmp_path, {
        "small": [make_completion("no", input_tokens=10, output_tokens=1),
                  make_completion("a fine answer", input_tokens=10, output_tokens=3)],
        "medium": [make_completion("a fine answer", input_tokens=10, output_tokens=3)],
    })
    engine.complete("t", "q1")  # small rejected -> medium
    engine.complete("t", "q2")  # small accepted
    report = ledger_report(Ledger(path))
    small = (10 * 1 + 1 * 2) / 1e6 + (10 * 1 + 3 * 2) / 1e6
    medium = (10 * 3 + 3 * 6) / 1e6
    assert report["total_cost_usd"] == pytest.approx(small + medium)
    task = report["tasks"]["t"]
    assert task["runs"] == 2
    assert task["escalation_rate"] == 0.5
    assert task["models"]["small"]["calls"] == 2
    assert task["models"]["small"]["cost_usd"] == pytest.approx(small)
    assert task["models"]["medium"] == {
        "calls": 1, "cost_usd": pytest.approx(medium), "input_tokens": 10, "output_tokens": 3,
        "unfinished": 0, "usage_estimated": 0,
        # q1: always-top (large, 10/30 per 1M) is estimated over small's 10 tokens in (the
        # first answer's) and medium's 3 out (the answer returned)
        "answered_runs": 1, "accepted_rate": 1.0, "priced_runs": 1,
        "top_usd": pytest.approx(190 / 1e6), "saved_usd": pytest.approx((190 - 60) / 1e6),
        "saved_share": pytest.approx(130 / 190), "feedback_mean": None, "feedback_count": 0,
        "shadow_agreement": None, "shadow_count": 0}
    # q2, answered by small: 10 tokens in and 3 out at large's prices, against 16 paid
    assert task["models"]["small"]["top_usd"] == pytest.approx(190 / 1e6)
    assert task["models"]["small"]["saved_usd"] == pytest.approx((190 - 16) / 1e6)
    assert (task["priced_runs"], task["top_exact_runs"]) == (2, 0)
    assert task["top_usd"] == pytest.approx(380 / 1e6)
    assert task["saved_usd"] == pytest.approx((380 - 76) / 1e6)
    assert report["saved_share"] == pytest.approx(304 / 380)
    assert rows(path, "SELECT top_estimated FROM runs") == [(1,), (1,)]


def test_old_ledger_gains_usage_estimated_in_place(tmp_path: Path) -> None:
    """A ledger written before issue 10 opens, keeps its rows (usage as reported) and reports."""
    import sqlite3 as sq

    from cascade.replay.report import ledger_report
    from cascade.types import StepRecord

    path = tmp_path / "old.sqlite"
    with sq.connect(path) as db:
        db.executescript(
            "CREATE TABLE steps (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL,"
            " ts REAL NOT NULL, task TEXT NOT NULL, step INTEGER NOT NULL, model TEXT NOT NULL,"
            " provider TEXT NOT NULL, attempts INTEGER NOT NULL, input_tokens INTEGER NOT NULL,"
            " cached_input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL,"
            " cost_usd REAL NOT NULL, latency_ms REAL NOT NULL, decision TEXT NOT NULL,"
            " error TEXT, verdicts TEXT NOT NULL DEFAULT '[]');"
            "INSERT INTO steps (run_id, ts, task, step, model, provider, attempts, input_tokens,"
            " output_tokens, cost_usd, latency_ms, decision) VALUES"
            " ('old', 1, 't', 1, 'm', 'p', 1, 10, 5, 0.5, 1, 'accept');")
    ledger = Ledger(path)
    ledger.record_step(StepRecord("new", "t", 1, "m", "p", 1, 10, 5, 0.25, 1.0, "accept",
                                  usage_estimated=True))
    report = ledger_report(ledger)
    ledger.close()
    assert report["tasks"]["t"]["usage_estimated"] == 1
    assert report["total_cost_usd"] == pytest.approx(0.75)
    with sq.connect(path) as db:
        assert db.execute("SELECT run_id, usage_estimated FROM steps ORDER BY id").fetchall() == [
            ("old", 0), ("new", 1)]
