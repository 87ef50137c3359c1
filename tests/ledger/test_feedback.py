"""Feedback and shadow evaluation, on SQLite and PostgreSQL: what is stored, what is refused."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from cascade import Cascade
from cascade.cli import main
from cascade.engine.shadow import agreement_label
from cascade.errors import FeedbackError
from cascade.ledger.schema import VERSION
from cascade.replay.report import ledger_report
from cascade.testing import FakeProvider
from tests.ledger.ledger_db import Db


def config(db: Db, **task: Any) -> dict[str, Any]:
    return {
        "providers": {"p": {"type": "openai"}},
        "models": {
            "small": {"provider": "p", "name": "small", "price": {"input": 1, "output": 2}},
            "medium": {"provider": "p", "name": "medium", "price": {"input": 3, "output": 4}},
            "large": {"provider": "p", "name": "large", "price": {"input": 10, "output": 20}},
        },
        "ledger": db.section(),
        "logging": {"content": True},
        "tasks": {"t": {"ladder": ["small", "medium", "large"],
                        "evaluators": [{"type": "length", "min_words": 2}], **task}},
    }


def build(db: Db, script: dict[str, list[Any]], **task: Any) -> tuple[Cascade, FakeProvider]:
    fake = FakeProvider("p", script)
    engine = Cascade.from_dict(config(db, **task), providers={"p": fake}, sleep=lambda s: None)
    engine.shadows.rng = random.Random(1)
    return engine, fake


def test_feedback_is_stored_and_bad_feedback_refused(db: Db) -> None:
    engine, _ = build(db, {"small": ["answer is 4"]})
    with engine:
        result = engine.complete("t", "what is 2+2?")
        row = engine.feedback(result.run_id, 0.25, "close")
        assert (row.run_id, row.score, row.comment, row.source) == (
            result.run_id, 0.25, "close", "user")
        for score in (1.5, -0.1, math.nan, True, "0.5", None):
            with pytest.raises(FeedbackError) as info:
                engine.feedback(result.run_id, score)  # type: ignore[arg-type]
            assert info.value.param == "score"
        with pytest.raises(FeedbackError, match="unknown run id 'nope'") as info:
            engine.feedback("nope", 1.0)
        assert info.value.param == "run_id"
    assert db.rows("SELECT run_id, score, comment, source FROM feedback") == [
        (result.run_id, 0.25, "close", "user")]
    assert db.rows("SELECT version FROM schema_version") == [(VERSION,)]


def test_content_rows_only_when_content_is_logged(db: Db) -> None:
    engine, _ = build(db, {"small": ["no"], "medium": ["a fine answer"]})
    with engine:
        logged = engine.complete("t", "hello there")
        quiet = engine.complete("t", "hello again", log_content=False)
    rows = db.rows("SELECT run_id, step, kind, model, model_name, text FROM content"
                   " ORDER BY run_id, step")
    assert {r[0] for r in rows} == {logged.run_id}
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        (0, "prompt", None, None), (1, "answer", "small", "small"),
        (2, "answer", "medium", "medium")]
    assert quiet.run_id not in {r[0] for r in rows}


def test_upgrade_from_schema_3_keeps_rows(db: Db) -> None:
    """A schema-3 ledger (no feedback, content or task_probability) is upgraded in place."""
    engine, _ = build(db, {"small": ["answer is 4"]})
    with engine:
        run_id = engine.complete("t", "q").run_id
    db.drop_rollup()  # schema 5's triggers read the feedback table
    db.execute("DROP TABLE feedback")
    db.execute("DROP TABLE content")
    db.execute("ALTER TABLE runs DROP COLUMN task_probability")
    db.execute("UPDATE schema_version SET version = 3")
    ledger = db.open()
    try:
        assert ledger.schema_before == 3
        assert db.rows("SELECT version FROM schema_version") == [(VERSION,)]
        assert db.rows("SELECT run_id, task_probability FROM runs") == [(run_id, None)]
    finally:
        ledger.close()
    engine, _ = build(db, {"small": ["answer is 4"]})
    with engine:
        engine.feedback(run_id, 1.0)


def test_cli_feedback(db: Db, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    if db.backend != "sqlite":
        pytest.skip("the CLI's --ledger is a SQLite file (PostgreSQL: --url-env)")
    engine, _ = build(db, {"small": ["answer is 4"]})
    with engine:
        run_id = engine.complete("t", "q").run_id
    assert main(["feedback", run_id, "1", "--ledger", str(db.path), "--comment", "ok"]) == 0
    assert "feedback 1 stored" in capsys.readouterr().out
    assert main(["feedback", run_id, "2", "--ledger", str(db.path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: score: must be in [0, 1] (got 2.0)"
    assert main(["feedback", "missing", "0.5", "--ledger", str(db.path)]) == 2
    assert "unknown run id 'missing'" in capsys.readouterr().err
    assert main(["feedback", run_id, "high", "--ledger", str(db.path)]) == 2
    assert db.rows("SELECT COUNT(*) FROM feedback") == [(1,)]


def test_shadow_calls_the_rungs_above_and_labels_the_answer(db: Db) -> None:
    engine, fake = build(db, {"small": ["the answer is 5"], "medium": ["I get 4 overall"],
                              "large": ["It is 4."]}, shadow_rate=1.0)
    with engine:
        result = engine.complete("t", "what is 2+2?")
        engine.shadows.wait()
        report = ledger_report(engine.ledger)  # type: ignore[arg-type]
    assert result.model == "small" and len(result.steps) == 1
    assert [c["model"] for c in fake.calls] == ["small", "medium", "large"]
    steps = db.rows("SELECT step, model, decision, status, cost_usd FROM steps ORDER BY step")
    assert [s[:4] for s in steps] == [(1, "small", "accept", "settled"),
                                      (2, "medium", "shadow", "settled"),
                                      (3, "large", "shadow", "settled")]
    # The run's cost is its own; the shadow cost is in the ledger and reported apart.
    (run_cost,) = db.rows("SELECT cost_usd FROM runs")[0]
    assert run_cost == pytest.approx(result.cost_usd) == pytest.approx(steps[0][4])
    assert report["tasks"]["t"]["shadow_calls"] == 2
    assert report["tasks"]["t"]["shadow_cost_usd"] == pytest.approx(steps[1][4] + steps[2][4])
    assert db.rows("SELECT score, source FROM feedback") == [(0.0, "shadow:agreement")]
    answers = db.rows("SELECT model FROM content WHERE kind = 'answer' ORDER BY step")
    assert answers == [("small",), ("medium",), ("large",)]


def test_no_shadow_when_off_unaccepted_or_at_the_top(db: Db) -> None:
    engine, fake = build(db, {"small": ["x"], "medium": ["y"], "large": ["z"]},
                         shadow_rate=1.0)
    with engine:
        engine.complete("t", "q")  # nothing accepted: no shadow
        engine.shadows.wait()
    assert "shadow" not in {r[0] for r in db.rows("SELECT decision FROM steps")}
    engine, fake = build(db, {"small": ["a fine answer"]}, shadow_rate=0.0)
    with engine:
        engine.complete("t", "q")
        engine.shadows.wait()
    assert [c["model"] for c in fake.calls] == ["small"]


def test_shadow_respects_budgets(db: Db) -> None:
    engine, fake = build(db, {"small": ["a fine answer"], "medium": ["a fine answer"]},
                         shadow_rate=1.0, budgets={"daily_usd": 0.00004})
    with engine:
        engine.complete("t", "q", max_tokens=10)
        engine.shadows.wait()
    assert [c["model"] for c in fake.calls] == ["small"]
    rows = db.rows("SELECT model, decision, cost_usd, error FROM steps ORDER BY step")
    assert rows[1][:3] == ("medium", "shadow", 0.0) and "budget" in rows[1][3]


def test_shadow_rate_samples(db: Db) -> None:
    if db.backend != "sqlite":
        pytest.skip("sampling does not depend on the backend")
    engine, fake = build(db, {"small": ["a fine answer"], "medium": ["a fine answer"],
                              "large": ["a fine answer"]}, shadow_rate=0.25)
    with engine:
        for _ in range(200):
            engine.complete("t", "q")
        engine.shadows.wait()
    shadowed = db.rows("SELECT COUNT(DISTINCT run_id) FROM steps WHERE decision = 'shadow'")
    assert 30 <= shadowed[0][0] <= 70


def test_agreement_label() -> None:
    assert agreement_label("so the total is 1,200.", "Answer: 1200") == 1.0
    assert agreement_label("so the total is 1,201.", "Answer: 1200") == 0.0
    assert agreement_label("Paris", " paris. ") == 1.0
    assert agreement_label("Paris", "Lyon") == 0.0
