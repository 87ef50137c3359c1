"""Parameters that change what a call costs (issue 22, items 4 and 6).

``n`` asks the upstream for (and bills) n answers while the budget reserves one; ``service_tier``,
``web_search_options``, ``modalities``/``audio`` and ``prediction`` cost more than the tokens at the
configured price, and nothing prices them. The library and the gateway refuse them through the
same check (``cascade.config.params.check_call_params``), driven here through the real SDKs, the
real gateway and a loopback upstream.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest
import yaml

from cascade import Cascade, ConfigError, RequestError
from cascade.cli import main
from cascade.gateway.app import create_app, running
from cascade.ledger.writer import flush_all
from cascade.testing import MockLLMServer
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, live_config

KEY = "gw-params-key"
MINI = "gpt-4o-mini"
ASK = [{"role": "user", "content": "What are your opening hours?"}]
GOOD = "We are open from nine to five"
NOWHERE: Any = SimpleNamespace(openai_url="http://127.0.0.1:9/v1", anthropic_url="http://127.0.0.1:9")
# One value of each price-changing parameter, as a client would send it.
PRICED: dict[str, Any] = {
    "service_tier": "priority",
    "web_search_options": {"search_context_size": "high"},
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"},
    "prediction": {"type": "content", "content": "We are open"},
}


async def _no_sleep(seconds: float) -> None:
    return None


@contextmanager
def engine_and_gateway(
    tmp_path: Path, *, task_params: dict[str, Any] | None = None, **server_section: Any
) -> Iterator[tuple[str, MockLLMServer, Path, Cascade]]:
    """Task faq (mini, accepting at once) behind a gateway; yields (URL, upstream, ledger,
    engine)."""
    ledger = tmp_path / "ledger.sqlite"
    with pytest.MonkeyPatch.context() as env, MockLLMServer() as upstream:
        env.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
        env.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)
        upstream.script(MINI, [GOOD])
        config = live_config(upstream, ladder=["mini"], attempts=1, ledger=str(ledger),
                             params=task_params or {})
        config["server"] = server_section
        engine = Cascade.from_dict(config, sleep=lambda s: None, asleep=_no_sleep)
        try:
            with running(create_app(engine, api_keys=[KEY])) as url:
                yield url, upstream, ledger, engine
        finally:
            engine.close()


def post(url: str, body: dict[str, Any]) -> httpx2.Response:
    return httpx2.post(f"{url}/v1/chat/completions", json=body, timeout=30,
                       headers={"authorization": f"Bearer {KEY}"})


def steps(ledger: Path) -> int:
    flush_all()
    if not ledger.exists():
        return 0
    with sqlite3.connect(ledger) as db:
        return int(db.execute("SELECT COUNT(*) FROM steps").fetchone()[0])


# -- 4. n ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [50, 0, 2, True, 1.0, "1"])
def test_library_refuses_n_other_than_1(tmp_path: Path, n: Any) -> None:
    """complete(n=50) (or 0, True, 1.0...) is a RequestError naming n; nothing is sent or booked
    (before: n: 50 reached the upstream, which bills 50 answers against one reserved)."""
    with engine_and_gateway(tmp_path) as (_, upstream, ledger, engine):
        with pytest.raises(RequestError) as info:
            engine.complete("faq", "q", n=n)
        assert info.value.param == "n"
        with pytest.raises(RequestError):
            asyncio.run(engine.acomplete("faq", "q", n=n))
        assert upstream.requests == []
    assert steps(ledger) == 0


def test_library_n_1_is_allowed(tmp_path: Path) -> None:
    """n: 1 is one answer: it is sent as asked and booked once."""
    with engine_and_gateway(tmp_path) as (_, upstream, ledger, engine):
        assert engine.complete("faq", "q", n=1).text == GOOD
        assert [c["body"]["n"] for c in upstream.calls(MINI)] == [1]
    assert steps(ledger) == 1


def test_library_and_gateway_refuse_n_with_one_check(tmp_path: Path) -> None:
    """The gateway's 400 for n: 50 carries the library's own error; extra_body n is refused by
    both; n: 1 is served."""
    with engine_and_gateway(tmp_path, allow_params=["extra_body"]) as (url, upstream, _, engine):
        for field, param in [({"n": 50}, "n"), ({"n": 0}, "n"),
                             ({"extra_body": {"n": 5}}, "extra_body.n")]:
            with pytest.raises(RequestError) as info:
                engine.complete("faq", "q", **field)
            assert info.value.param == param
            response = post(url, {"model": "faq", "messages": ASK, **field})
            assert response.status_code == 400
            assert response.json()["error"] == {
                "message": f"invalid request body: {info.value}", "type": "invalid_request_error",
                "param": None, "code": "invalid_request"}
        assert upstream.requests == []
        assert post(url, {"model": "faq", "messages": ASK, "n": 1}).status_code == 200


def test_config_params_cannot_set_n(tmp_path: Path) -> None:
    """models.X.params: {n: 3} (or a task's) is a ConfigError naming the key."""
    config = live_config(NOWHERE, ledger=str(tmp_path / "l.sqlite"))
    config["models"]["mini"]["params"] = {"n": 3}
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(config)
    assert info.value.location == "models.mini.params.n"
    config["models"]["mini"]["params"] = {}
    config["tasks"]["faq"]["params"] = {"extra_body": {"n": 3}}
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(config)
    assert info.value.location == "tasks.faq.params.extra_body.n"


def test_n_cannot_be_allowed(tmp_path: Path) -> None:
    """server.allow_params: [n] is a ConfigError: a cascade returns one answer."""
    config = live_config(NOWHERE, ledger=str(tmp_path / "l.sqlite"))
    config["server"] = {"allow_params": ["n"]}
    with pytest.raises(ConfigError, match=r"server\.allow_params"):
        Cascade.from_dict(config)


# -- 6. price-changing parameters ------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRICED))
def test_price_changing_params_are_refused_by_default(tmp_path: Path, name: str) -> None:
    """service_tier (and web search, audio, prediction) is a 400 from the gateway and a
    RequestError from the library, naming it; nothing reaches the upstream or the ledger
    (before: each reached the upstream, unpriced)."""
    field = {name: PRICED[name]}
    with engine_and_gateway(tmp_path) as (url, upstream, ledger, engine):
        response = post(url, {"model": "faq", "messages": ASK, **field})
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert message.startswith(f"invalid request body: {name}: changes what a call costs")
        assert "server.allow_params" in message
        with pytest.raises(RequestError) as info:
            engine.complete("faq", "q", **field)
        assert info.value.param == name
        assert upstream.requests == []
    assert steps(ledger) == 0


def test_allow_params_lets_a_price_changing_param_through(tmp_path: Path) -> None:
    """server.allow_params: [service_tier] lets gateway clients and library callers send it;
    the other price-changing parameters stay refused, and extra_body cannot smuggle any."""
    with engine_and_gateway(tmp_path, allow_params=["service_tier", "extra_body"]) as (
            url, upstream, _, engine):
        assert post(url, {"model": "faq", "messages": ASK, "service_tier": "priority"}
                    ).status_code == 200
        assert engine.complete("faq", "q", service_tier="flex").text == GOOD
        assert [c["body"]["service_tier"] for c in upstream.calls(MINI)] == ["priority", "flex"]
        assert post(url, {"model": "faq", "messages": ASK, "prediction": PRICED["prediction"]}
                    ).status_code == 400
        smuggled = post(url, {"model": "faq", "messages": ASK,
                              "extra_body": {"web_search_options": {}}})
        assert smuggled.status_code == 400
        assert "extra_body.web_search_options" in smuggled.json()["error"]["message"]
        with pytest.raises(RequestError) as info:
            engine.complete("faq", "q", extra_body={"service_tier": "priority"})
        assert info.value.param == "extra_body.service_tier"
        assert len(upstream.calls(MINI)) == 2


def test_null_price_changing_param_means_the_default(tmp_path: Path) -> None:
    """service_tier: null is the default tier, not a request for another: it is served."""
    with engine_and_gateway(tmp_path) as (url, upstream, _, engine):
        assert post(url, {"model": "faq", "messages": ASK, "service_tier": None}
                    ).status_code == 200
        assert engine.complete("faq", "q", service_tier=None).text == GOOD
        assert "service_tier" not in upstream.calls(MINI)[0]["body"]


def test_config_params_count_as_the_operator_allowing(tmp_path: Path) -> None:
    """tasks.faq.params: {service_tier: priority} is the operator's: it is sent on every call,
    while a caller still cannot set another tier."""
    with engine_and_gateway(tmp_path, task_params={"service_tier": "priority"}) as (
            url, upstream, _, engine):
        assert post(url, {"model": "faq", "messages": ASK}).status_code == 200
        assert engine.complete("faq", "q").text == GOOD
        assert [c["body"]["service_tier"] for c in upstream.calls(MINI)] == ["priority"] * 2
        assert post(url, {"model": "faq", "messages": ASK, "service_tier": "scale"}
                    ).status_code == 400


def test_validate_warns_that_allowed_price_changing_params_are_unpriced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each price-changing parameter the config sets, or lets callers set, is a validate
    warning saying its cost is not priced."""
    config = live_config(NOWHERE, ledger=str(tmp_path / "l.sqlite"))
    config["models"]["mini"]["params"] = {"service_tier": "priority"}
    config["tasks"]["faq"]["params"] = {"prediction": {"type": "content", "content": "x"}}
    config["server"] = {"allow_params": ["web_search_options", "vendor_knob"]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["validate", str(path)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "not priced" in line]
    unpriced = ("changes what a call costs and is not priced (neither the worst case reserved "
                "nor the bill includes that cost)")
    assert warnings == [
        f"warning: models.mini.params.service_tier {unpriced}",
        f"warning: tasks.faq.params.prediction {unpriced}",
        f"warning: server.allow_params: web_search_options {unpriced}; callers may set it",
    ]


def test_validate_is_quiet_without_price_changing_params(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config that sets and allows none of them gets no such warning."""
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(live_config(NOWHERE, ledger=str(tmp_path / "l.sqlite"))))
    assert main(["validate", str(path)]) == 0
    assert "not priced" not in capsys.readouterr().err
