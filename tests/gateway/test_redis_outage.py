"""A hung or stopped Redis costs one ``timeout_s`` per second, not one per command: no retry
after a timeout, and after a failure the limiter and the cache on that URL skip Redis for a
second (an injected clock here), then try it again and recover when it is back.

The hung Redis is a socket that accepts connections and never answers: each attempt is one
connection (redis-py drops a connection that timed out), so the connections it accepted count
the attempts.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascade.config import RedisConfig, RedisLimiterConfig
from cascade.engine.cache_redis import RedisResponseCache
from cascade.engine.redis_client import Outage
from cascade.errors import RateLimiterUnavailable
from cascade.gateway.ratelimit import RedisLimiter, Scope
from tests.gateway.limited import KEY_A, ask, clients, live_gateway
from tests.redis_server import Clock, OwnRedis

ENV = "CASCADE_TEST_HUNG_REDIS"
RPM = Scope("key:a:rpm", 100, 1, "key 'a' rpm 100", "requests")


class HungRedis:
    """A TCP server that accepts every connection and never answers (``accepted`` counts)."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._server.getsockname()[1]}/0"
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed
                return
            with self._lock:
                self._held.append(conn)

    @property
    def accepted(self) -> int:
        with self._lock:
            return len(self._held)

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for conn in self._held:
                conn.close()


@pytest.fixture
def hung(monkeypatch: pytest.MonkeyPatch) -> Iterator[HungRedis]:
    server = HungRedis()
    monkeypatch.setenv(ENV, server.url)
    yield server
    server.close()



def test_one_timeout_is_not_retried(hung: HungRedis) -> None:
    """A command that times out is not sent again: one attempt (connection), not two."""
    cache = RedisResponseCache(RedisConfig(url_env=ENV, timeout_s=0.05), outage=Outage(0.0))
    assert cache.get("k") is None
    cache.close()
    assert hung.accepted == 1


def test_limiter_and_cache_share_one_attempt_per_window(
    hung: HungRedis, outage_clock: Clock
) -> None:
    """Five requests' worth of commands (take, get, put, settle, sync get) on a hung Redis:
    one attempt in all; each skipped command fails at once, as Redis failing would."""
    limiter = RedisLimiter(RedisLimiterConfig(url_env=ENV, timeout_s=0.05))
    cache = RedisResponseCache(RedisConfig(url_env=ENV, timeout_s=0.05))
    unavailable = 0

    async def requests() -> list[object]:
        nonlocal unavailable
        got: list[object] = []
        for _ in range(5):
            for op in (limiter.take, limiter.settle):
                try:
                    await op([RPM])
                except RateLimiterUnavailable:
                    unavailable += 1
            got.append(await cache.aget("k"))
            await cache.aput("k", "faq", "mini", "text", None, 60)
        await limiter.aclose()
        await cache.aclose()
        return got

    got = asyncio.run(requests())
    got.append(cache.get("k"))
    cache.close()
    assert hung.accepted == 1
    assert unavailable == 10
    assert got == [None] * 6
    assert cache.errors == 11  # every lookup and put is still a counted failure
    assert limiter.outage is cache.outage


def test_after_the_window_it_tries_again(hung: HungRedis, outage_clock: Clock) -> None:
    """Once the window has passed, the next command tries Redis again (one more attempt)."""
    cache = RedisResponseCache(RedisConfig(url_env=ENV, timeout_s=0.05))
    cache.get("k")
    cache.get("k")
    outage_clock.now += 0.9
    cache.get("k")
    within = hung.accepted
    outage_clock.now += 0.2
    cache.get("k")
    cache.close()
    assert within == 1
    assert hung.accepted == 2


def test_recovers_when_redis_is_back(monkeypatch: pytest.MonkeyPatch, outage_clock: Clock) -> None:
    """A stopped Redis is skipped while the window lasts, even once it is back; after the
    window the limiter admits and the cache hits again, with no restart."""
    with OwnRedis() as own:
        monkeypatch.setenv(ENV, own.url)
        limiter = RedisLimiter(RedisLimiterConfig(url_env=ENV, timeout_s=0.2))
        cache = RedisResponseCache(RedisConfig(url_env=ENV, timeout_s=0.2))
        cache.put("k", "faq", "mini", "text", None, 60)
        own.stop()
        assert cache.get("k") is None
        own.start()  # empty again: put once more after the window
        skipped = cache.get("k")

        async def take() -> bool:
            try:
                return (await limiter.take([RPM])).admitted
            finally:
                await limiter.aclose()

        with pytest.raises(RateLimiterUnavailable, match="not tried"):
            asyncio.run(take())
        outage_clock.now += 1.0
        admitted = asyncio.run(take())
        cache.put("k", "faq", "mini", "text", None, 60)
        hit = cache.get("k")
        cache.close()
    assert skipped is None
    assert admitted is True
    assert hit == ("mini", "text", None)


def test_a_gateway_request_waits_on_a_hung_redis_once(
    tmp_path: Path, hung: HungRedis, outage_clock: Clock
) -> None:
    """Through the gateway (limits open, cache on the same Redis): three requests are served
    and Redis was tried once, not per command (take, cache get, put, settle) per request."""
    config = {
        "limits": {"redis": {"url_env": ENV, "on_error": "open", "timeout_s": 0.1}},
        "cache": {"redis": {"url_env": ENV, "timeout_s": 0.1}},
        "tasks": {"cache": {"ttl_s": 60}},
    }
    with live_gateway(tmp_path, clients(a={"rpm": 100, "tpm": 1_000_000}), config=config) as live:
        answers = [ask(live.url, KEY_A, temperature=0.1 * i) for i in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert hung.accepted == 1
