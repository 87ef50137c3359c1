"""The response cache on Redis: one cache for every replica, kept per key name, TTL by Redis,
and a Redis failure is a miss, never an error. Through the engine's sync and async paths, and
through two live gateways."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from structlog.testing import capture_logs

from cascade import Cascade
from cascade.engine.cache import task_cache_key
from cascade.errors import ConfigError
from cascade.ledger.keys import KeyScope
from cascade.testing import MockLLMServer
from tests.conftest import live_config
from tests.gateway.limited import KEY_A, KEY_B, ask, clients, live_gateway
from tests.gateway.test_attacks import ASK, MINI
from tests.redis_server import MACHINE_URL, URL_ENV, free_port, redis_prefix  # noqa: F401


def cached_config(
    server: MockLLMServer, tmp_path: Path, prefix: str, url_env: str = URL_ENV, **cache: Any
) -> dict[str, Any]:
    """Task faq (one rung, mini) cached for 90 s on the Redis in ``url_env``."""
    data = live_config(
        server,
        ladder=["mini"],
        evaluators=[],
        attempts=1,
        ledger=str(tmp_path / "ledger.sqlite"),
        cache={"ttl_s": 90},
    )
    data["cache"] = {
        "redis": {"url_env": url_env, "prefix": prefix, "timeout_s": 0.2},
        **cache,
    }
    return data


@contextmanager
def replicas(
    tmp_path: Path, prefix: str, count: int = 2, **cache: Any
) -> Iterator[tuple[MockLLMServer, list[Cascade]]]:
    with MockLLMServer() as server, pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", "sk-test-cache-0000")
        server.script(MINI, ["We are open from nine to five"])
        engines = [
            Cascade.from_dict(cached_config(server, tmp_path, prefix, **cache))
            for _ in range(count)
        ]
        try:
            yield server, engines
        finally:
            for engine in engines:
                engine.close()


def test_one_replica_answers_and_the_other_serves_it_from_the_cache(
    tmp_path: Path,
    redis_prefix: str,  # noqa: F811
) -> None:
    """Engine 1 calls (sync); engine 2's run is a hit (async), and the model is called once."""
    with replicas(tmp_path, redis_prefix) as (server, (one, two)):
        first = one.complete("faq", ASK)

        async def other() -> Any:
            try:
                return await two.acomplete("faq", ASK)
            finally:
                await two.aclose()

        second = asyncio.run(other())
        calls = len(server.calls())
    assert (first.cached, second.cached) == (False, True)
    assert second.text == first.text
    assert second.cost_usd == 0
    assert calls == 1


def test_a_key_never_sees_another_keys_answers(tmp_path: Path, redis_prefix: str) -> None:  # noqa: F811
    """Key b misses what key a cached; a library call without a name misses both."""
    with replicas(tmp_path, redis_prefix) as (server, (one, two)):
        a = one.complete("faq", ASK, key=KeyScope("a"))
        b = two.complete("faq", ASK, key=KeyScope("b"))
        again = two.complete("faq", ASK, key=KeyScope("a"))
        unnamed = one.complete("faq", ASK)
        calls = len(server.calls())
    assert [r.cached for r in (a, b, again, unnamed)] == [False, False, True, False]
    assert calls == 3


def test_shared_across_keys_serves_every_key(tmp_path: Path, redis_prefix: str) -> None:  # noqa: F811
    """cache.shared_across_keys: true: key b is served key a's answer."""
    with replicas(tmp_path, redis_prefix, shared_across_keys=True) as (server, (one, two)):
        one.complete("faq", ASK, key=KeyScope("a"))
        b = two.complete("faq", ASK, key=KeyScope("b"))
        calls = len(server.calls())
    assert b.cached
    assert calls == 1


def test_entries_expire_with_the_tasks_ttl(tmp_path: Path, redis_prefix: str) -> None:  # noqa: F811
    """The entry is set with PX = ttl_s: Redis expires it, and the key is under the prefix."""
    with replicas(tmp_path, redis_prefix, count=1) as (_, (engine,)):
        engine.complete("faq", ASK, key=KeyScope("a"))
        key = task_cache_key(engine.config, "faq", tuple(ASK), {}, "a")
    with redis.Redis.from_url(MACHINE_URL) as client:
        ttl_ms = client.pttl(f"{redis_prefix}cache:{key}")
        stored = list(client.scan_iter(f"{redis_prefix}*"))
    assert 0 < ttl_ms <= 90_000
    assert len(stored) == 1


def test_a_redis_failure_is_a_miss_never_an_error(tmp_path: Path) -> None:
    """No Redis at the URL: both paths answer from the model, the failures are counted and
    logged once (then held back), and nothing is raised."""
    with MockLLMServer() as server, pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", "sk-test-cache-0000")
        env.setenv("CASCADE_TEST_DEAD_REDIS", f"redis://127.0.0.1:{free_port()}/0")
        data = cached_config(server, tmp_path, "cascade:", "CASCADE_TEST_DEAD_REDIS")
        with Cascade.from_dict(data) as engine, capture_logs() as logs:
            sync = [engine.complete("faq", ASK) for _ in range(2)]

            async def run() -> Any:
                try:
                    return await engine.acomplete("faq", ASK)
                finally:
                    await engine.aclose()

            async_result = asyncio.run(run())
            errors = engine.cache.errors if engine.cache else None
        calls = len(server.calls())
    assert [r.cached for r in (*sync, async_result)] == [False, False, False]
    assert calls == 3
    assert errors == 6  # a failed lookup and a dropped put per run
    warned = [e for e in logs if e["event"] == "cascade.cache_unavailable"]
    assert len(warned) == 1


def test_an_unset_url_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cache.redis.url_env naming an unset variable fails the build, naming it and the key."""
    monkeypatch.delenv("CASCADE_TEST_UNSET_REDIS", raising=False)
    with MockLLMServer() as server:
        data = live_config(
            server, ladder=["mini"], evaluators=[], ledger=str(tmp_path / "l"), cache={"ttl_s": 90}
        )
        data["cache"] = {"redis": {"url_env": "CASCADE_TEST_UNSET_REDIS"}}
        with pytest.raises(ConfigError) as raised:
            Cascade.from_dict(data)
    assert "CASCADE_TEST_UNSET_REDIS" in str(raised.value)
    assert raised.value.location == "cache.redis.url_env"


def test_two_gateways_share_the_cache_per_key(tmp_path: Path, redis_prefix: str) -> None:  # noqa: F811
    """Two live gateways (replicas) on one Redis: key a's answer from gateway 1 is a hit on
    gateway 2 for key a, a miss for key b; /metrics counts no cache error."""
    section = {
        "cache": {"redis": {"url_env": URL_ENV, "prefix": redis_prefix}},
        "tasks": {"cache": {"ttl_s": 90}},
    }
    table = clients()
    with MockLLMServer() as upstream:
        upstream.script(MINI, ["We are open from nine to five"])
        with (
            live_gateway(
                tmp_path, table, config=section, upstream=upstream, ledger="one.sqlite"
            ) as one,
            live_gateway(
                tmp_path, table, config=section, upstream=upstream, ledger="two.sqlite"
            ) as two,
        ):
            first = ask(one.url, KEY_A)
            hit = ask(two.url, KEY_A)
            other = ask(two.url, KEY_B)
            errors = two.metric("cascade_cache_errors_total")
        calls = len(upstream.calls())
    assert [r.status_code for r in (first, hit, other)] == [200, 200, 200]
    # Two calls for three requests: key a's second is the hit (were b's, a's would be too).
    assert calls == 2
    assert float(hit.headers["x-cascade-cost-usd"]) == 0
    assert float(other.headers["x-cascade-cost-usd"]) > 0
    assert errors == 0
