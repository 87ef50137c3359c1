"""``cascade data export --from-ledger`` and ``cascade report --drift``."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from cascade import Cascade
from cascade.cli import main
from cascade.ledger.drift import drift_report, week_of
from cascade.ledger.feedback import add_feedback
from cascade.providers.dataset import iter_dataset
from cascade.testing import FakeProvider
from tests.ledger.ledger_db import Db

WEEK = 7 * 86400
T0 = 1_795_000_000.0  # a Monday-ish fixed time, so the weeks are fixed


def config(db: Db, **task: Any) -> dict[str, Any]:
    return {
        "providers": {"p": {"type": "openai"}},
        "models": {
            "small": {"provider": "p", "name": "small-v1", "price": {"input": 1, "output": 2}},
            "large": {"provider": "p", "name": "large-v1", "price": {"input": 10, "output": 20}},
        },
        "ledger": db.section(),
        "logging": {"content": True},
        "tasks": {"t": {"ladder": ["small", "large"],
                        "evaluators": [{"type": "length", "min_words": 2}], **task}},
    }


def test_export_scores_and_their_sources(db: Db, tmp_path: Path) -> None:
    fake = FakeProvider("p", {"small-v1": ["4", "the answer is 7", "the answer is 9", "yes it is"],
                              "large-v1": ["the answer is 4", "answer: 7"]})
    engine = Cascade.from_dict(config(db, shadow_rate=1.0), providers={"p": fake})
    engine.shadows.rng = random.Random(0)
    with engine:
        escalated = engine.complete("t", "2+2?")           # small "4" rejected, large accepts
        shadowed = engine.complete("t", "3+4?")            # small accepted; shadow large agrees
        engine.shadows.wait()
        rated = engine.complete("t", "4+5?", log_content=True)  # shadow large "answer: 7"
        engine.shadows.wait()
        engine.feedback(rated.run_id, 0.5, "half right")
        engine.complete("t", "not logged", log_content=False)
    ledger = db.open()
    try:
        from cascade.replay.export import export_ledger

        out = tmp_path / "out.jsonl"
        summary = export_ledger(ledger, out)
    finally:
        ledger.close()
    records = {r.id: r for r in iter_dataset(out)}  # the replay format, validated
    assert set(records) == {escalated.run_id, shadowed.run_id, rated.run_id}
    assert summary.runs_with_content == 3
    esc = records[escalated.run_id]
    assert esc.task == "t" and esc.messages[0].content == "2+2?"
    assert {k: v.score for k, v in esc.responses.items()} == {"small-v1": 1.0, "large-v1": 1.0}
    assert esc.meta["score_sources"] == {"small-v1": "agreement:large", "large-v1": "reference"}
    assert esc.responses["small-v1"].cost_usd is not None
    sh = records[shadowed.run_id]
    assert sh.meta["score_sources"] == {"small-v1": "shadow:agreement", "large-v1": "reference"}
    assert sh.responses["small-v1"].score == 1.0
    fb = records[rated.run_id]
    assert fb.meta["score_sources"]["small-v1"] == "feedback"
    assert fb.responses["small-v1"].score == 0.5
    assert fb.meta["score_sources"]["large-v1"] == "reference"  # the user rated small's answer
    assert fb.responses["large-v1"].score == 1.0
    # --task and --since filter; a file with nothing to export says why.
    if db.backend == "sqlite":
        assert main(["data", "export", "--from-ledger", str(db.path), "--task", "other",
                     str(tmp_path / "none.jsonl")]) == 0
        assert (tmp_path / "none.jsonl").read_text() == ""
        assert main(["data", "export", "--from-ledger", str(db.path), "--since", "2999-01-01",
                     str(tmp_path / "late.jsonl")]) == 0
        assert (tmp_path / "late.jsonl").read_text() == ""
        assert main(["data", "export", "--from-ledger", str(db.path), "--since", "yesterday",
                     str(tmp_path / "x.jsonl")]) == 2


def test_single_answer_without_feedback_is_not_exported(db: Db, tmp_path: Path) -> None:
    fake = FakeProvider("p", {"small-v1": ["the answer is 4"]})
    with Cascade.from_dict(config(db), providers={"p": fake}) as engine:
        engine.complete("t", "2+2?")
        ledger = engine.ledger
        assert ledger is not None
        from cascade.replay.export import export_ledger

        summary = export_ledger(ledger, tmp_path / "out.jsonl")
    assert (summary.written, summary.unlabelled) == (0, 1)


def _synthetic(ledger: Any, weeks: list[float], per_week: int = 30) -> None:
    """Runs answered by `small` over several weeks, each with a user score: the quality of
    week i is weeks[i] (a share of right answers)."""
    with ledger.backend.transaction() as tx:
        for w, quality in enumerate(weeks):
            for i in range(per_week):
                ts = T0 + w * WEEK + i * 60
                run_id = f"run-{w}-{i}"
                tx.execute(
                    "INSERT INTO steps (run_id, ts, task, step, model, provider, attempts,"
                    " input_tokens, output_tokens, cost_usd, latency_ms, decision)"
                    " VALUES (?,?,?,?,?,?,1,10,10,?,5,?)",
                    (run_id, ts, "t", 1, "small", "p", 0.001,
                     "accept" if i % 5 else "escalate"))
                tx.execute(
                    "INSERT INTO runs (run_id, ts, task, model, accepted, cost_usd, latency_ms,"
                    " steps) VALUES (?,?,?,?,?,?,?,?)",
                    (run_id, ts, "t", "small", 1, 0.001, 5, 1))
    for w, quality in enumerate(weeks):
        for i in range(per_week):
            right = i < round(quality * per_week)
            add_feedback(ledger, f"run-{w}-{i}", float(right), source="user",
                         now=T0 + w * WEEK + i * 60 + 1)


def test_drift_flags_the_week_quality_fell(db: Db) -> None:
    ledger = db.open()
    try:
        _synthetic(ledger, [0.9, 0.93, 0.6])
        rows = drift_report(ledger, targets={"t": 0.85}, min_evidence=20)
    finally:
        ledger.close()
    assert [r.week for r in rows] == [week_of(T0 + w * WEEK) for w in range(3)]
    assert [r.flagged for r in rows] == [False, False, True]
    assert [r.evidence for r in rows] == [30, 30, 30]
    assert rows[2].accepted_score == pytest.approx(0.6)
    assert rows[0].acceptance_rate == pytest.approx(24 / 30)
    assert rows[0].cost_per_run == pytest.approx(0.001)


def test_drift_needs_evidence_and_prefers_users(db: Db) -> None:
    ledger = db.open()
    try:
        _synthetic(ledger, [0.5], per_week=10)
        assert not drift_report(ledger, targets={"t": 0.85}, min_evidence=20)[0].flagged
        assert drift_report(ledger, targets={"t": 0.85}, min_evidence=10)[0].flagged
        # a shadow label never overrides a user's score
        for i in range(10):
            add_feedback(ledger, f"run-0-{i}", 1.0, source="shadow:agreement", now=T0 + WEEK)
        row = drift_report(ledger, targets={"t": 0.85}, min_evidence=10)[0]
        assert (row.accepted_score, row.evidence_user, row.evidence_shadow) == (0.5, 10, 0)
    finally:
        ledger.close()


def test_cli_report_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = Db("sqlite", path=tmp_path / "ledger.sqlite")
    ledger = db.open()
    try:
        _synthetic(ledger, [0.95, 0.5])
    finally:
        ledger.close()
    cfg = tmp_path / "c.yaml"
    data = config(db, quality_target=0.9)
    cfg.write_text(json.dumps(data))
    assert main(["report", "--drift", "--ledger", str(db.path), "--config", str(cfg),
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["flagged"] for r in rows] == [False, True]
    assert main(["report", "--drift", "--ledger", str(db.path), "--target", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "FLAGGED" not in out and "small" in out
    assert main(["report", "--drift", "--ledger", str(db.path), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"flagged: t / small in {week_of(T0 + WEEK)}: accepted quality 0.500 < target 0.9 " \
           "(30 scores: 30 from users, 0 from shadows)" in out
