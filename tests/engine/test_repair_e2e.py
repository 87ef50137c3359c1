"""json_schema repair, end to end: real SDKs on loopback, every repair a priced ledger step."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cascade import Cascade
from cascade.ledger.writer import flush_all
from cascade.testing import MockLLMServer, Reply
from tests.conftest import live_config

SCHEMA = {"type": "object", "required": ["city", "population"],
          "properties": {"city": {"type": "string"}, "population": {"type": "integer"}}}


def ledger_rows(path: Path) -> list[tuple[object, ...]]:
    flush_all()  # rows the ledger's writer thread has queued
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT step, model, decision, input_tokens, output_tokens, cost_usd "
                            "FROM steps ORDER BY step").fetchall()


@pytest.mark.usefixtures("keys")
def test_repair_then_accept(server: MockLLMServer, tmp_path: Path) -> None:
    """A schema failure re-asks the same model with the problem; both calls are priced steps."""
    server.script("gpt-4o-mini", [
        Reply('Sure! {"city": "Paris", "population": "2.1 million"}', input_tokens=1000,
              output_tokens=20),
        Reply('```json\n{"city": "Paris", "population": 2100000}\n```', input_tokens=1100,
              output_tokens=15),
    ])
    evaluators = [{"type": "json_schema", "schema": SCHEMA, "repair_attempts": 1}]
    data = live_config(server, evaluators=evaluators, ledger=str(tmp_path / "l.db"))
    result = Cascade.from_dict(data).complete("faq", "Largest city of France, as JSON?")
    assert result.json == {"city": "Paris", "population": 2100000}
    assert result.model == "mini"
    first = (1000 * 0.15 + 20 * 0.60) / 1e6
    second = (1100 * 0.15 + 15 * 0.60) / 1e6
    assert ledger_rows(tmp_path / "l.db") == [
        (1, "mini", "repair", 1000, 20, pytest.approx(first, abs=1e-15)),
        (2, "mini", "accept", 1100, 15, pytest.approx(second, abs=1e-15)),
    ]
    assert result.cost_usd == pytest.approx(first + second, abs=1e-15)
    repair_request = server.calls("gpt-4o-mini")[1]["body"]["messages"]
    assert repair_request[-2] == {"role": "assistant",
                                  "content": 'Sure! {"city": "Paris", "population": "2.1 million"}'}
    assert "$.population" in repair_request[-1]["content"]
    assert "integer" in repair_request[-1]["content"]


@pytest.mark.usefixtures("keys")
def test_repair_exhausted_escalates(server: MockLLMServer, tmp_path: Path) -> None:
    """When repairs run out, the ladder escalates; every attempt stays in the ledger."""
    server.script("gpt-4o-mini", [Reply("no json here", input_tokens=100, output_tokens=3)])
    server.script("claude-sonnet-4-6", [Reply('{"city": "Paris", "population": 2100000}',
                                              input_tokens=200, output_tokens=12)])
    evaluators = [{"type": "json_schema", "schema": SCHEMA, "repair_attempts": 2}]
    data = live_config(server, evaluators=evaluators, ledger=str(tmp_path / "l.db"))
    result = Cascade.from_dict(data).complete("faq", "q")
    mini = (100 * 0.15 + 3 * 0.60) / 1e6
    sonnet = (200 * 3.0 + 12 * 15.0) / 1e6
    assert [(r[1], r[2]) for r in ledger_rows(tmp_path / "l.db")] == [
        ("mini", "repair"), ("mini", "repair"), ("mini", "escalate"), ("sonnet", "accept")]
    assert result.cost_usd == pytest.approx(3 * mini + sonnet, abs=1e-15)
    assert result.json == {"city": "Paris", "population": 2100000}
