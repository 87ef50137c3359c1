"""The providers' fast path: the SDK client sends, the reply's JSON is read once, no typed models.

Every field the engine reads (text, usage, cached tokens, logprobs, tool calls, finish reason)
is checked on the sync and the async path, and against what the SDK's own typed models make of
the same reply, so the fast path cannot drift from the SDK's reading.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest

from cascade.config import ProviderConfig
from cascade.errors import ConfigError, InvalidUsage, ProviderError
from cascade.providers.anthropic import AnthropicProvider
from cascade.providers.openai import OpenAIProvider
from cascade.testing import MockLLMServer, Reply
from cascade.types import Completion, ToolCall

pytestmark = pytest.mark.usefixtures("keys")

ASK = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
CALL = {"id": "call_1", "name": "lookup", "arguments": '{"city": "Oslo"}'}


def openai_provider(server: MockLLMServer, http: str = "auto") -> OpenAIProvider:
    return OpenAIProvider(
        "openai", ProviderConfig(type="openai", base_url=server.openai_url, async_http=http)
    )


def anthropic_provider(server: MockLLMServer, http: str = "auto") -> AnthropicProvider:
    return AnthropicProvider(
        "anthropic", ProviderConfig(type="anthropic", base_url=server.anthropic_url,
                                    async_http=http)
    )


# sync, and async through each of the SDKs' two transports (httpx2, aiohttp)
MODES = ["sync", "httpx", "aiohttp"]


def made(make: Callable[..., Any], server: MockLLMServer, mode: str) -> Any:
    return make(server, "auto" if mode == "sync" else mode)


def headers(sent: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in sent["headers"].items()}


def call(provider: Any, sync: bool, model: str, **params: Any) -> Completion:
    if sync:
        result: Completion = provider.complete(ASK, model=model, params=params)
        return result

    async def run() -> Completion:
        try:
            result: Completion = await provider.acomplete(ASK, model=model, params=params)
            # the transport the config asked for is the one that sent it
            aio = isinstance(provider.async_client._client, provider.sdk.DefaultAioHttpClient)
            assert aio == (provider.config.async_http != "httpx")
            return result
        finally:
            await provider.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize("mode", MODES)
def test_openai_reads_every_field(server: MockLLMServer, mode: str) -> None:
    server.script("m", [Reply("the answer", input_tokens=120, output_tokens=7, cached_tokens=100,
                              logprobs=[-0.25, -1.5], tool_calls=[CALL], finish_reason="length")])
    done = call(made(openai_provider, server, mode), mode == "sync", "m", logprobs=True,
                max_tokens=50)
    assert done.text == "the answer"
    assert (done.input_tokens, done.output_tokens, done.cached_input_tokens) == (120, 7, 100)
    assert done.usage_estimated is False
    assert done.logprobs == (-0.25, -1.5)
    assert done.token_logprobs is not None
    assert [e["token"] for e in done.token_logprobs] == ["t0", "t1"]
    assert done.tool_calls == (ToolCall(id="call_1", name="lookup", arguments='{"city": "Oslo"}'),)
    assert done.finish_reason == "length"
    assert done.provider == "openai" and done.latency_ms > 0
    sent = server.calls("m")[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"] == {"model": "m", "messages": ASK, "logprobs": True, "max_tokens": 50}
    assert headers(sent)["authorization"].startswith("Bearer ")


@pytest.mark.parametrize("mode", MODES)
def test_anthropic_reads_every_field(server: MockLLMServer, mode: str) -> None:
    server.script("c", [Reply("the answer", input_tokens=120, output_tokens=7, cached_tokens=100,
                              tool_calls=[CALL])])
    done = call(made(anthropic_provider, server, mode), mode == "sync", "c", max_tokens=50,
                stop=["END"])
    assert done.text == "the answer"
    # cache reads are folded into input_tokens, so input means the same for every provider
    assert (done.input_tokens, done.output_tokens, done.cached_input_tokens) == (120, 7, 100)
    assert done.tool_calls == (ToolCall(id="call_1", name="lookup", arguments='{"city": "Oslo"}'),)
    assert done.finish_reason == "tool_calls"
    sent = server.calls("c")[0]
    assert sent["path"] == "/v1/messages"
    assert sent["body"] == {"model": "c", "max_tokens": 50, "stop_sequences": ["END"],
                            "system": "be brief", "messages": [{"role": "user", "content": "hi"}]}
    assert headers(sent)["anthropic-version"]  # the SDK's client still sends its headers
    assert headers(sent)["authorization"].startswith("Bearer ")


def _typed_openai(server: MockLLMServer) -> Completion:
    """What the SDK's typed models read from the same reply, in our terms."""
    client = openai.OpenAI(api_key="k", base_url=server.openai_url, max_retries=0)
    r = client.chat.completions.create(model="m", messages=ASK, logprobs=True)  # type: ignore[arg-type]
    choice = r.choices[0]
    assert r.usage is not None and r.usage.prompt_tokens_details is not None
    assert choice.logprobs is not None and choice.logprobs.content is not None
    return Completion(
        text=choice.message.content or "",
        provider="openai",
        input_tokens=r.usage.prompt_tokens,
        output_tokens=r.usage.completion_tokens,
        cached_input_tokens=r.usage.prompt_tokens_details.cached_tokens or 0,
        finish_reason=choice.finish_reason,
        logprobs=tuple(t.logprob for t in choice.logprobs.content),
        token_logprobs=tuple(t.model_dump() for t in choice.logprobs.content),
        tool_calls=tuple(ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
                         for c in choice.message.tool_calls or ()
                         if isinstance(c, openai.types.chat.ChatCompletionMessageFunctionToolCall)),
    )


def _typed_anthropic(server: MockLLMServer) -> Completion:
    client = anthropic.Anthropic(api_key="k", base_url=server.anthropic_url, max_retries=0)
    r = client.messages.create(model="c", messages=[{"role": "user", "content": "hi"}],
                               max_tokens=50)
    read = r.usage.cache_read_input_tokens or 0
    return Completion(
        text="".join(b.text for b in r.content if b.type == "text"),
        provider="anthropic",
        input_tokens=r.usage.input_tokens + read + (r.usage.cache_creation_input_tokens or 0),
        output_tokens=r.usage.output_tokens,
        cached_input_tokens=read,
        finish_reason={"end_turn": "stop", "tool_use": "tool_calls"}[str(r.stop_reason)],
        tool_calls=tuple(ToolCall(id=b.id, name=b.name, arguments=json.dumps(b.input))
                         for b in r.content if b.type == "tool_use"),
    )


@pytest.mark.parametrize(
    ("make", "typed", "model"),
    [(openai_provider, _typed_openai, "m"), (anthropic_provider, _typed_anthropic, "c")],
    ids=["openai", "anthropic"],
)
@pytest.mark.parametrize("reply", [
    Reply("plain", input_tokens=9, output_tokens=2, logprobs=[-0.1]),
    Reply("", input_tokens=30, output_tokens=5, cached_tokens=20, logprobs=[-0.3, -0.2],
          tool_calls=[CALL, {"id": "call_2", "name": "other", "arguments": "{}"}]),
], ids=["text", "tools"])
def test_fast_path_reads_what_the_typed_models_read(
    server: MockLLMServer, make: Callable[[MockLLMServer], Any],
    typed: Callable[[MockLLMServer], Completion], model: str, reply: Reply,
) -> None:
    server.script(model, [reply])
    expected = typed(server)
    got = call(make(server), True, model, max_tokens=50, logprobs=True)
    fields = ("text", "input_tokens", "output_tokens", "cached_input_tokens", "finish_reason",
              "tool_calls")
    assert {f: getattr(got, f) for f in fields} == {f: getattr(expected, f) for f in fields}
    if model == "m":
        assert got.logprobs == expected.logprobs
        assert got.token_logprobs == expected.token_logprobs


def test_typed_response_models_are_not_built(
    server: MockLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path never goes through create() and its model construction."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("typed path used")

    monkeypatch.setattr(openai.resources.chat.completions.AsyncCompletions, "create", refuse)
    monkeypatch.setattr(openai.resources.chat.completions.Completions, "create", refuse)
    monkeypatch.setattr(anthropic.resources.messages.Messages, "create", refuse)
    monkeypatch.setattr(anthropic.resources.messages.AsyncMessages, "create", refuse)
    for sync in (True, False):
        assert call(openai_provider(server), sync, "m").text == "ok"
        assert call(anthropic_provider(server), sync, "c").text == "ok"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("make,model", [(openai_provider, "m"), (anthropic_provider, "c")],
                         ids=["openai", "anthropic"])
def test_headers_carry_the_clients_timeout_as_create_would(
    server: MockLLMServer, make: Callable[..., Any], model: str, mode: str
) -> None:
    """The low-level post sends no placeholder header (x-stainless-timeout: NOT_GIVEN)."""
    call(made(make, server, mode), mode == "sync", model)
    sent = headers(server.calls(model)[0])
    assert not [k for k, v in sent.items() if "NOT_GIVEN" in v]
    timeout = str(float(ProviderConfig(type="openai").timeout_s))
    # The Anthropic SDK always sends it (create() does too); OpenAI's sends it when set.
    assert sent.get("x-stainless-timeout", None if model == "c" else timeout) == timeout


def test_extra_body_merged_and_transport_options_sent(server: MockLLMServer) -> None:
    """extra_body lands in the JSON body; extra_headers/extra_query go on the request."""
    call(openai_provider(server), True, "m", temperature=0.5,
         extra_body={"top_k": 3}, extra_headers={"x-trace": "t1"}, extra_query={"v": "2"})
    sent = server.calls("m")[0]
    assert sent["body"] == {"model": "m", "messages": ASK, "temperature": 0.5, "top_k": 3}
    assert headers(sent)["x-trace"] == "t1"
    assert sent["path"] == "/v1/chat/completions?v=2"


@pytest.mark.parametrize("make", [openai_provider, anthropic_provider], ids=["openai", "anthropic"])
@pytest.mark.parametrize("body", ["not json", "[1, 2]", '"text"', "{}", "\xff"])
def test_malformed_bodies_are_malformed_faults(
    server: MockLLMServer, make: Callable[[MockLLMServer], Any], body: str
) -> None:
    server.script("x", [Reply(body=body)])
    for sync in (True, False):
        with pytest.raises(ProviderError) as info:
            call(make(server), sync, "x")
        assert info.value.malformed and info.value.retryable


@pytest.mark.parametrize("usage", [{"prompt_tokens": -1, "completion_tokens": 1},
                                   {"prompt_tokens": "9", "completion_tokens": 1},
                                   {"prompt_tokens": 1, "completion_tokens": 2**64}])
def test_invalid_usage_still_refused(server: MockLLMServer, usage: dict[str, Any]) -> None:
    server.script("m", [Reply("fine", usage=usage)])
    with pytest.raises(InvalidUsage):
        call(openai_provider(server), False, "m")


def test_missing_usage_is_estimated_and_flagged(server: MockLLMServer) -> None:
    server.script("m", [Reply("four words of text", omit_usage=True)])
    done = call(openai_provider(server), True, "m")
    assert done.usage_estimated and done.input_tokens > 0 and done.output_tokens > 0


@pytest.mark.parametrize("mode", MODES)
def test_http_errors_still_mapped_through_sdk_classes(server: MockLLMServer, mode: str) -> None:
    server.script("m", [Reply(status=429, headers={"retry-after": "3"}, message="slow down")])
    with pytest.raises(ProviderError) as info:
        call(made(openai_provider, server, mode), mode == "sync", "m")
    assert (info.value.status_code, info.value.retryable, info.value.retry_after_s) == (429, True, 3.0)
    assert "slow down" in str(info.value)


@pytest.mark.parametrize("http", ["httpx", "aiohttp"])
def test_a_refused_connection_is_a_retryable_provider_error(http: str) -> None:
    """Nothing listening: the same ProviderError through either async transport."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = OpenAIProvider("openai", ProviderConfig(
        type="openai", base_url=f"http://127.0.0.1:{port}/v1", async_http=http))
    with pytest.raises(ProviderError) as info:
        call(provider, False, "m")
    assert info.value.retryable and info.value.status_code is None
    assert "cannot connect" in str(info.value)


def test_aiohttp_asked_for_but_missing_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "aiohttp" else real(name, *a))
    with pytest.raises(ConfigError, match=r"providers\.openai\.async_http"):
        OpenAIProvider("openai", ProviderConfig(type="openai", async_http="aiohttp"))
    auto = OpenAIProvider("openai", ProviderConfig(type="openai"))  # auto: httpx2 instead
    assert auto._aiohttp is False


def test_refusal_is_an_empty_answer_billed(server: MockLLMServer) -> None:
    server.script("m", [Reply(body=json.dumps({"choices": [{"message": {
        "content": None, "refusal": "I cannot"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2}}))])
    with pytest.raises(ProviderError, match="a refusal: I cannot") as info:
        call(openai_provider(server), True, "m")
    assert info.value.billed is not None and info.value.billed.input_tokens == 5
