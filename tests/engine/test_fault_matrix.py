"""One test per row of docs/faults.md: real SDKs, a loopback server injecting the fault, a ledger.

Every row checks the same four things: how often the faulty rung was tried, that the step is an
``error`` with that many attempts, that the ladder failed over to the next rung, and that the
ledger holds exactly the steps the result reports.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from cascade import Cascade
from cascade.ledger.writer import flush_all
from cascade.testing import MockLLMServer, Reply
from tests.conftest import live_config

ATTEMPTS = 3


@dataclass(frozen=True)
class Row:
    name: str
    replies: tuple[Reply, ...]
    tries: int                  # calls the faulty rung receives
    sleeps: tuple[float, ...] | None = None   # exact waits, when the server dictates them
    message: str = ""           # must appear in the step's error
    first: str = "mini"         # the faulty rung (openai) or "sonnet" (anthropic)
    estimated: bool = False     # a 200 without usage: billed at the engine's estimate


ROWS = [
    Row("429 Retry-After: 2", (Reply(status=429, headers={"Retry-After": "2"}),), ATTEMPTS,
        sleeps=(2.0, 2.0), message="HTTP 429"),
    Row("429 retry-after-ms", (Reply(status=429, headers={"retry-after-ms": "1500"}),), ATTEMPTS,
        sleeps=(1.5, 1.5), message="HTTP 429"),
    Row("500", (Reply(status=500),), ATTEMPTS, message="HTTP 500"),
    Row("502", (Reply(status=502),), ATTEMPTS, message="HTTP 502"),
    Row("503", (Reply(status=503),), ATTEMPTS, message="HTTP 503"),
    Row("504", (Reply(status=504),), ATTEMPTS, message="HTTP 504"),
    Row("anthropic 529", (Reply(status=529),), ATTEMPTS, message="HTTP 529", first="sonnet"),
    Row("malformed JSON body", (Reply(body="{not json"),), 2, message="malformed"),
    Row("empty choices", (Reply(body='{"id": "x", "object": "chat.completion", "choices": []}'),),
        2, message="no choices"),
    Row("empty content", (Reply(body='{"id": "x", "choices": [{"index": 0, "finish_reason": '
                                      '"stop", "message": {"role": "assistant", "content": ""}}]}'),),
        2, message="empty message", estimated=True),
    Row("anthropic empty content", (Reply(body='{"id": "m", "type": "message", "role": '
                                               '"assistant", "model": "c", "content": []}'),),
        2, message="no text content", first="sonnet", estimated=True),
    Row("401", (Reply(status=401),), 1, message="$OPENAI_API_KEY"),
    Row("403", (Reply(status=403),), 1, message="$OPENAI_API_KEY"),
    Row("anthropic 401", (Reply(status=401),), 1, message="$ANTHROPIC_API_KEY", first="sonnet"),
    Row("400 context length", (Reply(status=400, message="maximum context length exceeded"),), 1,
        message="maximum context length"),
    Row("404 unknown model", (Reply(status=404, message="model not found"),), 1,
        message="model 'gpt-4o-mini' not found"),
]


@pytest.mark.usefixtures("keys")
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_fault(row: Row, server: MockLLMServer, tmp_path: Path) -> None:
    """The faulty rung is retried as the matrix says, then the ladder fails over; nothing is lost."""
    faulty, other = ("gpt-4o-mini", "claude-sonnet-4-6")
    ladder = ["mini", "sonnet"]
    if row.first == "sonnet":
        faulty, other = other, faulty
        ladder = ["sonnet", "mini"]
    server.script(faulty, row.replies)
    server.script(other, [Reply("the answer from the next rung", input_tokens=7,
                                output_tokens=6)])
    sleeps: list[float] = []
    data = live_config(server, ladder=ladder, attempts=ATTEMPTS, ledger=str(tmp_path / "l.db"))
    with Cascade.from_dict(data, sleep=sleeps.append) as engine:
        result = engine.complete("faq", "q")

    assert len(server.calls(faulty)) == row.tries
    step = result.steps[0]
    assert (step.decision, step.attempts) == ("error", row.tries)
    # A reply that reports no usage is still billed (at the estimate), and marked.
    assert step.usage_estimated is row.estimated
    assert (step.cost_usd > 0) is row.estimated
    assert row.message in (step.error or "")
    assert result.text == "the answer from the next rung"
    assert result.model == ladder[1]
    if row.sleeps is not None:
        assert tuple(sleeps) == row.sleeps
    assert len(sleeps) == row.tries - 1
    with sqlite3.connect(tmp_path / "l.db") as conn:
        ledger = conn.execute("SELECT model, attempts, decision, cost_usd, error,"
                              " usage_estimated FROM steps ORDER BY step").fetchall()
    assert ledger == [(s.model, s.attempts, s.decision, s.cost_usd, s.error,
                       int(s.usage_estimated)) for s in result.steps]


@pytest.mark.usefixtures("keys")
def test_connection_refused_row(server: MockLLMServer, tmp_path: Path) -> None:
    """Connection refused: retried, then failed over, with a ledger row."""
    data = live_config(server, attempts=ATTEMPTS, ledger=str(tmp_path / "l.db"))
    data["providers"]["openai"]["base_url"] = "http://127.0.0.1:9/v1"
    server.script("claude-sonnet-4-6", ["the answer from the next rung"])
    result = Cascade.from_dict(data, sleep=lambda s: None).complete("faq", "q")
    assert (result.steps[0].decision, result.steps[0].attempts) == ("error", ATTEMPTS)
    assert result.model == "sonnet"
    flush_all()  # rows the ledger's writer thread has queued
    with sqlite3.connect(tmp_path / "l.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM steps").fetchone() == (2,)


@pytest.mark.usefixtures("keys")
def test_read_timeout_row(server: MockLLMServer, tmp_path: Path) -> None:
    """Read timeout: retried, then failed over, with a ledger row."""
    data = live_config(server, attempts=2, ledger=str(tmp_path / "l.db"))
    data["providers"]["openai"]["timeout_s"] = 0.2
    server.script("gpt-4o-mini", [Reply("late", delay_s=0.6)])
    server.script("claude-sonnet-4-6", ["the answer from the next rung"])
    result = Cascade.from_dict(data, sleep=lambda s: None).complete("faq", "q")
    assert (result.steps[0].decision, result.steps[0].attempts) == ("error", 2)
    assert "timed out" in (result.steps[0].error or "")
    assert result.model == "sonnet"
    flush_all()  # rows the ledger's writer thread has queued
    with sqlite3.connect(tmp_path / "l.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM steps").fetchone() == (2,)
