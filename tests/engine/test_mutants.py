"""Behaviour a mutation run found untested (issue 22, "Tests the suite lacks"), engine side.

Each test's docstring names the mutant it kills; each was checked by applying the mutant.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from cascade import Cascade, Completion, ProviderError, Request, ToolCall, Verdict
from cascade.config import CascadeConfig, RetryConfig
from cascade.config.pricing import Price, cost_usd
from cascade.engine.limits import Limits
from cascade.engine.retry import RetryPolicy
from cascade.ledger.money import worst_case_cost
from cascade.testing import FakeProvider, MockLLMServer, Reply
from cascade.tokens import max_output_tokens
from evaluators.judge import parse_score
from tests.conftest import live_config


def test_cached_tokens_are_capped_at_the_input_count() -> None:
    """pricing.cost_usd: without min(cached, input), fresh tokens go negative and the bill
    drops below the cached price of the whole prompt."""
    price = Price(input=10.0, output=0.0, cached_input=1.0)
    over = Completion("x", input_tokens=1000, cached_input_tokens=5000)
    assert cost_usd(over, price) == pytest.approx(1000 * 1.0 / 1e6)


def test_both_output_limits_reserve_the_larger() -> None:
    """tokens.max_output_tokens: max -> min would reserve 50 tokens for a call allowed 100."""
    params = {"max_tokens": 100, "max_completion_tokens": 50}
    assert max_output_tokens(params) == 100
    price = Price(input=0.0, output=1e6)  # a dollar per output token
    assert worst_case_cost([{"role": "user", "content": "q"}], params, price) == 100.0


def test_the_judge_takes_the_last_score() -> None:
    """judge.parse_score: judges reason first and conclude last; labelled[0] would read 3."""
    reply = "Score: 3 was my first thought, but on reflection the answer is right.\nScore: 9"
    assert parse_score(reply)[0] == parse_score("Score: 9")[0] != parse_score("Score: 3")[0]


def test_a_success_resets_the_breakers_streak() -> None:
    """limits.record: without breaker.success() on ok, failures never in a row still open it."""
    config = CascadeConfig.model_validate({
        "providers": {"p": {"type": "openai", "circuit_breaker": {"failures": 2}}},
        "models": {"m": {"provider": "p", "name": "m", "price": {"input": 1, "output": 1}}},
        "tasks": {"t": {"ladder": ["m"]}},
    })
    limits = Limits(config, None)
    assert limits.record("p", False) is False
    assert limits.record("p", True) is False
    assert limits.record("p", False) is False  # a streak of one again, not two
    assert limits.breakers["p"].open_for() is None
    assert limits.record("p", False) is True  # two in a row open it


def test_a_retry_never_sleeps_past_the_runs_deadline() -> None:
    """retry._PastDeadline: a wait that would end past the deadline stops the retries instead
    (dropping upcoming_sleep from the check would sleep 5 s into a run with 1 s left)."""
    slept: list[float] = []
    policy = RetryPolicy(RetryConfig(attempts=5, max_wait_s=30), sleep=slept.append)
    busy = ProviderError("busy", provider="p", model="m", status_code=429, retryable=True,
                         retry_after_s=5.0)
    attempts = 0
    with pytest.raises(ProviderError):
        for attempt in policy.retrying(deadline=time.monotonic() + 1.0):
            with attempt:
                attempts += 1
                raise busy
    assert (attempts, slept) == (1, [])


def only_tool_calls(request: Request, completion: Completion) -> Verdict:
    """A rule that also judges tool-call answers, and scores them 0 (text answers 1)."""
    ok = not completion.tool_calls
    return Verdict("strict", ok, float(ok), "" if ok else "no tool calls here")


only_tool_calls.judges_tool_calls = True  # type: ignore[attr-defined]


def test_min_score_weights_are_those_of_the_evaluators_that_judged() -> None:
    """ladder._attempt: a tool-call answer is judged by tool_call (weight 1) and the strict rule
    (weight 9): 0.1 < 0.5, so it escalates. Weights taken from all slots (length's 1, then
    tool_call's 1) would give 0.5 and accept it."""
    call = ToolCall("call_1", "lookup", '{"q": 1}')
    fake = FakeProvider("p", {"small": [Completion("", tool_calls=(call,))],
                              "big": [Completion("the answer in words")]})
    data: dict[str, Any] = {
        "providers": {"p": {"type": "openai"}},
        "models": {k: {"provider": "p", "name": k, "price": {"input": 1, "output": 1}}
                   for k in ("small", "big")},
        "tasks": {"t": {
            "ladder": ["small", "big"],
            "accept": {"min_score": 0.5},
            "evaluators": [
                {"type": "length", "min_words": 1, "weight": 1},
                {"type": "tool_call", "weight": 1},
                {"type": "callable", "path": "tests.engine.test_mutants:only_tool_calls",
                 "weight": 9},
            ],
        }},
    }
    with Cascade.from_dict(data, providers={"p": fake}, ledger=False) as engine:
        result = engine.complete("t", "look it up", tools=[{"type": "function", "function": {
            "name": "lookup", "parameters": {"type": "object"}}}])
    assert result.model == "big"
    assert [s.decision for s in result.steps] == ["escalate", "accept"]


@pytest.mark.usefixtures("keys")
def test_a_hedged_rung_that_fails_early_starts_the_next_at_once() -> None:
    """plan._ahedge: a rung that fails before hedge_after_ms must not end the run; without the
    start after a failure, the next rung would never run."""
    with MockLLMServer() as server:
        server.script("gpt-4o-mini", [Reply(status=400, message="bad request")])
        server.script("claude-sonnet-4-6", ["We open at nine every day."])
        config = live_config(server, attempts=1, hedge_after_ms=600_000)
        with Cascade.from_dict(config, ledger=False) as engine:

            async def run() -> Any:
                try:
                    return await engine.acomplete("faq", "When do you open?")
                finally:
                    await engine.aclose()

            result = asyncio.run(run())
    assert result.model == "sonnet" and result.accepted
    assert [s.decision for s in result.steps] == ["error", "accept"]
