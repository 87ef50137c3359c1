"""The ten attacks of issue 10, each tried through the real gateway, the real SDKs and a loopback
upstream (``MockLLMServer``), with the result the gateway must give now.

docs/reliability.md ("Attacks") lists the same cases with these results.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
import openai
import pytest
import yaml

from cascade import Cascade, ConfigError, RequestError
from cascade.cli import main
from cascade.config.pricing import Price
from cascade.engine.breaker import CircuitBreaker
from cascade.gateway.app import create_app, running
from cascade.ledger.writer import flush_all
from cascade.testing import MockLLMServer, Reply
from cascade.tokens import estimate_input_tokens
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, live_config

KEY = "gw-attack-key"
MINI, SONNET = "gpt-4o-mini", "claude-sonnet-4-6"
ASK = [{"role": "user", "content": "What are your opening hours?"}]
GOOD = "We are open from nine to five"
# A model where output is dear: 100,000 output tokens would cost $100.
PRICEY = {"input": 10.0, "output": 1000.0}
# The server section of the tests that call a models: key directly (off by default).
DIRECT: dict[str, Any] = {"direct_models": True, "direct_max_cost_usd": 10.0}
# An upstream that is never called (config-only tests).
NOWHERE: Any = SimpleNamespace(openai_url="http://127.0.0.1:9/v1", anthropic_url="http://127.0.0.1:9")


async def _no_sleep(seconds: float) -> None:
    return None


def attack_config(server: Any, ledger: Path, **server_section: Any) -> dict[str, Any]:
    """faq: mini -> sonnet, capped at $0.20 a request, under a $10 daily budget."""
    config = live_config(server, attempts=1, ledger=str(ledger), max_cost_usd=0.20)
    config["models"]["mini"].update(price=PRICEY, max_output_tokens=100)
    config["models"]["sonnet"].update(max_output_tokens=256)
    config["budgets"] = {"daily_usd": 10}
    config["server"] = server_section
    return config


@contextmanager
def gateway(
    tmp_path: Path, **server_section: Any
) -> Iterator[tuple[str, MockLLMServer, Path, Cascade]]:
    """A gateway on a loopback port in front of a loopback upstream; yields (base URL, upstream,
    ledger, engine)."""
    ledger = tmp_path / "ledger.sqlite"
    with pytest.MonkeyPatch.context() as env, MockLLMServer() as upstream:
        env.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
        env.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)
        config = attack_config(upstream, ledger, **server_section)
        engine = Cascade.from_dict(config, sleep=lambda s: None, asleep=_no_sleep)
        try:
            with running(create_app(engine, api_keys=[KEY])) as url:
                yield url, upstream, ledger, engine
        finally:
            engine.close()


def client(url: str, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=options.pop("api_key", KEY),
                         max_retries=0, **options)


def post(url: str, body: dict[str, Any] | bytes, **headers: str) -> httpx2.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx2.post(f"{url}/v1/chat/completions", content=content, timeout=30,
                       headers={"authorization": f"Bearer {KEY}",
                                "content-type": "application/json", **headers})


def ledger_rows(ledger: Path, sql: str) -> list[tuple[Any, ...]]:
    if not ledger.exists():
        return []
    flush_all()  # rows written behind the response by the ledger's writer thread
    with sqlite3.connect(ledger) as db:
        return db.execute(sql).fetchall()


def spent(ledger: Path) -> float:
    rows = ledger_rows(ledger, "SELECT COALESCE(SUM(cost_usd), 0) FROM steps")
    return float(rows[0][0]) if rows else 0.0


# -- 1. extra_body lifting max_tokens; extra_body n ------------------------------------------------

def test_1_extra_body_cannot_lift_max_tokens_or_n(tmp_path: Path) -> None:
    """max_tokens: 1 with extra_body max_tokens 100,000 (or n: 50) is a 400; nothing is called."""
    with gateway(tmp_path, allow_params=["extra_body"]) as (url, upstream, ledger, _):
        for inner in ({"max_tokens": 100_000}, {"n": 50}):
            response = post(url, {"model": "faq", "messages": ASK, "max_tokens": 1,
                                  "extra_body": inner})
            assert response.status_code == 400
            assert f"extra_body.{next(iter(inner))}" in response.json()["error"]["message"]
        # The SDK's own extra_body merges into the body: max_tokens 100,000 is then checked.
        with client(url) as api, pytest.raises(openai.BadRequestError) as info:
            api.chat.completions.create(model="faq", messages=ASK, max_tokens=1,
                                        extra_body={"max_tokens": 100_000})
        assert "max_tokens: 100000 is above max_output_tokens 100 of model 'mini'" in str(
            info.value.message)
        assert upstream.requests == []
        assert spent(ledger) == 0.0


def test_1_extra_body_is_unknown_without_allow_params(tmp_path: Path) -> None:
    """By default extra_body is not a chat parameter at all."""
    with gateway(tmp_path) as (url, upstream, _, _engine):
        response = post(url, {"model": "faq", "messages": ASK, "max_tokens": 1,
                              "extra_body": {"max_tokens": 100_000}})
        assert response.status_code == 400
        assert "extra_body: unknown parameter" in response.json()["error"]["message"]
        assert upstream.requests == []


def test_1_sent_max_tokens_is_the_reserved_one(tmp_path: Path) -> None:
    """The upstream receives exactly the limit the reservation used: the caller's or the model's."""
    with gateway(tmp_path) as (url, upstream, ledger, _):
        upstream.script(MINI, [GOOD])
        with client(url) as api:
            api.chat.completions.create(model="faq", messages=ASK, max_tokens=40)
            api.chat.completions.create(model="faq", messages=ASK)
        assert [c["body"]["max_tokens"] for c in upstream.calls(MINI)] == [40, 100]
        assert upstream.calls(MINI)[0]["body"]["messages"] == ASK  # sent untransformed, intact
        assert spent(ledger) > 0


def test_1_library_extra_body_follows_the_same_rule(tmp_path: Path) -> None:
    """complete(**params) refuses an extra_body that overrides a checked parameter."""
    with gateway(tmp_path) as (_, upstream, _ledger, engine):
        for extra in ({"max_tokens": 100_000}, {"n": 50}, {"timeout": 0.0001}):
            with pytest.raises(RequestError) as info:
                engine.complete("faq", "q", max_tokens=1, extra_body=extra)
            assert info.value.param == f"extra_body.{next(iter(extra))}"
        with pytest.raises(RequestError, match="max_output_tokens 100"):
            engine.complete("faq", "q", max_tokens=100_000)
        assert upstream.requests == []


# -- 2. negative max_tokens ------------------------------------------------------------------------

def test_2_negative_max_tokens_is_refused_and_frees_nothing(tmp_path: Path) -> None:
    """A negative (or zero, or boolean) max_tokens is a 400; the budget is untouched."""
    with gateway(tmp_path) as (url, upstream, ledger, engine):
        for value in (-1_000_000, 0, True, 1.5):
            response = post(url, {"model": "faq", "messages": ASK, "max_tokens": value})
            assert response.status_code == 400, value
            assert "max_tokens" in response.json()["error"]["message"]
        with pytest.raises(RequestError, match="positive integer"):
            engine.complete("faq", "q", max_tokens=-5)
        with pytest.raises(RequestError, match="deadline_s: must be a positive"):
            engine.complete("faq", "q", deadline_s=-1)
        assert upstream.requests == []
        assert ledger_rows(ledger, "SELECT * FROM steps") == []
        assert engine.limits.guard is not None
        assert all(engine.limits.guard.reserved(lim) == 0 for lim in engine.limits.guard.limits)


# -- 3. SDK transport options in the body -----------------------------------------------------------

@pytest.mark.parametrize("field", [{"timeout": 0.0001}, {"extra_headers": {"x-a": "b"}},
                                   {"extra_query": {"a": "b"}}])
def test_3_transport_options_are_refused_and_never_trip_the_breaker(
        tmp_path: Path, field: dict[str, Any]) -> None:
    """timeout/extra_headers/extra_query in the body are 400s; the next client is served."""
    with gateway(tmp_path) as (url, upstream, _, engine):
        engine.limits.breakers["openai"] = CircuitBreaker(1, 30)
        for _ in range(3):
            response = post(url, {"model": "faq", "messages": ASK, **field})
            assert response.status_code == 400
            assert f"{next(iter(field))}: unknown parameter" in response.json()["error"]["message"]
        assert upstream.requests == []
        upstream.script(MINI, [GOOD])
        with client(url) as api:
            raw = api.chat.completions.with_raw_response.create(model="faq", messages=ASK)
        assert raw.headers["x-cascade-model"] == "mini"


def test_3_operator_cannot_allow_transport_options(tmp_path: Path) -> None:
    """server.allow_params may not name a transport option or an engine argument."""
    config = attack_config(NOWHERE, tmp_path / "l.sqlite", allow_params=["timeout"])
    with pytest.raises(ConfigError, match=r"server\.allow_params"):
        Cascade.from_dict(config)


def test_3_client_deadline_timeouts_do_not_open_the_breaker(tmp_path: Path) -> None:
    """A timeout cut short by the request's deadline is not a provider fault."""
    with gateway(tmp_path, request_timeout_s=0.3) as (url, upstream, _, engine):
        engine.limits.breakers["openai"] = CircuitBreaker(1, 30)
        upstream.script(MINI, [Reply(GOOD, delay_s=1.0)])
        upstream.script(SONNET, [GOOD])
        response = post(url, {"model": "faq", "messages": ASK})
        assert response.status_code == 502
        assert "deadline" in response.json()["error"]["message"]
        assert engine.limits.breakers["openai"].open_for() is None


# -- 4. upstream usage that cannot be billed as reported -------------------------------------------

BAD_USAGE = {
    "negative": {"prompt_tokens": -1_000_000_000, "completion_tokens": 5, "total_tokens": 0},
    "string": {"prompt_tokens": "lots", "completion_tokens": 5, "total_tokens": 5},
    "above 2**63": {"prompt_tokens": 2**64, "completion_tokens": 5, "total_tokens": 2**64},
    "above max_tokens": {"prompt_tokens": 10, "completion_tokens": 5000, "total_tokens": 5010},
}


@pytest.mark.parametrize("usage", BAD_USAGE.values(), ids=BAD_USAGE.keys())
def test_4_invalid_usage_is_billed_at_the_worst_case(tmp_path: Path, usage: dict[str, Any]) -> None:
    """An error step billed at the reserved worst case, a breaker fault, failover; never a 500."""
    with gateway(tmp_path) as (url, upstream, ledger, engine):
        engine.limits.breakers["openai"] = CircuitBreaker(1, 30)
        upstream.script(MINI, [Reply(GOOD, usage=usage)])
        upstream.script(SONNET, [GOOD])
        with client(url) as api:
            raw = api.chat.completions.with_raw_response.create(model="faq", messages=ASK)
        assert raw.headers["x-cascade-model"] == "sonnet"
        rows = ledger_rows(ledger, "SELECT model, decision, attempts, cost_usd, error FROM steps"
                                   " ORDER BY step")
        worst = Price(**PRICEY).estimate(estimate_input_tokens(ASK, {"max_tokens": 100}), 100)
        assert rows[0][:3] == ("mini", "error", 1)  # not retried
        assert rows[0][3] == pytest.approx(worst)
        assert "invalid usage" in rows[0][4]
        assert engine.limits.breakers["openai"].open_for() is not None  # a provider fault
        metrics = httpx2.get(f"{url}/metrics", headers={"authorization": f"Bearer {KEY}"})
        assert metrics.status_code == 200
        assert spent(ledger) >= worst


def test_4_invalid_usage_on_the_only_rung_is_502_with_a_ledger_row(tmp_path: Path) -> None:
    """The paid call is in the ledger even when no rung answers."""
    with gateway(tmp_path, **DIRECT) as (url, upstream, ledger, _):
        upstream.script(MINI, [Reply(GOOD, usage=BAD_USAGE["string"])])
        response = post(url, {"model": "mini", "messages": ASK})
        assert response.status_code == 502
        rows = ledger_rows(ledger, "SELECT decision, cost_usd FROM steps")
        assert rows[0][0] == "error"
        assert rows[0][1] > 0


@pytest.mark.parametrize("usage", [
    {"input_tokens": -5, "output_tokens": 3},
    {"input_tokens": 10, "output_tokens": "many"},
    {"input_tokens": 10, "cache_read_input_tokens": 2**70, "output_tokens": 3},
], ids=["negative", "string", "huge cache read"])
def test_4_anthropic_invalid_usage_is_billed_at_the_worst_case(
        tmp_path: Path, usage: dict[str, Any]) -> None:
    """The Anthropic SDK path checks usage the same way."""
    with gateway(tmp_path, **DIRECT) as (url, upstream, ledger, _):
        upstream.script(SONNET, [Reply(GOOD, usage=usage)])
        response = post(url, {"model": "sonnet", "messages": ASK})
        assert response.status_code == 502
        rows = ledger_rows(ledger, "SELECT decision, cost_usd, error FROM steps")
        worst = Price(input=3.0, output=15.0).estimate(
            estimate_input_tokens(ASK, {"max_tokens": 256}), 256)
        assert rows[0][0] == "error"
        assert rows[0][1] == pytest.approx(worst)
        assert "invalid usage" in rows[0][2]


def test_4_anthropic_missing_usage_is_estimated(tmp_path: Path) -> None:
    with gateway(tmp_path, **DIRECT) as (url, upstream, ledger, _):
        upstream.script(SONNET, [Reply(GOOD, omit_usage=True)])
        assert post(url, {"model": "sonnet", "messages": ASK}).status_code == 200
        rows = ledger_rows(ledger, "SELECT input_tokens, output_tokens, usage_estimated"
                                   " FROM steps")
        assert rows == [(estimate_input_tokens(ASK, {"max_tokens": 256}), -(-len(GOOD) // 3), 1)]


def test_4_missing_usage_is_billed_at_the_estimate_and_marked(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A reply without usage costs the estimate, marked usage_estimated in step, ledger, report."""
    with gateway(tmp_path) as (url, upstream, ledger, _):
        upstream.script(MINI, [Reply(GOOD, omit_usage=True)])
        with client(url) as api:
            reply = api.chat.completions.create(model="faq", messages=ASK)
        assert reply.usage is not None and reply.usage.prompt_tokens > 0
        rows = ledger_rows(ledger, "SELECT model, decision, input_tokens, output_tokens,"
                                   " cost_usd, usage_estimated FROM steps")
        tokens_in = estimate_input_tokens(ASK, {"max_tokens": 100})
        tokens_out = -(-len(GOOD) // 3)
        assert rows == [("mini", "accept", tokens_in, tokens_out,
                         pytest.approx(Price(**PRICEY).estimate(tokens_in, tokens_out)), 1)]
    capsys.readouterr()  # drop the gateway's log lines
    assert main(["report", "--ledger", str(ledger), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tasks"]["faq"]["usage_estimated"] == 1
    assert report["tasks"]["faq"]["models"]["mini"]["usage_estimated"] == 1


# -- 5. huge bodies and message counts -------------------------------------------------------------

def test_5_body_over_the_limit_is_413_before_it_is_read(tmp_path: Path) -> None:
    """A declared 50 MB body is refused at once; a chunked one as soon as it passes the limit."""
    with gateway(tmp_path, max_body_bytes=64 * 1024) as (url, upstream, _, _engine):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                         b"authorization: Bearer " + KEY.encode() + b"\r\n"
                         b"content-type: application/json\r\ncontent-length: 50000000\r\n\r\n{")
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413")
        assert b"server.max_body_bytes" in answer

        def chunks() -> Iterator[bytes]:
            yield b'{"model": "faq", "messages": [{"role": "user", "content": "'
            for _ in range(200):
                yield b"x" * 1024
            yield b'"}]}'

        response = httpx2.post(f"{url}/v1/chat/completions", content=chunks(), timeout=30,
                               headers={"authorization": f"Bearer {KEY}"})
        assert response.status_code == 413
        assert upstream.requests == []


def test_5_message_count_is_capped_without_stalling_the_server(tmp_path: Path) -> None:
    """100k messages: 400 naming the count; /healthz answers meanwhile; a body at the limits
    is served."""
    with gateway(tmp_path, **DIRECT) as (url, upstream, _, _engine):
        many = {"model": "faq", "messages": [{"role": "user", "content": "hi"}] * 100_000}
        response = post(url, many)
        assert response.status_code == 400
        assert "100,000 messages, more than 1,000 (server.max_messages)" in (
            response.json()["error"]["message"])
        assert httpx2.get(f"{url}/healthz").json() == {"status": "ok"}
        upstream.script(SONNET, [GOOD])
        # 3 MB in 1,000 messages, the most allowed: served (sonnet alone fits the $10 budget).
        full = {"model": "sonnet", "max_tokens": 50,
                "messages": [{"role": "user", "content": "y" * 3000}] * 1000}
        response = post(url, full)
        assert response.status_code == 200, response.text
        assert len(upstream.calls(SONNET)[0]["body"]["messages"]) == 1000


def test_5_json_values_are_capped_and_short_bodies_skip_the_count() -> None:
    """A body of more than MAX_JSON_VALUES values is refused; one that cannot hold that many
    (fewer bytes than the cap) is accepted without being counted."""
    from cascade.gateway.limits import MAX_JSON_VALUES, BodyRefused, parse_chat_request

    parts = [{"type": "text", "text": ""}] * (MAX_JSON_VALUES // 3 + 10)
    raw = json.dumps({"model": "faq", "messages": [{"role": "user", "content": parts}]}).encode()
    refused = parse_chat_request(raw, 1000)
    assert isinstance(refused, BodyRefused) and refused.status == 400
    assert f"more than {MAX_JSON_VALUES:,}" in refused.message
    small = json.dumps({"model": "faq", "messages": [{"role": "user", "content": "hi"}]})
    assert not isinstance(parse_chat_request(small.encode(), 1000), BodyRefused)


# -- 6. slow clients and connection floods ---------------------------------------------------------

def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def test_6_slow_headers_are_cut_off(tmp_path: Path) -> None:
    """A client still sending headers (or silent) after client_timeout_s is disconnected by the
    gateway's header deadline (one cascade.slow_client event each), not by the client's own
    10 s socket timeout, which would raise instead."""
    from structlog.testing import capture_logs

    with gateway(tmp_path, client_timeout_s=0.3) as (url, _, _ledger, _engine), \
            capture_logs() as logs:
        slow = [_connect(url) for _ in range(20)]
        for sock in slow[:10]:  # the other ten send nothing at all
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        for sock in slow:
            assert sock.recv(1024) == b""  # closed by the gateway
            sock.close()
        assert httpx2.get(f"{url}/healthz").status_code == 200
    cuts = [e for e in logs if e["event"] == "cascade.slow_client"]
    assert len(cuts) == 20
    assert {e["client_timeout_s"] for e in cuts} == {0.3}


def test_6_slow_body_is_408(tmp_path: Path) -> None:
    """Headers in, body trickling: 408 after client_timeout_s."""
    with gateway(tmp_path, client_timeout_s=0.3) as (url, upstream, _, _engine):
        with _connect(url) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                         b"authorization: Bearer " + KEY.encode() + b"\r\n"
                         b"content-length: 100\r\n\r\n{")
            assert sock.recv(65536).startswith(b"HTTP/1.1 408")
        assert upstream.requests == []


def test_6_connections_over_the_cap_get_503_but_healthz_answers(tmp_path: Path) -> None:
    """Past max_connections: 503 for the API, /healthz still answers, and held sockets are cut."""
    with gateway(tmp_path, max_connections=3, client_timeout_s=2.0) as (url, _, _ledger, _e):
        held = [_connect(url) for _ in range(3)]
        for sock in held:
            # One answered request proves the server holds the connection; the second request
            # never finishes its headers.
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /v1/models HTTP/1.1\r\n")
        over = httpx2.get(f"{url}/v1/models", headers={"authorization": f"Bearer {KEY}"})
        assert over.status_code == 503
        assert over.json()["error"]["code"] == "overloaded"
        assert httpx2.get(f"{url}/healthz").json() == {"status": "ok"}
        for sock in held:
            assert sock.recv(1024) == b""  # cut after client_timeout_s
            sock.close()
        after = httpx2.get(f"{url}/v1/models", headers={"authorization": f"Bearer {KEY}"})
        assert after.status_code == 200


# -- 7. an upstream that trickles ------------------------------------------------------------------

def test_7_timeout_s_bounds_the_whole_call(tmp_path: Path) -> None:
    """An upstream sending a byte every 50 ms is cut at timeout_s (for the whole call, not per
    read: the body would take about 20 s); the ladder fails over."""
    ledger = tmp_path / "ledger.sqlite"
    with pytest.MonkeyPatch.context() as env, MockLLMServer() as upstream:
        env.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
        env.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)
        config = attack_config(upstream, ledger)
        config["providers"]["openai"]["timeout_s"] = 0.5
        upstream.script(MINI, [Reply(GOOD, trickle_s=0.05)])  # ~20 s for the whole body
        upstream.script(SONNET, [GOOD])
        engine = Cascade.from_dict(config, sleep=lambda s: None, asleep=_no_sleep)
        try:
            with running(create_app(engine, api_keys=[KEY])) as url, client(url) as api:
                raw = api.chat.completions.with_raw_response.create(model="faq", messages=ASK)
            # Sync path too: the library's complete() has the same whole-call deadline.
            upstream.script(MINI, [Reply(GOOD, trickle_s=0.05)])
            result = engine.complete("faq", "q")
        finally:
            engine.close()
    assert raw.headers["x-cascade-model"] == "sonnet"  # mini's answer would have come whole
    rows = ledger_rows(ledger, "SELECT model, decision, error FROM steps ORDER BY ts")
    assert rows[0][:2] == ("mini", "error")
    assert "timed out after 0.5s" in rows[0][2]
    assert result.model == "sonnet"
    assert "timed out" in (result.steps[0].error or "")


def test_7_request_timeout_bounds_the_cascade(tmp_path: Path) -> None:
    """server.request_timeout_s is the run's deadline: later rungs are skipped once it passes."""
    with gateway(tmp_path, request_timeout_s=0.5) as (url, upstream, ledger, _):
        upstream.script(MINI, [Reply("late", delay_s=0.7)])  # one word: rejected anyway
        upstream.script(SONNET, [GOOD])
        response = post(url, {"model": "faq", "messages": ASK})
        assert response.status_code == 502
        rows = ledger_rows(ledger, "SELECT model, decision, error FROM steps ORDER BY step")
        assert [r[:2] for r in rows] == [("mini", "error"), ("sonnet", "skip")]
        assert "deadline" in rows[1][2]
        assert upstream.calls(SONNET) == []


# -- 8. YAML alias bombs ---------------------------------------------------------------------------

BOMB = "".join(f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n"
               for a, b in zip("abcdefgh", "bcdefghi", strict=True))


@pytest.mark.usefixtures("keys")
def test_8_alias_bomb_is_a_config_error_everywhere(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A 740-byte file of nested aliases fails validate and serve in one line, exit code 2."""
    data = attack_config(NOWHERE, tmp_path / "l.sqlite")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + BOMB
    assert len(bomb) < 800  # stands for 10**9 strings
    text = bomb + yaml.safe_dump(data)
    text = text.replace("max_cost_usd: 0.2", "max_cost_usd: 0.2\n    params: {x: *i}")
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    for argv in (["validate", str(path)], ["serve", str(path), "--port", "0"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "aliases expand to more than 100,000 nodes" in err
    with pytest.raises(ConfigError, match="alias"):
        Cascade.from_yaml(path)


# -- 9. a ledger path that cannot be opened --------------------------------------------------------

@pytest.mark.usefixtures("keys")
def test_9_unopenable_ledger_is_one_line_naming_ledger_path(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A directory, or a path under a regular file: validate and serve say so in one line."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for where in (tmp_path, afile / "ledger.sqlite"):
        data = attack_config(NOWHERE, Path(where))
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(data))
        for argv in (["validate", str(path)], ["serve", str(path), "--port", "0"]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1, err
            assert "ledger.path: cannot open the ledger" in err
        with pytest.raises(ConfigError, match=r"ledger\.path"):
            Cascade.from_yaml(path)


# -- 10. the gateway's own 401 --------------------------------------------------------------------

def test_10_401_text_is_not_garbled(tmp_path: Path) -> None:
    """The scrubber leaves the gateway's own text alone; a sent key is never echoed."""
    with gateway(tmp_path) as (url, _, _ledger, _engine):
        with client(url, api_key="sk-wrong-key-123456789") as api, \
                pytest.raises(openai.AuthenticationError) as info:
            api.chat.completions.create(model="faq", messages=ASK)
        assert info.value.body["message"] == (  # type: ignore[index]
            "invalid or missing API key: send 'Authorization: Bearer <key>' with one of the "
            "gateway's keys")
        assert "sk-wrong" not in str(info.value.body)


# -- operator visibility ---------------------------------------------------------------------------

def test_serve_warns_about_unset_keys_and_logs_each_request(tmp_path: Path) -> None:
    """One warning per unset key variable at start; one access line per request."""
    data = attack_config(NOWHERE, tmp_path / "l.sqlite")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from cascade.cli import main; sys.exit(main())",
         "--log-level", "info", "--log-json", "serve", str(path), "--port", "0"],
        stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline() for _ in range(3)]
        assert sorted(lines[:2]) == [
            "warning: providers.anthropic: environment variable ANTHROPIC_API_KEY is not set\n",
            "warning: providers.openai: environment variable OPENAI_API_KEY is not set\n"]
        url = lines[2].split()[4]
        assert httpx2.get(f"{url}/healthz").status_code == 200
        assert httpx2.post(f"{url}/v1/chat/completions", json={"model": "nope",
                                                              "messages": ASK}).status_code == 404
        events: list[dict[str, Any]] = []
        while len(events) < 2:  # the access lines (cascade.serving comes at start-up)
            event = json.loads(proc.stderr.readline())
            if event["event"] == "cascade.access":
                events.append(event)
        proc.terminate()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert [(e["event"], e["level"], e["status"], e["path"]) for e in events] == [
        ("cascade.access", "info", 200, "/healthz"),
        ("cascade.access", "warning", 404, "/v1/chat/completions")]
    assert {"task", "model", "cost_usd", "latency_ms", "run_id"} <= events[1].keys()


def test_access_line_names_task_model_cost_and_run(tmp_path: Path) -> None:
    """A served request's access line carries what it ran and what it cost."""
    from structlog.testing import capture_logs

    with gateway(tmp_path) as (url, upstream, _, _engine):
        upstream.script(MINI, [GOOD])
        with capture_logs() as logs, client(url) as api:
            raw = api.chat.completions.with_raw_response.create(model="faq", messages=ASK)
    access = [e for e in logs if e["event"] == "cascade.access"]
    assert len(access) == 1
    line = access[0]
    assert (line["log_level"], line["status"], line["task"], line["model"]) == (
        "info", 200, "faq", "mini")
    assert line["run_id"] == raw.headers["x-cascade-run-id"]
    assert line["cost_usd"] == pytest.approx(float(raw.headers["x-cascade-cost-usd"]))


@pytest.mark.usefixtures("keys")
def test_serve_stops_cleanly_on_ctrl_c_to_its_process_group(tmp_path: Path) -> None:
    """Ctrl-C reaches the body-parsing worker too: exit 0 and nothing on stderr."""
    import signal

    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(attack_config(NOWHERE, tmp_path / "l.sqlite")))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cascade.cli", "serve", str(path), "--port", "0"],
        stderr=subprocess.PIPE, text=True, start_new_session=True,
        cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stderr is not None
        url = proc.stderr.readline().split()[4]
        assert httpx2.get(f"{url}/healthz").status_code == 200
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
