"""A call that never left the process costs nothing and holds no budget (issue 19, point 1).

Every path that fails before the first byte is sent: a missing API key, a refused parameter, a
request body that cannot be built, an open circuit breaker. Each is run through the real SDKs
against a loopback upstream, sync and async, with a SQLite ledger and a small daily budget.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx2
import pytest

from cascade import Cascade, ConfigError, RequestError
from cascade.gateway.app import create_app, running
from cascade.testing import MockLLMServer, Reply
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, live_config

BUDGET = 0.005  # two reservations of the mini rung's worst case (~$0.00246) nearly fill it


def _config(server: MockLLMServer, ledger: Path, ladder: list[str], **extra: Any) -> dict[str, Any]:
    config = live_config(server, ladder=ladder, attempts=3, ledger=str(ledger))
    config["budgets"] = {"daily_usd": BUDGET}
    config.update(extra)
    return config


def _rows(ledger: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(ledger) as db:
        return db.execute("SELECT status, cost_usd, attempts, error FROM steps").fetchall()


def _spent(ledger: Path) -> float:
    with sqlite3.connect(ledger) as db:
        (total,) = db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM steps").fetchone()
    return float(total)


def _complete(engine: Cascade, mode: str, **params: Any) -> Any:
    if mode == "sync":
        return engine.complete("faq", "When do you open?", **params)

    async def run() -> Any:
        try:
            return await engine.acomplete("faq", "When do you open?", **params)
        finally:
            await engine.aclose()  # this loop's SDK clients end with it

    return asyncio.run(run())


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("rung", "env"), [("mini", "OPENAI_API_KEY"),
                                           ("sonnet", "ANTHROPIC_API_KEY")])
def test_missing_key_books_nothing_and_frees_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, rung: str, env: str
) -> None:
    """Key-less calls raise ConfigError and settle at $0; the budget is whole once the key is set."""
    monkeypatch.delenv(env, raising=False)
    ledger = tmp_path / "l.sqlite"
    with MockLLMServer() as server:
        server.script(live_config(server)["models"][rung]["name"], ["Open nine to five daily."])
        with Cascade.from_dict(_config(server, ledger, [rung])) as engine:
            for _ in range(2):
                with pytest.raises(ConfigError, match=env):
                    _complete(engine, mode)
            engine.ledger.flush()
            rows = _rows(ledger)
            assert [(status, cost, attempts) for status, cost, attempts, _ in rows] == [
                ("settled", 0.0, 0), ("settled", 0.0, 0)]
            assert all(error.startswith("not sent: ") and env in error for *_, error in rows)
            assert server.calls() == []  # nothing reached the upstream
            monkeypatch.setenv(env, FAKE_OPENAI_KEY if env == "OPENAI_API_KEY"
                               else FAKE_ANTHROPIC_KEY)
            result = _complete(engine, mode)  # the two failures hold no budget
            assert result.model == rung


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("params", [{"temperature": object()},
                                    {"extra_body": {"vendor": object()}}])
def test_unbuildable_request_is_a_request_error_at_no_cost(
    tmp_path: Path, keys: None, mode: str, params: dict[str, Any]
) -> None:
    """A body JSON cannot carry is refused before sending, names the parameter, costs nothing."""
    ledger = tmp_path / "l.sqlite"
    with MockLLMServer() as server, Cascade.from_dict(_config(server, ledger, ["mini"])) as engine:
        for _ in range(3):  # three would exceed the budget if each reserved its worst case
            with pytest.raises(RequestError) as info:
                _complete(engine, mode, **params)
            assert info.value.param in ("temperature", "vendor")
        engine.ledger.flush()
        assert {(status, cost) for status, cost, *_ in _rows(ledger)} == {("settled", 0.0)}
        assert server.calls() == []


def test_refused_parameter_reserves_nothing(tmp_path: Path, keys: None) -> None:
    """max_tokens above the model's limit is refused before any row is written."""
    ledger = tmp_path / "l.sqlite"
    with MockLLMServer() as server, Cascade.from_dict(_config(server, ledger, ["mini"])) as engine:
        for _ in range(3):
            with pytest.raises(RequestError, match="max_tokens"):
                engine.complete("faq", "q", max_tokens=10**6)
        engine.ledger.flush()
        assert _spent(ledger) == 0.0
        assert all(status != "lost" for status, *_ in _rows(ledger))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_open_breaker_reserves_nothing(tmp_path: Path, keys: None, mode: str) -> None:
    """A rung skipped by an open circuit writes a $0 skip row; the next rung answers."""
    ledger = tmp_path / "l.sqlite"
    with MockLLMServer() as server:
        config = _config(server, ledger, ["mini", "sonnet"])
        config["retry"] = {"attempts": 1, "max_wait_s": 30}
        config["providers"]["openai"]["circuit_breaker"] = {"failures": 1, "cooldown_s": 3600}
        server.script("gpt-4o-mini", [Reply(status=500)])
        server.script("claude-sonnet-4-6", ["Open nine to five daily."] * 2)
        with Cascade.from_dict(config) as engine:
            _complete(engine, mode)  # the 500 opens mini's circuit
            calls = len(server.calls("gpt-4o-mini"))
            result = _complete(engine, mode)
            assert len(server.calls("gpt-4o-mini")) == calls  # nothing sent to the open circuit
            skip = result.steps[0]
            assert (skip.model, skip.decision, skip.cost_usd) == ("mini", "skip", 0.0)
            assert "circuit open" in (skip.error or "")
            engine.ledger.flush()
            assert all(status != "lost" for status, *_ in _rows(ledger))


def test_gateway_missing_key_is_500_config_error_at_no_cost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the gateway: 500 config_error, and the ledger holds no spend for it."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ledger = tmp_path / "l.sqlite"
    with MockLLMServer() as server, \
            Cascade.from_dict(_config(server, ledger, ["mini"])) as engine, \
            running(create_app(engine)) as url:
        for _ in range(3):
            reply = httpx2.post(f"{url}/v1/chat/completions", json={
                "model": "faq", "messages": [{"role": "user", "content": "q"}]})
            assert reply.status_code == 500
            assert reply.json()["error"]["code"] == "config_error"
        engine.ledger.flush()
        assert _spent(ledger) == 0.0
        assert [status for status, *_ in _rows(ledger)] == ["settled"] * 3
