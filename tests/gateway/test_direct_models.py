"""Calling a ``models:`` key directly through the gateway (issue 22, item 3).

A direct call has no task, so no task budget or cap holds it: it is off unless
``server.direct_models`` allows it, and then it is held to the global budgets and to
``server.direct_max_cost_usd``. Driven through the real gateway, the real OpenAI SDK and a
loopback upstream.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
import openai
import pytest
import yaml

from cascade import Cascade, ConfigError
from cascade.cli import main
from cascade.gateway.app import create_app, running
from cascade.ledger.writer import flush_all
from cascade.testing import MockLLMServer, Reply
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, live_config

KEY = "gw-direct-key"
DEAR = "gpt-dear"
ASK = [{"role": "user", "content": "What are your opening hours?"}]
GOOD = "We are open from nine to five"
NOWHERE: Any = SimpleNamespace(openai_url="http://127.0.0.1:9/v1", anthropic_url="http://127.0.0.1:9")


async def _no_sleep(seconds: float) -> None:
    return None


def direct_config(server: Any, ledger: Path, **server_section: Any) -> dict[str, Any]:
    """Task faq (mini) under a $0.50 daily task budget, and model dear: $0.10 a call, as the
    upstream bills its whole max_tokens (100 output tokens at $1,000 per 1M)."""
    config = live_config(server, ladder=["mini"], attempts=1, ledger=str(ledger),
                         budgets={"daily_usd": 0.50})
    config["models"]["dear"] = {"provider": "openai", "name": DEAR, "max_output_tokens": 100,
                                "price": {"input": 0.0, "output": 1000.0}}
    config["server"] = server_section
    return config


@contextmanager
def gateway(tmp_path: Path, budgets: dict[str, float] | None = None,
            **server_section: Any) -> Iterator[tuple[str, MockLLMServer, Path]]:
    ledger = tmp_path / "ledger.sqlite"
    with pytest.MonkeyPatch.context() as env, MockLLMServer() as upstream:
        env.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
        env.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)
        upstream.script(DEAR, [Reply(GOOD, output_tokens=100)])
        config = direct_config(upstream, ledger, **server_section)
        if budgets is not None:
            config["budgets"] = budgets
        engine = Cascade.from_dict(config, sleep=lambda s: None, asleep=_no_sleep)
        try:
            with running(create_app(engine, api_keys=[KEY])) as url:
                yield url, upstream, ledger
        finally:
            engine.close()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def spent(ledger: Path) -> float:
    flush_all()  # rows written behind the response by the ledger's writer thread
    if not ledger.exists():
        return 0.0
    with sqlite3.connect(ledger) as db:
        return float(db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM steps").fetchone()[0])


def test_direct_model_calls_are_refused_by_default(tmp_path: Path) -> None:
    """model: dear is 404 model_not_found and unlisted unless server.direct_models allows it;
    twenty tries call nothing and spend nothing (before: $2.00 on a $0.50 task budget)."""
    with gateway(tmp_path) as (url, upstream, ledger), client(url) as api:
        for _ in range(20):
            with pytest.raises(openai.NotFoundError) as info:
                api.chat.completions.create(model="dear", messages=ASK)  # type: ignore[arg-type]
            assert info.value.code == "model_not_found"
            assert "server.direct_models" in info.value.message
        assert [m.id for m in api.models.list()] == ["cascade/faq"]
        with pytest.raises(openai.NotFoundError):
            api.models.retrieve("dear")
        assert api.models.retrieve("faq").id == "cascade/faq"  # tasks are served as before
    assert upstream.calls(DEAR) == []
    assert spent(ledger) == 0.0


def test_direct_models_list_allows_only_the_keys_named(tmp_path: Path) -> None:
    """direct_models: [dear] serves dear alone; mini stays a 404 and unlisted."""
    with (gateway(tmp_path, direct_models=["dear"], direct_max_cost_usd=0.2,
                  budgets={"daily_usd": 10}) as (url, upstream, _ledger), client(url) as api):
        raw = api.chat.completions.with_raw_response.create(
            model="dear", messages=ASK)  # type: ignore[arg-type]
        assert (raw.headers["x-cascade-model"], raw.headers["x-cascade-steps"]) == ("dear", "1")
        with pytest.raises(openai.NotFoundError):
            api.chat.completions.create(model="mini", messages=ASK)  # type: ignore[arg-type]
        assert [m.id for m in api.models.list()] == ["cascade/faq", "dear"]
        assert api.models.retrieve("dear").owned_by == "openai"
    assert len(upstream.calls(DEAR)) == 1
    assert upstream.calls("gpt-4o-mini") == []


def test_allowed_direct_calls_stay_under_the_global_budget(tmp_path: Path) -> None:
    """With every model allowed, twenty $0.10 direct calls under a $0.50 global daily budget
    spend at most $0.50: the rest are 429 budget_exceeded before anything is sent."""
    with (gateway(tmp_path, budgets={"daily_usd": 0.50}, direct_models=True,
                  direct_max_cost_usd=1.0) as (url, upstream, ledger)):
        statuses = [
            httpx2.post(f"{url}/v1/chat/completions", timeout=30,
                        headers={"authorization": f"Bearer {KEY}"},
                        json={"model": "dear", "messages": ASK}).status_code
            for _ in range(20)
        ]
        total = spent(ledger)
    assert set(statuses) == {200, 429}
    assert len(upstream.calls(DEAR)) == statuses.count(200) >= 4
    assert total == pytest.approx(0.10 * statuses.count(200))
    assert total <= 0.50


def test_direct_calls_are_held_to_direct_max_cost_usd(tmp_path: Path) -> None:
    """A direct call whose worst case ($0.10) is above server.direct_max_cost_usd is a 429 and
    nothing is sent, though the global budget would allow it."""
    with (gateway(tmp_path, budgets={"daily_usd": 10}, direct_models=["dear"],
                  direct_max_cost_usd=0.05) as (url, upstream, ledger), client(url) as api):
        with pytest.raises(openai.RateLimitError) as info:
            api.chat.completions.create(model="dear", messages=ASK)  # type: ignore[arg-type]
        assert info.value.code == "budget_exceeded"
        assert info.value.response.headers["x-should-retry"] == "false"
    assert upstream.calls(DEAR) == []
    assert spent(ledger) == 0.0


def test_direct_models_must_name_model_keys(tmp_path: Path) -> None:
    """A listed key that is not a models: key is a ConfigError naming server.direct_models[i]."""
    config = direct_config(NOWHERE, tmp_path / "l.sqlite", direct_models=["dear", "dera"],
                           direct_max_cost_usd=0.2)
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(config)
    assert info.value.location == "server.direct_models[1]"
    assert "unknown model 'dera' (defined: mini, mid, sonnet, dear)" in str(info.value)


@pytest.mark.parametrize("allowed", [True, ["dear"]])
def test_direct_models_need_a_cap(tmp_path: Path, allowed: bool | list[str]) -> None:
    """Allowing direct calls without server.direct_max_cost_usd is a ConfigError naming it."""
    config = direct_config(NOWHERE, tmp_path / "l.sqlite", direct_models=allowed)
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(config)
    assert info.value.location == "server.direct_max_cost_usd"
    assert "required when server.direct_models allows direct calls" in str(info.value)


def test_validate_warns_when_the_cap_refuses_every_direct_call(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A direct model whose worst case is above direct_max_cost_usd is named by validate."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(direct_config(
        NOWHERE, tmp_path / "l.sqlite", direct_models=["dear", "mini"],
        direct_max_cost_usd=0.05)))
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert ("warning: server.direct_models: model dear can never be called directly: its worst "
            "case $0.1 > server.direct_max_cost_usd $0.05") in err
    assert "model mini can never" not in err
