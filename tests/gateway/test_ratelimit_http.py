"""Rate limits through the live gateway: 429s with the headers OpenAI's SDK reads, key and task
scopes, tokens reserved before the run and settled after it, and the real SDK's retry.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest

from cascade.config import RedisLimiterConfig
from cascade.engine.ladder import Ladder
from cascade.gateway.metrics import GatewayMetrics
from cascade.gateway.ratelimit import LocalLimiter, RedisLimiter
from cascade.gateway.throttle import RateLimits, Ticket, used_tokens, worst_case_tokens
from cascade.testing import MockLLMServer, Reply
from cascade.tokens import estimate_input_tokens, max_output_tokens
from tests.gateway.limited import ASK, KEY_A, KEY_B, MINI, ask, clients, live_gateway
from tests.gateway.test_ratelimit import Clock
from tests.redis_server import URL_ENV, OwnRedis, redis_prefix  # noqa: F401  (fixture)


def test_429_says_which_limit_and_carries_the_sdk_headers(tmp_path: Path) -> None:
    """Past key a's rpm 2: 429 rate_limit_exceeded naming it, Retry-After (s and ms) and the
    x-ratelimit-* headers; admitted answers carry the remaining count; no secret in the body."""
    clock = Clock()
    with live_gateway(tmp_path, clients(a={"rpm": 2}), limiter=LocalLimiter(clock)) as live:
        first, second, third = (ask(live.url, KEY_A) for _ in range(3))
        other = ask(live.url, KEY_B)
        refused_metric = live.metric("cascade_rate_limited_total", limit="key_rpm")
        upstream_calls = len(live.upstream.calls())
    assert [first.status_code, second.status_code, third.status_code] == [200, 200, 429]
    assert other.status_code == 200  # key b has no limits of its own
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"] == "30s"
    error = third.json()["error"]
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
    assert "key 'a' rpm 2" in error["message"]
    assert third.headers["retry-after"] == "30"
    assert third.headers["retry-after-ms"] == "30000"
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert "x-should-retry" not in third.headers  # the SDK retries after Retry-After
    assert KEY_A not in third.text
    assert refused_metric == 1
    assert upstream_calls == 3  # the refused request called nothing


def test_a_task_limit_holds_over_all_keys(tmp_path: Path) -> None:
    """limits.tasks.faq.rpm 1 (per process, no Redis): key b is refused after key a's request."""
    with live_gateway(
        tmp_path, clients(), config={"limits": {"tasks": {"faq": {"rpm": 1}}}}
    ) as live:
        a, b = ask(live.url, KEY_A), ask(live.url, KEY_B)
    assert (a.status_code, b.status_code) == (200, 429)
    assert "task 'faq' rpm 1" in b.json()["error"]["message"]


def test_the_headers_show_the_tightest_scope(tmp_path: Path) -> None:
    """Key a's rpm 10 and task faq's rpm 3: the x-ratelimit-*-requests headers are the task's,
    which refuses first."""
    with live_gateway(
        tmp_path,
        clients(a={"rpm": 10}),
        config={"limits": {"tasks": {"faq": {"rpm": 3}}}},
        limiter=LocalLimiter(Clock()),
    ) as live:
        answer = ask(live.url, KEY_A)
    assert answer.headers["x-ratelimit-limit-requests"] == "3"
    assert answer.headers["x-ratelimit-remaining-requests"] == "2"


def test_a_failed_run_gives_its_reservation_back(tmp_path: Path) -> None:
    """The upstream fails (502 for the client): the run used no tokens, so the next request
    finds the whole tpm but its own worst case."""
    upstream = MockLLMServer()
    with (
        upstream,
        live_gateway(
            tmp_path, clients(a={"tpm": 50_000}), upstream=upstream, limiter=LocalLimiter(Clock())
        ) as live,
    ):
        upstream.script(MINI, [Reply(status=500), "We are open from nine to five"])
        worst = worst_case_tokens(live.engine, "faq", ASK, {})
        failed, next_one = ask(live.url, KEY_A), ask(live.url, KEY_A)
    assert failed.status_code == 502
    assert int(next_one.headers["x-ratelimit-remaining-tokens"]) == 50_000 - worst


def test_tokens_are_reserved_at_the_worst_case_then_settled_to_usage(tmp_path: Path) -> None:
    """Key a's tpm: each request reserves its worst case (the prompt counted high plus the
    rung's output limit), and once its run ends only what its steps used stays taken."""
    clock = Clock()
    limit = 50_000
    with live_gateway(tmp_path, clients(a={"tpm": limit}), limiter=LocalLimiter(clock)) as live:
        worst = worst_case_tokens(live.engine, "faq", ASK, {})
        (bounded,) = Ladder.bounded(live.engine.tasks["faq"], {})
        first = ask(live.url, KEY_A)
        second = ask(live.url, KEY_A)
        used = [r["body"] for r in live.upstream.calls()]
    assert worst == estimate_input_tokens(ASK, bounded) + max_output_tokens(bounded)
    one_run = first.json()["usage"]["total_tokens"]
    assert 0 < one_run < worst
    assert len(used) == 2
    # The first answer: the worst case is taken; the second: the first run was settled to its
    # usage before the second reserved its worst case.
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == limit - worst
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == limit - one_run - worst


def test_a_request_over_a_whole_minute_of_tokens_is_not_retried(tmp_path: Path) -> None:
    """A worst case above the tpm itself can never fit: 429 with x-should-retry false."""
    with live_gateway(tmp_path, clients(a={"tpm": 100}), limiter=LocalLimiter(Clock())) as live:
        answer = ask(live.url, KEY_A)
        calls = len(live.upstream.calls())
    assert answer.status_code == 429
    assert answer.headers["x-should-retry"] == "false"
    assert "key 'a' tpm 100" in answer.json()["error"]["message"]
    assert calls == 0


@pytest.mark.parametrize("backend", ["local", "redis"])
def test_the_openai_sdk_retries_after_retry_after_and_succeeds(
    tmp_path: Path,
    backend: str,
    redis_prefix: str,  # noqa: F811
) -> None:
    """Key a's rpm 1 over a 2.5 s window: the real SDK (max_retries=2) gets one 429 and then
    succeeds. Had it ignored Retry-After, its own backoff (about 0.4 s, then 0.8 s) would
    spend both retries inside the window and fail."""
    window = 2.5
    if backend == "local":
        limiter = LocalLimiter(window_s=window)
    else:
        config = RedisLimiterConfig(url_env=URL_ENV, prefix=redis_prefix)
        limiter = RedisLimiter(config, window_s=window)  # Redis's clock
    with (
        live_gateway(tmp_path, clients(a={"rpm": 1}), limiter=limiter) as live,
        openai.OpenAI(base_url=f"{live.url}/v1", api_key=KEY_A, max_retries=2) as sdk,
    ):
        texts = [
            sdk.chat.completions.create(model="faq", messages=ASK).choices[0].message.content
            for _ in range(2)
        ]
        refused = live.metric("cascade_rate_limited_total", limit="key_rpm")
        runs = live.metric("cascade_requests_total", task="faq", status="accepted")
    assert texts == ["We are open from nine to five"] * 2
    assert refused == 1
    assert runs == 2


def test_settlement_failure_is_counted_not_raised() -> None:
    """A settlement that cannot reach Redis is counted (outcome settle) and dropped."""
    metrics = GatewayMetrics()
    with OwnRedis() as own, pytest.MonkeyPatch.context() as env:
        env.setenv("CASCADE_TEST_DOWN_REDIS", own.url)
        config = RedisLimiterConfig(url_env="CASCADE_TEST_DOWN_REDIS")
        limits = RateLimits(config, metrics)
        own.stop()
        ticket = Ticket((RateLimits.scopes(clients(a={"tpm": 10})[KEY_A], "faq", 5)[0],), 5, {})

        async def main() -> None:
            await limits.settle(ticket, ())
            await limits.aclose()

        asyncio.run(main())
    assert (
        metrics.registry.get_sample_value(
            "cascade_rate_limiter_errors_total", {"outcome": "settle"}
        )
        == 1
    )
    assert used_tokens(()) == 0
