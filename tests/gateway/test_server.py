"""The OpenAI-compatible gateway, driven by the official ``openai`` SDK over real HTTP.

The gateway runs on uvicorn in a background thread; its engine calls a loopback upstream
(``MockLLMServer``) that speaks the OpenAI and Anthropic formats, so the whole path is the one a
production client takes, with no network. One gateway serves the whole module (starting and
stopping uvicorn costs a few tenths of a second); each test scripts the upstream afresh and
reads metrics as differences.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import httpx2
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from cascade import Cascade, ConfigError
from cascade.cli.serve import is_loopback, register
from cascade.gateway.app import create_app, running
from cascade.gateway.wire import format_cost, split_text
from cascade.gateway.workers import load_serve_config
from cascade.ledger.writer import flush_all
from cascade.providers.sdk import SDKProvider
from cascade.testing import MockLLMServer, Reply
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, live_config

KEY, OTHER_KEY = "gw-test-key-1", "gw-test-key-2"
MINI, SONNET = "gpt-4o-mini", "claude-sonnet-4-6"
ASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What are your opening hours?"}]
GOOD = "We are open from nine to five"
NOWHERE = SimpleNamespace(openai_url="http://127.0.0.1:9/v1", anthropic_url="http://127.0.0.1:9")


class Upstream:
    """The replies of the shared loopback upstream, per model, reset before every test.

    It answers as ``MockLLMServer``'s responder, so nothing one test scripts outlives it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._replies: dict[str, list[Reply]] = {}
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, model: str, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.seen.append((model, body))
            queue = self._replies.get(model) or [Reply("ok")]
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def script(self, model: str, *replies: Reply | str) -> None:
        self._replies[model] = [r if isinstance(r, Reply) else Reply(r) for r in replies]

    def reset(self) -> None:
        with self._lock:
            self._replies.clear()
            self.seen.clear()

    def calls(self, model: str) -> list[dict[str, Any]]:
        return [body for m, body in self.seen if m == model]


@dataclass
class Gateway:
    url: str          # base URL of /v1
    upstream: Upstream
    ledger: Path
    server: MockLLMServer

    def client(self, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=options.pop("api_key", KEY), **options)

    def post(self, body: dict[str, Any], **headers: str) -> httpx2.Response:
        return httpx2.post(f"{self.url}/chat/completions", json=body,
                           headers={"authorization": f"Bearer {KEY}", **headers})

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when the series does not exist yet)."""
        text = httpx2.get(self.url.removesuffix("/v1") + "/metrics",
                          headers={"authorization": f"Bearer {KEY}"}).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def steps(self, run_id: str) -> list[tuple[str, str, str]]:
        flush_all()  # rows written behind the response by the ledger's writer thread
        with sqlite3.connect(self.ledger) as db:
            return db.execute("SELECT task, model, decision FROM steps WHERE run_id = ?"
                              " ORDER BY step", (run_id,)).fetchall()


async def _no_sleep(seconds: float) -> None:
    return None


@contextmanager
def serving(config: dict[str, Any], **app_options: Any) -> Iterator[tuple[str, Cascade]]:
    """Serve ``config`` on an ephemeral loopback port; yields (base URL of /v1, engine)."""
    engine = Cascade.from_dict(config, sleep=lambda s: None, asleep=_no_sleep)
    try:
        with running(create_app(engine, **app_options)) as url:
            yield f"{url}/v1", engine
    finally:
        engine.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One upstream and one gateway: tasks faq (mini -> sonnet), budget, strict and slow."""
    upstream = Upstream()
    ledger = tmp_path_factory.mktemp("gateway") / "ledger.sqlite"
    with pytest.MonkeyPatch.context() as env, MockLLMServer(upstream) as server:
        env.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
        env.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)
        config = live_config(server, attempts=1, ledger=str(ledger))
        faq = config["tasks"]["faq"]
        config["tasks"].update(budget={**faq, "max_cost_usd": 1e-9},
                               strict={**faq, "on_exhausted": "raise"}, slow=faq)
        # direct_models: test_bare_model_key_calls_that_model_alone and the model list rely on it.
        config["server"] = {"allow_params": ["vendor_knob"], "direct_models": True,
                            "direct_max_cost_usd": 1.0}
        with serving(config, api_keys=[KEY, OTHER_KEY]) as (url, _):
            yield Gateway(url, upstream, ledger, server)


@pytest.fixture
def gw(shared: Gateway) -> Gateway:
    shared.upstream.reset()
    return shared


@pytest.fixture
def escalating(gw: Gateway) -> Gateway:
    """mini's answer fails the length check (one word), sonnet's passes."""
    gw.upstream.script(MINI, "REJECTED")
    gw.upstream.script(SONNET, GOOD)
    return gw


# -- the answer and its headers -------------------------------------------------------------------

def test_escalation_visible_in_headers(escalating: Gateway) -> None:
    """A rejected first rung shows as two steps, the answering model and the summed cost."""
    with escalating.client() as api:
        raw = api.chat.completions.with_raw_response.create(model="faq", messages=ASK)
        completion = raw.parse()
    assert raw.headers["x-cascade-model"] == "sonnet"
    assert raw.headers["x-cascade-steps"] == "2"
    assert raw.headers["x-cascade-accepted"] == "true"
    # mini: 10 in + 1 out at 0.15/0.60; sonnet: 10 in + 7 out at 3/15 (USD per 1M tokens)
    assert raw.headers["x-cascade-cost-usd"] == "0.0001371"
    assert escalating.steps(raw.headers["x-cascade-run-id"]) == [
        ("faq", "mini", "escalate"), ("faq", "sonnet", "accept")]
    assert completion.model == "sonnet"
    assert completion.choices[0].message.content == GOOD
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (20, 8)


def test_first_rung_accepted(gw: Gateway) -> None:
    """An answer accepted at the first rung costs one step and never reaches the second."""
    gw.upstream.script(MINI, GOOD)
    with gw.client() as api:
        raw = api.chat.completions.with_raw_response.create(model="cascade/faq", messages=ASK)
    assert (raw.headers["x-cascade-model"], raw.headers["x-cascade-steps"]) == ("mini", "1")
    assert not gw.upstream.calls(SONNET)


def test_return_last_is_marked_not_accepted(gw: Gateway) -> None:
    """When no rung passes, return_last answers with x-cascade-accepted: false."""
    gw.upstream.script(MINI, "no")
    gw.upstream.script(SONNET, "nope")
    with gw.client() as api:
        raw = api.chat.completions.with_raw_response.create(model="faq", messages=ASK)
    assert raw.headers["x-cascade-accepted"] == "false"
    assert raw.parse().choices[0].message.content == "nope"


def test_bare_model_key_calls_that_model_alone(gw: Gateway) -> None:
    """model=<models: key> calls one model, recorded in the ledger as a normal one-step run."""
    gw.upstream.script(SONNET, "ok")  # one word: no evaluator applies to a direct call
    with gw.client() as api:
        raw = api.chat.completions.with_raw_response.create(model="sonnet", messages=ASK)
    assert (raw.headers["x-cascade-model"], raw.headers["x-cascade-steps"]) == ("sonnet", "1")
    assert [model for model, _ in gw.upstream.seen] == [SONNET]
    assert gw.steps(raw.headers["x-cascade-run-id"]) == [("__model__sonnet", "sonnet", "accept")]


# -- streaming ------------------------------------------------------------------------------------

def test_stream_never_sends_the_rejected_answer(escalating: Gateway) -> None:
    """The stream carries only the accepted answer, then usage, then [DONE]; headers included."""
    with escalating.client() as api:
        raw = api.chat.completions.with_raw_response.create(
            model="faq", messages=ASK, stream=True, stream_options={"include_usage": True})
        chunks = list(raw.parse())
    assert raw.headers["x-cascade-model"] == "sonnet"
    assert raw.headers["x-cascade-steps"] == "2"
    assert raw.headers["content-type"].startswith("text/event-stream")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == GOOD
    assert all("REJECTED" not in c.model_dump_json() for c in chunks)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 28


def test_stream_wire_format(escalating: Gateway) -> None:
    """Raw SSE: data lines of chat.completion.chunk, ending with data: [DONE]; no usage unasked."""
    response = escalating.post({"model": "faq", "messages": ASK, "stream": True})
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert all("usage" not in c for c in chunks)
    assert "REJECTED" not in response.text


def test_async_client_plain_and_streaming(escalating: Gateway) -> None:
    """AsyncOpenAI gets the same answer and headers, streamed or not."""
    async def scenario() -> tuple[Any, str]:
        async with openai.AsyncOpenAI(base_url=escalating.url, api_key=KEY) as api:
            raw = await api.chat.completions.with_raw_response.create(model="faq", messages=ASK)
            stream = await api.chat.completions.create(model="faq", messages=ASK, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream])
            return raw, text

    raw, streamed = asyncio.run(scenario())
    assert raw.headers["x-cascade-model"] == "sonnet"
    assert raw.parse().choices[0].message.content == GOOD
    assert streamed == GOOD


def test_split_text_joins_back() -> None:
    """Streamed pieces join back to exactly the answer, whitespace included."""
    for text in ["", "one", "  lead and trail  ", "a b c d e f g h i", "line\n\nbreaks\there"]:
        assert "".join(split_text(text)) == text


def test_cost_header_is_a_plain_decimal() -> None:
    """Costs never use exponent notation and keep at least 1e-10 USD of precision."""
    assert format_cost(2.7e-06) == "0.0000027"
    assert format_cost(1.234e-10) == "0.000000000123"
    assert format_cost(0.0) == "0"
    assert format_cost(12.5) == "12.5"


@pytest.mark.usefixtures("keys")
def test_the_app_loads_the_sdks_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the app imports each provider's SDK, which providers otherwise import on their
    first call: the first request must not wait for that import on the event loop."""
    loaded: list[str] = []
    real = SDKProvider.load_sdk

    def recording(self: SDKProvider[Any, Any]) -> ModuleType:
        loaded.append(self.name)
        return real(self)

    monkeypatch.setattr(SDKProvider, "load_sdk", recording)
    with Cascade.from_dict(live_config(NOWHERE), ledger=False) as engine:
        assert loaded == []  # building the engine (cascade validate) imports no SDK
        create_app(engine, api_keys=[KEY])
    assert sorted(loaded) == ["anthropic", "openai"]


# -- parameters -----------------------------------------------------------------------------------

def test_params_reach_both_providers(escalating: Gateway) -> None:
    """temperature, max_tokens, stop and allowed extra fields reach the OpenAI and Anthropic rung."""
    with escalating.client() as api:
        api.chat.completions.create(
            model="faq", messages=[{"role": "system", "content": "Be brief."}, *ASK],
            temperature=0.25, max_tokens=77, top_p=0.5, stop=["END"],
            response_format={"type": "text"}, extra_body={"vendor_knob": 3})
    sent = escalating.upstream.calls(MINI)[0]
    assert sent["temperature"] == 0.25
    assert sent["max_tokens"] == 77
    assert sent["top_p"] == 0.5
    assert sent["stop"] == ["END"]
    assert sent["response_format"] == {"type": "text"}
    assert sent["vendor_knob"] == 3
    claude = escalating.upstream.calls(SONNET)[0]  # the Anthropic Messages format
    assert claude["temperature"] == 0.25
    assert claude["max_tokens"] == 77
    assert claude["stop_sequences"] == ["END"]
    assert claude["system"] == "Be brief."
    assert "response_format" not in claude  # OpenAI-only, dropped for Anthropic


@pytest.mark.parametrize(("body", "where"), [
    ({"messages": ASK}, "model"),
    ({"model": "faq"}, "messages"),
    ({"model": "faq", "messages": []}, "messages"),
    ({"model": "faq", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"model": "faq", "messages": ASK, "stream": "yes"}, "stream"),
    ({"model": "faq", "messages": ASK, "n": 2}, "n"),
    ({"model": "faq", "messages": ASK, "log_content": True}, "log_content: unknown parameter"),
])
def test_invalid_body_is_400(gw: Gateway, body: dict[str, Any], where: str) -> None:
    """A body that is not a chat completion request gets 400 saying which field is wrong."""
    with gw.client() as api, pytest.raises(openai.BadRequestError) as info:
        api.post("/chat/completions", body=body, cast_to=object)
    assert info.value.code == "invalid_request"
    assert where in info.value.message
    assert not gw.upstream.seen


def test_body_that_is_not_json_is_400(gw: Gateway) -> None:
    """A body that is not JSON at all gets 400 in the OpenAI error shape."""
    response = httpx2.post(f"{gw.url}/chat/completions", content=b"{nope",
                           headers={"authorization": f"Bearer {KEY}"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


# -- errors ---------------------------------------------------------------------------------------

def test_auth(gw: Gateway) -> None:
    """A missing or wrong key gets 401 (OpenAI shape); /healthz needs none, /metrics does."""
    gw.upstream.script(MINI, GOOD)
    with gw.client(api_key="wrong-key") as api, pytest.raises(openai.AuthenticationError) as info:
        api.chat.completions.create(model="faq", messages=ASK)
    assert info.value.code == "invalid_api_key"
    assert "wrong-key" not in info.value.message
    for headers in [{}, {"authorization": KEY}, {"authorization": f"Basic {KEY}"}]:
        response = httpx2.post(f"{gw.url}/chat/completions", headers=headers,
                               json={"model": "faq", "messages": ASK})
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    root = gw.url.removesuffix("/v1")
    assert httpx2.get(f"{root}/healthz").json() == {"status": "ok"}
    assert httpx2.get(f"{root}/metrics").status_code == 401
    assert httpx2.get(f"{gw.url}/models").status_code == 401
    assert not gw.upstream.seen
    for key in [KEY, OTHER_KEY]:
        with gw.client(api_key=key) as api:
            assert api.chat.completions.create(model="faq", messages=ASK).choices


def test_unknown_task_or_model_is_404(gw: Gateway) -> None:
    """An unknown name is 404; cascade/<model key> is 404 too, since cascade/X names a task."""
    with gw.client() as api:
        for name in ["nope", "cascade/mini", "cascade/"]:
            with pytest.raises(openai.NotFoundError) as info:
                api.chat.completions.create(model=name, messages=ASK)
            assert info.value.code == "model_not_found"
            assert repr(name) in info.value.message
    assert not gw.upstream.seen


def test_budget_is_429_and_not_retried(gw: Gateway) -> None:
    """A request no rung can afford is 429 budget_exceeded with x-should-retry: false."""
    before = gw.metric("cascade_requests_total", task="budget", status="budget_exceeded")
    with gw.client() as api, pytest.raises(openai.RateLimitError) as info:
        api.chat.completions.create(model="budget", messages=ASK)  # SDK default: 2 retries
    assert info.value.code == "budget_exceeded"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert "max_cost_usd" in info.value.message
    assert not gw.upstream.seen
    after = gw.metric("cascade_requests_total", task="budget", status="budget_exceeded")
    assert after - before == 1


def test_no_answer_is_502_and_not_retried(gw: Gateway) -> None:
    """When every rung fails, 502 cascade_exhausted; the SDK does not rerun the ladder."""
    gw.upstream.script(MINI, Reply(status=500))
    gw.upstream.script(SONNET, Reply(status=500))
    with gw.client() as api, pytest.raises(openai.InternalServerError) as info:
        api.chat.completions.create(model="faq", messages=ASK)
    assert info.value.status_code == 502
    assert info.value.code == "cascade_exhausted"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert "no rung produced an answer" in info.value.message
    assert len(gw.upstream.seen) == 2  # one call per rung, one run
    headers = info.value.response.headers
    assert (headers["x-cascade-steps"], headers["x-cascade-accepted"]) == ("2", "false")
    assert "x-cascade-model" not in headers
    assert gw.steps(headers["x-cascade-run-id"]) == [("faq", "mini", "error"),
                                                     ("faq", "sonnet", "error")]


def test_on_exhausted_raise_is_502(gw: Gateway) -> None:
    """on_exhausted: raise turns an all-rejected ladder into 502 cascade_exhausted."""
    gw.upstream.script(MINI, "no")
    gw.upstream.script(SONNET, "nope")
    with gw.client() as api, pytest.raises(openai.InternalServerError) as info:
        api.chat.completions.create(model="strict", messages=ASK)
    assert (info.value.status_code, info.value.code) == (502, "cascade_exhausted")
    assert "no rung passed" in info.value.message
    assert info.value.response.headers["x-cascade-model"] == "sonnet"
    assert float(info.value.response.headers["x-cascade-cost-usd"]) > 0


def test_error_messages_never_carry_provider_keys(gw: Gateway) -> None:
    """An upstream that echoes the provider keys does not get them through to the client."""
    echo = Reply(status=500, message=f"bad auth {FAKE_OPENAI_KEY} {FAKE_ANTHROPIC_KEY}")
    gw.upstream.script(MINI, echo)
    gw.upstream.script(SONNET, echo)
    response = gw.post({"model": "faq", "messages": ASK})
    assert response.status_code == 502
    assert "SECRET" not in response.text


def test_missing_provider_key_is_500_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset provider key is the operator's mistake: 500 config_error naming the variable."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = live_config(NOWHERE)  # type: ignore[arg-type]
    with serving(config, api_keys=[KEY]) as (url, _), \
            openai.OpenAI(base_url=url, api_key=KEY) as api, \
            pytest.raises(openai.InternalServerError) as info:
        api.chat.completions.create(model="faq", messages=ASK)
    assert info.value.code == "config_error"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert "OPENAI_API_KEY" in info.value.message


# -- models and metrics ---------------------------------------------------------------------------

def test_models_lists_tasks_and_model_keys(gw: Gateway) -> None:
    """GET /v1/models lists cascade/<task> for each task and each models: key."""
    with gw.client() as api:
        ids = [m.id for m in api.models.list()]
        assert api.models.retrieve("cascade/faq").owned_by == "cascade"
        assert api.models.retrieve("faq").id == "cascade/faq"
        assert api.models.retrieve("sonnet").owned_by == "anthropic"
        with pytest.raises(openai.NotFoundError):
            api.models.retrieve("nope")
    assert ids == ["cascade/faq", "cascade/budget", "cascade/strict", "cascade/slow",
                   "mini", "mid", "sonnet"]


def test_metrics_count_what_happened(gw: Gateway) -> None:
    """Requests, escalations, cost per model, latency and errors add up to what was served."""
    names = [("cascade_requests_total", {"task": "faq", "status": "accepted"}),
             ("cascade_escalations_total", {"task": "faq", "rung": "mini"}),
             ("cascade_escalations_total", {"task": "faq", "rung": "sonnet"}),
             ("cascade_cost_usd_total", {"task": "faq", "model": "mini"}),
             ("cascade_cost_usd_total", {"task": "faq", "model": "sonnet"}),
             ("cascade_request_latency_seconds_count", {"task": "faq"}),
             ("cascade_errors_total", {"class": "UnknownModel"}),
             ("cascade_errors_total", {"class": "Unauthorized"})]
    before = [gw.metric(name, **labels) for name, labels in names]
    gw.upstream.script(MINI, "REJECTED", GOOD)
    gw.upstream.script(SONNET, GOOD)
    with gw.client() as api:
        escalated = api.chat.completions.with_raw_response.create(model="faq", messages=ASK)
        api.chat.completions.create(model="faq", messages=ASK)  # accepted at mini
        with pytest.raises(openai.NotFoundError):
            api.chat.completions.create(model="nope", messages=ASK)
    with gw.client(api_key="bad") as intruder, pytest.raises(openai.AuthenticationError):
        intruder.chat.completions.create(model="faq", messages=ASK)
    delta = [gw.metric(name, **labels) - b for (name, labels), b in zip(names, before, strict=True)]
    requests, past_mini, past_sonnet, mini_usd, sonnet_usd, timed, unknown, denied = delta
    assert (requests, past_mini, past_sonnet, timed, unknown, denied) == (2, 1, 0, 2, 1, 1)
    # the second request: 10 in + 7 out at mini's prices
    second = (10 * 0.15 + 7 * 0.60) / 1e6
    assert mini_usd + sonnet_usd == pytest.approx(
        float(escalated.headers["x-cascade-cost-usd"]) + second)


# -- disconnects ----------------------------------------------------------------------------------

def _ledger_rows(path: Path, task: str, timeout_s: float = 10.0) -> tuple[list[Any], list[Any]]:
    """The task's steps and runs rows, once its run row has been written."""
    deadline = time.monotonic() + timeout_s
    while True:
        flush_all()  # rows the ledger's writer thread has queued
        with sqlite3.connect(path) as db:
            runs = db.execute("SELECT model, status, steps FROM runs WHERE task = ?",
                              (task,)).fetchall()
            steps = db.execute("SELECT model, decision FROM steps WHERE task = ? ORDER BY step",
                               (task,)).fetchall()
        if runs or time.monotonic() > deadline:
            return steps, runs
        time.sleep(0.02)


def test_client_disconnect_keeps_ledger_rows(gw: Gateway) -> None:
    """A client that gives up mid-ladder leaves every step the ladder took in the ledger."""
    gw.upstream.script(MINI, Reply("REJECTED", delay_s=0.4))
    gw.upstream.script(SONNET, GOOD)
    with gw.client(timeout=0.15, max_retries=0) as api, pytest.raises(openai.APITimeoutError):
        api.chat.completions.create(model="slow", messages=ASK)
    steps, runs = _ledger_rows(gw.ledger, "slow")
    assert steps == [("mini", "escalate"), ("sonnet", "accept")]
    assert runs == [("sonnet", "ok", 2)]


def test_cancelled_request_does_not_cancel_the_run(gw: Gateway, tmp_path: Path) -> None:
    """Even a server that cancels the request on disconnect does not cut the run short."""
    ledger = tmp_path / "ledger.sqlite"
    upstream = gw.upstream
    upstream.script(MINI, Reply("REJECTED", delay_s=0.2))
    upstream.script(SONNET, GOOD)
    body = json.dumps({"model": "faq", "messages": ASK}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80), "headers": [(b"content-type", b"application/json")]}
    sent: list[Any] = []

    async def scenario(engine: Cascade) -> None:
        app = create_app(engine, api_keys=[])
        gone = asyncio.Event()
        inbox = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if inbox:
                return inbox.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(message)

        request = asyncio.ensure_future(app(scope, receive, send))
        while not upstream.calls(MINI):
            await asyncio.sleep(0.01)
        gone.set()
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await app.state.gateway.drain(10)
        await engine.aclose()

    with Cascade.from_dict(live_config(gw.server, ledger=str(ledger))) as engine:
        asyncio.run(scenario(engine))
    assert sent == []
    steps, runs = _ledger_rows(ledger, "faq", timeout_s=0)
    assert steps == [("mini", "escalate"), ("sonnet", "accept")]
    assert runs == [("sonnet", "ok", 2)]


# -- cascade serve --------------------------------------------------------------------------------

def _config_file(tmp_path: Path, **section: Any) -> Path:
    """A config file for the serve command; its upstream is never called."""
    data = live_config(NOWHERE)  # type: ignore[arg-type]
    if section:
        data["server"] = section
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


@pytest.mark.parametrize("section", [{}, {"api_keys_env": "GW_KEYS_UNSET"}])
def test_serve_refuses_public_address_without_keys(tmp_path: Path,
                                                   section: dict[str, str]) -> None:
    """Without keys, cascade serve will not bind to anything but loopback, and says why."""
    args = _serve_args(str(_config_file(tmp_path, **section)), "--host", "0.0.0.0")
    with pytest.raises(ConfigError, match=r"refusing to serve on 0\.0\.0\.0 without API keys"):
        args.handler(args)


def test_server_section_is_read(tmp_path: Path) -> None:
    """The server: section gives the key variable, host and port; a typo in it is a ConfigError."""
    path = _config_file(tmp_path, api_keys_env="GW_KEYS", port=9001)
    config, settings = load_serve_config(str(path))
    assert (settings.api_keys_env, settings.host, settings.port) == ("GW_KEYS", None, 9001)
    assert list(config.tasks) == ["faq"]
    bad = _config_file(tmp_path, api_key_env="GW_KEYS")
    with pytest.raises(ConfigError, match=r"server\.api_key_env"):
        load_serve_config(str(bad))


def test_loopback_detection() -> None:
    """Loopback addresses and localhost count as local; wildcard and public ones do not."""
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.1"]))


def test_serve_logs_its_address_and_stops_cleanly(tmp_path: Path) -> None:
    """cascade serve prints one line with its address, answers, and exits 0 on SIGINT."""
    path = _config_file(tmp_path, api_keys_env="GW_KEYS")
    runner = ("import argparse, sys\n"
              "from cascade.cli.serve import register\n"
              "parser = argparse.ArgumentParser(); register(parser.add_subparsers())\n"
              "args = parser.parse_args(sys.argv[1:]); sys.exit(args.handler(args))\n")
    env = {**os.environ, "GW_KEYS": f"{KEY},{OTHER_KEY}", "OPENAI_API_KEY": FAKE_OPENAI_KEY,
           "ANTHROPIC_API_KEY": FAKE_ANTHROPIC_KEY}
    proc = subprocess.Popen([sys.executable, "-c", runner, "serve", str(path), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("cascade serve: listening on http://127.0.0.1:")
        assert "2 API key(s) from $GW_KEYS" in line
        url = line.split()[4]
        assert httpx2.get(f"{url}/healthz").status_code == 200
        models = httpx2.get(f"{url}/v1/models", headers={"authorization": f"Bearer {KEY}"})
        assert models.status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_gateway_overhead_histogram_is_run_time_minus_provider_calls() -> None:
    """cascade_gateway_overhead_seconds: a run's wall time less its calls' time, never < 0."""
    from cascade.gateway.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    step = SimpleNamespace(model="mini", cost_usd=0.0, decision="accept", latency_ms=400.0)
    metrics.run("faq", "accepted", 0.4015, [step])
    # hedged calls overlapped: 0.9 s of calls in a 0.6 s run is no negative overhead
    metrics.run("faq", "accepted", 0.6, [step, SimpleNamespace(**{**vars(step),
                                                                  "latency_ms": 500.0})])
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    samples = {(s.name, s.labels.get("le")): s.value
               for s in families["cascade_gateway_overhead_seconds"].samples}
    assert samples[("cascade_gateway_overhead_seconds_count", None)] == 2
    assert samples[("cascade_gateway_overhead_seconds_sum", None)] == pytest.approx(0.0015)
    assert samples[("cascade_gateway_overhead_seconds_bucket", "0.0001")] == 1  # the hedged run
    assert samples[("cascade_gateway_overhead_seconds_bucket", "0.001")] == 1
    assert samples[("cascade_gateway_overhead_seconds_bucket", "0.0025")] == 2
