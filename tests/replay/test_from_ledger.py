"""``ledger_rows``/``task_rows``: what ``cascade calibrate --from-ledger`` reads from a ledger."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cascade import Ledger
from cascade.config import load_config
from cascade.replay.export import ledger_rows, task_rows
from tests.ledger.ledger_db import Db
from tests.replay.ledger_traffic import MINI, SONNET, serve_traffic

pytestmark = pytest.mark.usefixtures("keys")

RATED = {0: 0.25, 3: 1.0, 5: 0.0, 8: 0.75}  # scores no shadow label could give


def test_user_scores_label_the_answer_the_run_returned(db: Db, tmp_path: Path) -> None:
    """Each labelled row's returned answer scores the user's feedback; the rest are unlabelled."""
    traffic = serve_traffic(tmp_path, db.section(), 10, RATED, shadow_rate=1.0)
    ledger = db.open()
    try:
        rows = task_rows(load_config(traffic.config), "faq", ledger)
    finally:
        ledger.close()
    ids = traffic.run_ids
    assert {r.id: r.responses[MINI].score for r in rows.labelled} == {
        ids[i]: s for i, s in RATED.items()}
    for record in rows.labelled:
        assert record.meta["score_sources"] == {MINI: "feedback", SONNET: "reference"}
        assert record.responses[SONNET].score == 1.0  # quality relative to the top rung
    assert [r["id"] for r in rows.unlabelled] == [
        ids[i] for i in range(10) if i not in RATED]
    assert (rows.incomplete, rows.runs_with_content) == (0, 10)


def test_unlabelled_rows_carry_no_score(tmp_path: Path) -> None:
    """The unlabelled pool holds every answer (the top rung's too) and no score at all."""
    traffic = serve_traffic(tmp_path, {"path": str(tmp_path / "l.sqlite")}, 4, {1: 1.0},
                            shadow_rate=1.0)
    ledger = Ledger(tmp_path / "l.sqlite")
    try:
        rows = ledger_rows(ledger, top=SONNET, task="faq")
    finally:
        ledger.close()
    assert len(rows.unlabelled) == 3
    for record in rows.unlabelled:
        assert set(record["responses"]) == {MINI, SONNET}
        assert all("score" not in r for r in record["responses"].values())
        assert record["meta"]["score_sources"] == {}
        assert record["messages"][0]["content"].startswith("Question ")
    assert traffic.run_ids[1] not in {r["id"] for r in rows.unlabelled}


def test_shadow_labels_count_where_the_task_says_so(tmp_path: Path) -> None:
    """With shadow_labels: true, a run without a user score is labelled by its shadow label."""
    where = tmp_path / "l.sqlite"
    traffic = serve_traffic(tmp_path, {"path": str(where)}, 10, RATED, shadow_rate=1.0,
                            shadow_labels=True)
    ledger = Ledger(where)
    try:
        rows = task_rows(load_config(traffic.config), "faq", ledger)
        stored = {r["run_id"]: r["score"] for r in ledger.query(
            "SELECT run_id, score FROM feedback WHERE source = 'shadow:agreement'")}
    finally:
        ledger.close()
    assert rows.unlabelled == []
    assert len(rows.labelled) == 10
    by_id = {r.id: r for r in rows.labelled}
    for i, run_id in enumerate(traffic.run_ids):
        mini = by_id[run_id].responses[MINI]
        if i in RATED:
            assert mini.score == RATED[i]  # a user's score wins over the shadow label
        else:
            # the score is the label the engine stored, and here also the truth
            assert mini.score == stored[run_id] == float(traffic.right[i])
            assert by_id[run_id].meta["score_sources"][MINI] == "shadow:agreement"
    assert rows.sources == {"feedback": 4, "reference": 10, "shadow:agreement": 6}


def test_runs_without_the_top_answer_are_left_out(tmp_path: Path) -> None:
    """A rated run accepted below the top and not shadowed cannot be compared with always-top."""
    where = tmp_path / "l.sqlite"
    traffic = serve_traffic(tmp_path, {"path": str(where)}, 4, {0: 1.0, 1: 0.0})
    ledger = Ledger(where)
    try:
        rows = task_rows(load_config(traffic.config), "faq", ledger)
        later = ledger_rows(ledger, top=SONNET, since=time.time() + 3600)
        earlier = ledger_rows(ledger, top=SONNET, until=0.0)
    finally:
        ledger.close()
    assert (rows.labelled, rows.unlabelled, rows.incomplete) == ([], [], 4)
    assert later.runs_with_content == earlier.runs_with_content == 0


def test_an_answer_no_rule_scores_leaves_the_run_out(tmp_path: Path) -> None:
    """Without agreement labels a middle rung's shadow answer has no score: the run is left out,
    neither labelled nor in the unlabelled pool (whose rows carry no score at all)."""
    where = tmp_path / "l.sqlite"
    traffic = serve_traffic(tmp_path, {"path": str(where)}, 3, {0: 1.0},
                            ladder=["mini", "mid", "sonnet"], shadow_rate=1.0)
    ledger = Ledger(where)
    try:
        rows = task_rows(load_config(traffic.config), "faq", ledger)
        agreed = ledger_rows(ledger, top=SONNET, agreement=True)
    finally:
        ledger.close()
    assert (rows.labelled, rows.incomplete, len(rows.unlabelled)) == ([], 1, 2)
    assert traffic.run_ids[0] not in {r["id"] for r in rows.unlabelled}
    # with agreement labels the middle rung is scored against the top rung's answer
    assert len(agreed.labelled) == 3
    assert agreed.incomplete == 0
