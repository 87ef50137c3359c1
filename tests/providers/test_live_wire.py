"""The real OpenAI and Anthropic SDKs against a loopback server: retries, failover, usage."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cascade import Cascade, ConfigError
from cascade.testing import MockLLMServer, Reply
from tests.conftest import live_config

pytestmark = pytest.mark.usefixtures("keys")


def build(server: MockLLMServer, sleeps: list[float] | None = None, **kwargs: Any) -> Cascade:
    sleeps = [] if sleeps is None else sleeps
    return Cascade.from_dict(live_config(server, **kwargs), ledger=False, sleep=sleeps.append)


def test_openai_then_anthropic_escalation(server: MockLLMServer) -> None:
    """A rejected OpenAI answer escalates to Anthropic; both go over real HTTP."""
    server.script("gpt-4o-mini", ["no"])
    server.script("claude-sonnet-4-6", [Reply("we open at nine", input_tokens=20,
                                              output_tokens=4)])
    result = build(server).complete("faq", "When do you open?")
    assert (result.text, result.model, result.accepted) == ("we open at nine", "sonnet", True)
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions", "/v1/messages"]
    assert result.steps[1].cost_usd == pytest.approx((20 * 3.0 + 4 * 15.0) / 1e6, abs=1e-15)


def test_retry_429_honours_retry_after(server: MockLLMServer) -> None:
    """429 with Retry-After: 2 waits 2 s (through the injected sleep) and retries."""
    server.script("gpt-4o-mini", [Reply(status=429, headers={"Retry-After": "2"}),
                                  "a good answer"])
    sleeps: list[float] = []
    result = build(server, sleeps).complete("faq", "q")
    assert sleeps == [2.0]
    assert result.model == "mini"
    assert result.steps[0].attempts == 2


def test_retry_after_ms_is_preferred(server: MockLLMServer) -> None:
    """retry-after-ms is honoured in milliseconds."""
    server.script("gpt-4o-mini", [Reply(status=429, headers={"retry-after-ms": "250"}),
                                  "a good answer"])
    sleeps: list[float] = []
    build(server, sleeps).complete("faq", "q")
    assert sleeps == [0.25]


def test_retry_after_bounded_by_max_wait(server: MockLLMServer) -> None:
    """A server asking for a long wait is capped at retry.max_wait_s."""
    server.script("gpt-4o-mini", [Reply(status=429, headers={"Retry-After": "3600"}),
                                  "a good answer"])
    sleeps: list[float] = []
    build(server, sleeps).complete("faq", "q")
    assert sleeps == [30.0]


def test_no_retry_on_401_and_failover(server: MockLLMServer) -> None:
    """401 is tried once, the error names the env var and never the key, and the ladder moves on."""
    server.script("gpt-4o-mini", [Reply(status=401, message="Incorrect API key provided")])
    server.script("claude-sonnet-4-6", ["fallback answer here"])
    result = build(server).complete("faq", "q")
    assert len(server.calls("gpt-4o-mini")) == 1
    step = result.steps[0]
    assert (step.decision, step.attempts) == ("error", 1)
    assert step.error is not None
    assert "OPENAI_API_KEY" in step.error
    assert "sk-test" not in step.error
    assert result.model == "sonnet"


@pytest.mark.parametrize("status", [400, 403, 404])
def test_no_retry_on_client_errors(server: MockLLMServer, status: int) -> None:
    """400, 403 and 404 are never retried."""
    server.script("gpt-4o-mini", [Reply(status=status)])
    server.script("claude-sonnet-4-6", ["fallback answer here"])
    result = build(server).complete("faq", "q")
    assert len(server.calls("gpt-4o-mini")) == 1
    assert result.steps[0].attempts == 1


def test_404_names_the_model(server: MockLLMServer) -> None:
    """An unknown model's error names it."""
    server.script("gpt-4o-mini", [Reply(status=404, message="The model does not exist")])
    result = build(server).complete("faq", "q")
    assert "model 'gpt-4o-mini' not found" in (result.steps[0].error or "")


def test_failover_on_repeated_500(server: MockLLMServer) -> None:
    """Repeated 500s use every attempt, then fail over."""
    server.script("gpt-4o-mini", [Reply(status=500)])
    server.script("claude-sonnet-4-6", ["fallback answer here"])
    sleeps: list[float] = []
    result = build(server, sleeps, attempts=3).complete("faq", "q")
    assert len(server.calls("gpt-4o-mini")) == 3
    assert result.steps[0].attempts == 3
    assert result.steps[0].decision == "error"
    assert len(sleeps) == 2
    assert all(0 < s <= 30 for s in sleeps)
    assert result.model == "sonnet"


@pytest.mark.parametrize("status", [408, 409, 502, 503, 504])
def test_retryable_statuses(server: MockLLMServer, status: int) -> None:
    """408, 409 and 5xx are retried."""
    server.script("gpt-4o-mini", [Reply(status=status), "a good answer"])
    result = build(server).complete("faq", "q")
    assert result.steps[0].attempts == 2
    assert result.model == "mini"


def test_anthropic_529_retried(server: MockLLMServer) -> None:
    """Anthropic's 529 overloaded is retried."""
    server.script("claude-sonnet-4-6", [Reply(status=529), "a good answer"])
    result = build(server, ladder=["sonnet"]).complete("faq", "q")
    assert result.steps[0].attempts == 2


def test_malformed_body_is_error_retried_once(server: MockLLMServer) -> None:
    """A 200 with a non-JSON body is an error step, retried once, then failed over."""
    server.script("gpt-4o-mini", [Reply(body="<html>oops")])
    server.script("claude-sonnet-4-6", ["fallback answer here"])
    result = build(server, attempts=4).complete("faq", "q")
    assert len(server.calls("gpt-4o-mini")) == 2
    assert result.steps[0].decision == "error"
    assert "malformed" in (result.steps[0].error or "")


@pytest.mark.parametrize("body", ['{"id": "x", "object": "chat.completion", "choices": []}',
                                  '{"id": "x", "choices": [{"index": 0, "message": '
                                  '{"role": "assistant", "content": ""}}]}'])
def test_empty_answer_is_not_an_answer(server: MockLLMServer, body: str) -> None:
    """Empty choices or empty content are error steps, never returned as an answer."""
    server.script("gpt-4o-mini", [Reply(body=body)])
    server.script("claude-sonnet-4-6", ["fallback answer here"])
    result = build(server).complete("faq", "q")
    assert result.steps[0].decision == "error"
    assert result.text == "fallback answer here"


def test_empty_anthropic_content(server: MockLLMServer) -> None:
    """An Anthropic message with no text block is an error step."""
    server.script("claude-sonnet-4-6", [Reply(body='{"id": "m", "type": "message", "role": '
                                              '"assistant", "content": [], "model": "c"}')])
    server.script("gpt-4o-mini", ["a good answer"])
    result = build(server, ladder=["sonnet", "mini"]).complete("faq", "q")
    assert result.steps[0].decision == "error"
    assert result.model == "mini"


def test_connection_refused_fails_over(server: MockLLMServer) -> None:
    """A dead endpoint is retried, then the ladder moves on."""
    data = live_config(server)
    data["providers"]["openai"]["base_url"] = "http://127.0.0.1:9/v1"
    server.script("claude-sonnet-4-6", ["fallback answer here"])
    result = Cascade.from_dict(data, ledger=False, sleep=lambda s: None).complete("faq", "q")
    assert result.steps[0].decision == "error"
    assert result.steps[0].attempts == 3
    assert "cannot connect" in (result.steps[0].error or "")
    assert result.model == "sonnet"


def test_read_timeout_fails_over(server: MockLLMServer) -> None:
    """A read timeout is retried, then the ladder moves on."""
    data = live_config(server, attempts=2)
    data["providers"]["openai"]["timeout_s"] = 0.2
    server.script("gpt-4o-mini", [Reply("late", delay_s=1.0)])
    server.script("claude-sonnet-4-6", ["fallback answer here"])
    result = Cascade.from_dict(data, ledger=False, sleep=lambda s: None).complete("faq", "q")
    assert result.steps[0].attempts == 2
    assert "timed out" in (result.steps[0].error or "")


def test_missing_key_is_config_error_without_failover(server: MockLLMServer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset key variable raises ConfigError naming it; the ladder does not fail over."""
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        build(server).complete("faq", "q")
    assert server.requests == []


def test_anthropic_messages_conversion(server: MockLLMServer) -> None:
    """System messages become Anthropic's system field; max_tokens comes from model params."""
    server.script("claude-sonnet-4-6", ["a good answer"])
    build(server, ladder=["sonnet"]).complete(
        "faq", [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}],
        temperature=0.2, stop=["END"])
    body = server.requests[0]["body"]
    assert body["system"] == "be kind"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["max_tokens"] == 256
    assert body["temperature"] == 0.2
    assert body["stop_sequences"] == ["END"]


def test_openai_params_and_extra_body(server: MockLLMServer) -> None:
    """Known parameters go through by name and unknown ones through extra_body."""
    server.script("gpt-4o-mini", ["a good answer"])
    build(server, ladder=["mini"]).complete("faq", "q", max_tokens=50, temperature=0,
                                            top_k=5)
    body = server.requests[0]["body"]
    assert (body["max_tokens"], body["temperature"], body["top_k"]) == (50, 0, 5)


def test_sdk_retries_are_off(server: MockLLMServer) -> None:
    """Only tenacity retries: with attempts=1 a 500 is sent exactly once."""
    server.script("gpt-4o-mini", [Reply(status=500)])
    server.script("claude-sonnet-4-6", ["fallback answer here"])
    build(server, attempts=1).complete("faq", "q")
    assert len(server.calls("gpt-4o-mini")) == 1


def test_async_path_over_http(server: MockLLMServer) -> None:
    """acomplete uses the async SDK clients and retries with the async sleep."""
    server.script("gpt-4o-mini", [Reply(status=429, headers={"retry-after": "1"}), "no"])
    server.script("claude-sonnet-4-6", ["a good answer"])
    slept: list[float] = []

    async def asleep(seconds: float) -> None:
        slept.append(seconds)

    async def run() -> Any:
        async with Cascade.from_dict(live_config(server), ledger=False, asleep=asleep) as engine:
            return await engine.acomplete("faq", "q")

    result = asyncio.run(run())
    assert slept == [1.0]
    assert [s.decision for s in result.steps] == ["escalate", "accept"]
    assert result.steps[0].attempts == 2


def test_openai_cached_tokens_priced(server: MockLLMServer) -> None:
    """OpenAI's prompt_tokens_details.cached_tokens are billed at cached_input."""
    data = live_config(server, ladder=["mini"], evaluators=[])
    data["models"]["mini"]["price"]["cached_input"] = 0.075
    server.script("gpt-4o-mini", [Reply("ok", input_tokens=1000, cached_tokens=800,
                                        output_tokens=10)])
    result = Cascade.from_dict(data, ledger=False).complete("faq", "q")
    assert result.steps[0].cached_input_tokens == 800
    assert result.cost_usd == pytest.approx((200 * 0.15 + 800 * 0.075 + 10 * 0.6) / 1e6,
                                            abs=1e-15)
