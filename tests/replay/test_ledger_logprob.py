"""Answers keep their mean token log-probability in the ledger (``content.logprob``), and the
replay records built from it carry it, so the ``logprob`` evaluator calibrates from production."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cascade import Cascade
from cascade.config import load_config
from cascade.replay.export import export_ledger, task_rows
from cascade.testing import MockLLMServer, Reply
from tests.conftest import live_config
from tests.ledger.ledger_db import Db

pytestmark = pytest.mark.usefixtures("keys")

MINI, MID, SONNET = "gpt-4o-mini", "gpt-4o", "claude-sonnet-4-6"
# mini is sure of the easy question (mean -0.1: p 0.90, accepted) and not of the hard one
# (mean -1.5: p 0.22, escalated); mid always reports -0.3; sonnet (anthropic) reports none.
LOGPROBS = {
    ("gpt-4o-mini", "easy"): [-0.05, -0.15],
    ("gpt-4o-mini", "hard"): [-1.0, -2.0],
    ("gpt-4o", "easy"): [-0.2, -0.4],
    ("gpt-4o", "hard"): [-0.2, -0.4],
}


def _answer(model: str, body: dict[str, Any]) -> Reply:
    kind = "easy" if "easy" in str(body["messages"][-1]["content"]) else "hard"
    return Reply("The answer is 5.", logprobs=LOGPROBS.get((model, kind)))


def test_answers_keep_their_mean_logprob(db: Db, tmp_path: Path) -> None:
    """An answer's mean token log-probability is stored with its content row (rung answers and
    shadow answers alike), and data export and from-ledger records carry it."""
    with MockLLMServer(responder=_answer) as upstream:
        data = live_config(
            upstream,
            ladder=[
                {"model": "mini", "evaluators": [{"type": "logprob", "min": 0.5}]},
                "mid",
                "sonnet",
            ],
            evaluators=[{"type": "length", "min_words": 2}],
            shadow_rate=1.0,
            shadow_labels=True,
        )
        data["models"]["mid"]["params"] = {"logprobs": True}  # asked for in shadow calls too
        data["ledger"] = db.section()
        data["logging"] = {"content": True}
        config = tmp_path / "cascade.yaml"
        config.write_text(yaml.safe_dump(data))
        with Cascade.from_yaml(config) as engine:
            easy = engine.complete("faq", "An easy question?")
            engine.shadows.wait()
            hard = engine.complete("faq", "A hard question?")
            engine.shadows.wait()
    assert (easy.model, hard.model) == ("mini", "mid")
    stored = {
        (row[0], row[1]): row[2]
        for row in db.rows("SELECT run_id, model_name, logprob FROM content WHERE kind = 'answer'")
    }
    assert stored == pytest.approx(
        {
            (easy.run_id, MINI): -0.1,
            (easy.run_id, MID): -0.3,
            (easy.run_id, SONNET): None,
            (hard.run_id, MINI): -1.5,
            (hard.run_id, MID): -0.3,
            (hard.run_id, SONNET): None,
        }
    )
    assert db.rows("SELECT logprob FROM content WHERE kind = 'prompt'") == [(None,), (None,)]
    ledger = db.open()
    try:
        export_ledger(ledger, tmp_path / "prod.jsonl")
        rows = task_rows(load_config(config), "faq", ledger)
    finally:
        ledger.close()
    exported = {
        line["id"]: {k: r.get("logprob") for k, r in line["responses"].items()}
        for line in map(json.loads, (tmp_path / "prod.jsonl").read_text().splitlines())
    }
    labelled = {r.id: {k: a.logprob for k, a in r.responses.items()} for r in rows.labelled}
    want = {
        run.run_id: {MINI: pytest.approx(lp), MID: pytest.approx(-0.3), SONNET: None}
        for run, lp in ((easy, -0.1), (hard, -1.5))
    }
    assert exported == want
    assert labelled == want
