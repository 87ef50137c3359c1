"""Tool calls end to end: the engine, both SDK providers, the tool_call evaluator, the gateway."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from cascade import Cascade, Completion, Request, ToolCall
from cascade.ledger import Ledger
from cascade.testing import MockLLMServer, Reply
from evaluators.tools import ToolCallCheck
from tests.conftest import live_config

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
GOOD_CALL = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
BAD_CALL = {"id": "call_2", "name": "get_weather", "arguments": '{"town": "Paris"}'}
ASK = "What is the weather in Paris?"


@pytest.fixture
def engine(server: MockLLMServer, keys: None) -> Iterator[Cascade]:
    config = live_config(server, evaluators=[{"type": "length", "min_words": 3},
                                             {"type": "tool_call"}])
    with Cascade.from_dict(config, sleep=lambda s: None) as built:
        yield built


def test_tool_call_is_an_answer(engine: Cascade, server: MockLLMServer) -> None:
    """content null + tool_calls: accepted at the first rung, one upstream call, no retry."""
    server.script("gpt-4o-mini", [Reply("", tool_calls=[GOOD_CALL])])
    result = engine.complete("faq", ASK, tools=[WEATHER], tool_choice="auto")
    assert result.model == "mini"
    assert result.accepted
    assert result.tool_calls == (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)
    assert result.finish_reason == "tool_calls"
    assert result.text == ""
    assert [s.decision for s in result.steps] == ["accept"]
    # The length evaluator judges text; only tool_call judged this answer.
    assert [v.evaluator for v in result.steps[0].verdicts] == ["tool_call"]
    sent = server.calls("gpt-4o-mini")
    assert len(sent) == 1
    assert sent[0]["body"]["tools"] == [WEATHER]
    assert sent[0]["body"]["tool_choice"] == "auto"


def test_bad_call_escalates_to_anthropic_tool_use(engine: Cascade, server: MockLLMServer) -> None:
    """Arguments that break the schema escalate; Anthropic's tool_use comes back OpenAI-shaped."""
    server.script("gpt-4o-mini", [Reply("", tool_calls=[BAD_CALL])])
    server.script("claude-sonnet-4-6", [Reply("", tool_calls=[
        {"id": "toolu_9", "name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}])])
    result = engine.complete("faq", ASK, tools=[WEATHER], tool_choice="required")
    assert [s.decision for s in result.steps] == ["escalate", "accept"]
    reason = result.steps[0].verdicts[0].reason
    assert "get_weather: arguments do not match its schema" in reason
    assert "'town' was unexpected" in reason or "'city' is a required property" in reason
    assert result.model == "sonnet"
    assert result.tool_calls[0].id == "toolu_9"
    assert json.loads(result.tool_calls[0].arguments) == {"city": "Paris", "unit": "c"}
    assert result.finish_reason == "tool_calls"  # Anthropic's stop_reason tool_use
    body = server.calls("claude-sonnet-4-6")[0]["body"]
    assert body["tools"] == [{"name": "get_weather", "description": "Current weather in a city",
                              "input_schema": WEATHER["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "any"}


def test_anthropic_gets_tool_history_as_blocks(engine: Cascade, server: MockLLMServer) -> None:
    """An OpenAI-style tool round trip reaches Anthropic as tool_use and tool_result blocks."""
    server.script("gpt-4o-mini", ["no"])  # rejected (one word), so sonnet is called
    server.script("claude-sonnet-4-6", ["It is sunny in Paris today."])
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    result = engine.complete("faq", messages, tools=[WEATHER])
    assert result.text == "It is sunny in Paris today."
    body = server.calls("claude-sonnet-4-6")[0]["body"]
    assert body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather",
             "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny, 21 C"}]},
    ]
    assert "tool_choice" not in body


@pytest.mark.parametrize(("escalate", "decisions"), [(True, ["escalate", "accept"]),
                                                     (False, ["accept"])])
def test_truncated_answer(server: MockLLMServer, keys: None, escalate: bool,
                          decisions: list[str]) -> None:
    """finish_reason length is rejected by default; escalate_on_truncation: false keeps it."""
    config = live_config(server, escalate_on_truncation=escalate)
    server.script("gpt-4o-mini", [Reply("the answer was going to be", finish_reason="length")])
    server.script("claude-sonnet-4-6", ["a complete answer here"])
    with Cascade.from_dict(config, sleep=lambda s: None) as engine:
        result = engine.complete("faq", ASK)
    assert [s.decision for s in result.steps] == decisions
    if escalate:
        assert result.steps[0].verdicts[0].evaluator == "truncation"
        assert result.finish_reason == "stop"  # Anthropic's end_turn
    else:
        assert result.finish_reason == "length"


def test_anthropic_truncation_and_filter_map_to_openai_words(server: MockLLMServer,
                                                             keys: None) -> None:
    config = live_config(server, ladder=["sonnet"], escalate_on_truncation=False)
    with Cascade.from_dict(config, sleep=lambda s: None) as engine:
        server.script("claude-sonnet-4-6", [
            Reply("cut off here now", finish_reason="length"),
            Reply("withheld in part", finish_reason="content_filter")])
        assert engine.complete("faq", ASK).finish_reason == "length"
        assert engine.complete("faq", ASK).finish_reason == "content_filter"


# -- the evaluator on its own ---------------------------------------------------------------------


def _judge(calls: list[dict[str, str]], **params: Any) -> tuple[bool, str]:
    check = ToolCallCheck(ToolCallCheck.Config())
    request = Request(task="t", messages=({"role": "user", "content": ASK},),
                      params={"tools": [WEATHER], **params})
    completion = Completion(text="", tool_calls=tuple(ToolCall(**c) for c in calls))
    verdict = check(request, completion)
    return verdict.passed, verdict.reason


@pytest.mark.parametrize(("calls", "params", "passed", "reason"), [
    ([GOOD_CALL], {}, True, "1 valid tool call(s): get_weather"),
    ([{**GOOD_CALL, "name": "get_time"}], {}, False,
     "'get_time' is not an offered tool (offered: get_weather)"),
    ([{**GOOD_CALL, "arguments": "{city: Paris"}], {}, False, "arguments are not valid JSON"),
    ([{**GOOD_CALL, "arguments": "[1]"}], {}, False, "arguments are list, not a JSON object"),
    ([{**GOOD_CALL, "arguments": '{"city": "Paris", "unit": "k"}'}], {}, False,
     "unit: 'k' is not one of ['c', 'f']"),
    ([GOOD_CALL], {"tool_choice": "none"}, False, "tool_choice is none"),
    ([GOOD_CALL], {"tool_choice": {"type": "function", "function": {"name": "other"}}}, False,
     "'get_weather' although tool_choice requires 'other'"),
    ([GOOD_CALL, GOOD_CALL], {"parallel_tool_calls": False}, False, "2 calls although"),
    ([], {}, True, "a text answer (no tool call)"),
    ([], {"tool_choice": "required"}, False, "a text answer where a tool call is required"),
])
def test_tool_call_evaluator(calls: list[dict[str, str]], params: dict[str, Any], passed: bool,
                             reason: str) -> None:
    ok, why = _judge(calls, **params)
    assert ok is passed
    assert reason in why


# -- the gateway, with the official openai SDK as its client --------------------------------------


@pytest.fixture
def gateway(server: MockLLMServer, keys: None) -> Iterator[str]:
    pytest.importorskip("starlette")
    from tests.gateway.test_server import serving

    config = live_config(server, evaluators=[{"type": "length", "min_words": 3},
                                             {"type": "tool_call"}])
    # test_gateway_finish_reason_and_logprobs calls the model key mini directly.
    config["server"] = {"direct_models": ["mini"], "direct_max_cost_usd": 1.0}
    with serving(config) as (url, _):
        yield url


def test_gateway_tool_calls_openai_sdk(gateway: str, server: MockLLMServer) -> None:
    server.script("gpt-4o-mini", [Reply("", tool_calls=[GOOD_CALL])])
    with openai.OpenAI(base_url=gateway, api_key="unused", max_retries=0) as api:
        done = api.chat.completions.create(
            model="faq", messages=[{"role": "user", "content": ASK}], tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="auto")
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (  # type: ignore[union-attr]
        "call_1", "get_weather", '{"city": "Paris"}')
    assert server.calls("gpt-4o-mini")[0]["body"]["tools"] == [WEATHER]


def test_gateway_tool_calls_streamed(gateway: str, server: MockLLMServer) -> None:
    """The SDK's stream helper assembles the same call from the chunks."""
    args = '{"city": "Paris", "unit": "c"}'
    server.script("gpt-4o-mini", [Reply("", tool_calls=[{**GOOD_CALL, "arguments": args}])])
    with openai.OpenAI(base_url=gateway, api_key="unused", max_retries=0) as api, \
            api.chat.completions.stream(
                model="faq", messages=[{"role": "user", "content": ASK}],
                tools=[WEATHER]) as stream:  # type: ignore[list-item]
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == ("call_1", "get_weather", args)


def test_gateway_finish_reason_and_logprobs(gateway: str, server: MockLLMServer) -> None:
    """length passes through (truncation escalates, the top rung's cut answer is returned),
    and logprobs reach a client that asked for them, streamed and not."""
    scored = Reply("a fine answer here", logprobs=[-0.5, -0.25, -0.1, -0.2])
    server.script("gpt-4o-mini", [scored, scored, Reply("cut off", finish_reason="length")])
    server.script("claude-sonnet-4-6", [Reply("also cut off", finish_reason="length")])
    with openai.OpenAI(base_url=gateway, api_key="unused", max_retries=0) as api:
        done = api.chat.completions.create(
            model="mini", messages=[{"role": "user", "content": ASK}], logprobs=True)
        assert done.choices[0].logprobs is not None
        assert [t.logprob for t in done.choices[0].logprobs.content or []] == [
            -0.5, -0.25, -0.1, -0.2]
        with api.chat.completions.stream(
                model="mini", messages=[{"role": "user", "content": ASK}],
                logprobs=True) as stream:
            for _ in stream:
                pass
            final = stream.get_final_completion()
        assert [t.logprob for t in final.choices[0].logprobs.content or []] == [  # type: ignore[union-attr]
            -0.5, -0.25, -0.1, -0.2]
        done = api.chat.completions.create(
            model="faq", messages=[{"role": "user", "content": ASK}])
    assert done.choices[0].finish_reason == "length"
    assert done.choices[0].message.content == "also cut off"


def test_tool_choice_for_anthropic() -> None:
    from cascade.providers.anthropic import tool_choice_to_anthropic

    named = {"type": "function", "function": {"name": "get_weather"}}
    assert tool_choice_to_anthropic(named, None) == {"type": "tool", "name": "get_weather"}
    assert tool_choice_to_anthropic("auto", False) == {"type": "auto",
                                                       "disable_parallel_tool_use": True}
    assert tool_choice_to_anthropic(None, False) == {"type": "auto",
                                                     "disable_parallel_tool_use": True}
    assert tool_choice_to_anthropic("none", False) == {"type": "none"}
    assert tool_choice_to_anthropic(None, None) is None


def test_tool_call_answers_are_not_cached(server: MockLLMServer, keys: None,
                                          tmp_path: Any) -> None:
    """A tool call is one step of the caller's loop: the next identical call must reach a model."""
    config = live_config(server, ladder=["mini"], evaluators=[{"type": "tool_call"}],
                         cache={"ttl_s": 60})
    config["cache"] = {"path": str(tmp_path / "cache.sqlite")}
    server.script("gpt-4o-mini", [Reply("", tool_calls=[GOOD_CALL])])
    with Cascade.from_dict(config, sleep=lambda s: None, ledger=False) as engine:
        first = engine.complete("faq", ASK, tools=[WEATHER])
        second = engine.complete("faq", ASK, tools=[WEATHER])
    assert first.tool_calls == second.tool_calls
    assert not second.cached
    assert len(server.calls("gpt-4o-mini")) == 2


def test_tool_call_without_usage_is_billed_and_settled(
    server: MockLLMServer, keys: None
) -> None:
    """A tool-call answer that reports no usage is not free: its name and arguments are
    estimated output, billed in the step and settled in the ledger like any answer."""
    server.script("gpt-4o-mini", [Reply("", tool_calls=[BAD_CALL], omit_usage=True)])
    server.script("claude-sonnet-4-6", [Reply("", tool_calls=[GOOD_CALL], omit_usage=True)])
    config = live_config(server, evaluators=[{"type": "tool_call"}])
    with Cascade.from_dict(config, sleep=lambda s: None, ledger=Ledger(":memory:")) as engine:
        result = engine.complete("faq", ASK, tools=[WEATHER])
        assert engine.ledger is not None
        rows = engine.ledger.query(
            "SELECT status, cost_usd, output_tokens FROM steps ORDER BY step")
    assert [s.decision for s in result.steps] == ["escalate", "accept"]
    for step in result.steps:
        assert step.usage_estimated
        # more than framing: the arguments' text is counted
        assert step.output_tokens > len(BAD_CALL["arguments"]) // 4
        assert step.cost_usd > 0
    assert [(r["status"], r["cost_usd"], r["output_tokens"]) for r in rows] == [
        ("settled", pytest.approx(s.cost_usd), s.output_tokens) for s in result.steps]
