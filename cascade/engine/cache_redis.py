"""The exact-match response cache on Redis, which every replica of a gateway shares.

Same keys, TTL and invalidation as the SQLite cache (``cascade.engine.cache``): the key hashes
the task's definition, the messages and the parameters, so a changed config misses; an entry
expires with Redis's own ``SET ... PX`` after the task's ``cache.ttl_s``. The value is one JSON
string (model key, text, parsed JSON, task).

A Redis that is down, slow (``timeout_s``) or answers with something unreadable is a miss, and
a put is dropped: logged at most every ten seconds (``cascade.cache_unavailable``) and counted
in ``errors``, never raised. After a failure Redis is skipped for a second, with the limiter
on the same URL (``redis_client.Outage``): each lookup then is a miss at once, and each put is
dropped, without waiting ``timeout_s`` on a hung Redis. The sync methods use redis-py's sync
client, the async ones its asyncio client (one per event loop).
"""

from __future__ import annotations

import json
from typing import Any

from cascade.config import RedisConfig
from cascade.engine.redis_client import (
    Outage,
    PerLoop,
    Throttled,
    async_redis,
    redis_errors,
    redis_url,
    shared_outage,
    sync_redis,
)

__all__ = ["RedisResponseCache"]

_WHERE = "cache.redis"


class RedisResponseCache:
    """Accepted answers on Redis, under ``<prefix>cache:<key>``.

    Args:
        config: ``cache.redis``.
        path: The config file, for error messages.
        outage: When to skip Redis after a failure (default: the one shared by every user of
            the URL in this process).

    Raises:
        ConfigError: the URL variable is unset, or redis is not installed. No connection is
            made here: the first lookup connects.
    """

    def __init__(
        self, config: RedisConfig, *, path: str | None = None, outage: Outage | None = None
    ):
        self.config = config
        self._sync = sync_redis(config, _WHERE, path)
        self._async: PerLoop[Any] = PerLoop(async_redis(config, _WHERE, path))
        self._errors = redis_errors()
        self.outage = outage or shared_outage(redis_url(config, _WHERE, path))
        self.failures = Throttled("cascade.cache_unavailable")

    def __repr__(self) -> str:
        return f"RedisResponseCache(url_env={self.config.url_env!r})"

    @property
    def errors(self) -> int:
        """Lookups and puts that failed (Redis down, slow or unreadable): each a miss."""
        return self.failures.count

    def _key(self, key: str) -> str:
        return f"{self.config.prefix}cache:{key}"

    def _hit(self, raw: Any) -> tuple[str, str, Any] | None:
        if raw is None:
            return None
        try:
            entry = json.loads(raw)
            return str(entry["model"]), str(entry["text"]), entry["json"]
        except (ValueError, KeyError, TypeError) as exc:  # not ours, or truncated: a miss
            self.failures.failed(exc, op="read")
            return None

    @staticmethod
    def _entry(task: str, model: str, text: str, parsed: Any) -> str:
        return json.dumps({"task": task, "model": model, "text": text, "json": parsed})

    @staticmethod
    def _ttl_ms(ttl_s: float) -> int:
        return max(1, round(ttl_s * 1000))

    def _skipped(self, op: str) -> bool:
        """Whether Redis failed too recently to be tried (counted as a failure)."""
        last = self.outage.skipped()
        if last is not None:
            self.failures.failed(last, op=op, skipped=True)
        return last is not None

    def _failed(self, exc: BaseException, op: str) -> None:
        self.outage.failed(exc)
        self.failures.failed(exc, op=op)

    def get(self, key: str) -> tuple[str, str, Any] | None:
        if self._skipped("get"):
            return None
        try:
            raw = self._sync.get(self._key(key))
        except self._errors as exc:
            self._failed(exc, "get")
            return None
        self.outage.succeeded()
        return self._hit(raw)

    def put(self, key: str, task: str, model: str, text: str, parsed: Any, ttl_s: float) -> None:
        if self._skipped("put"):
            return
        try:
            self._sync.set(
                self._key(key), self._entry(task, model, text, parsed), px=self._ttl_ms(ttl_s)
            )
        except self._errors as exc:
            self._failed(exc, "put")
        else:
            self.outage.succeeded()

    async def aget(self, key: str) -> tuple[str, str, Any] | None:
        if self._skipped("get"):
            return None
        try:
            raw = await self._async.get().get(self._key(key))
        except self._errors as exc:
            self._failed(exc, "get")
            return None
        self.outage.succeeded()
        return self._hit(raw)

    async def aput(
        self, key: str, task: str, model: str, text: str, parsed: Any, ttl_s: float
    ) -> None:
        if self._skipped("put"):
            return
        try:
            await self._async.get().set(
                self._key(key), self._entry(task, model, text, parsed), px=self._ttl_ms(ttl_s)
            )
        except self._errors as exc:
            self._failed(exc, "put")
        else:
            self.outage.succeeded()

    def close(self) -> None:
        self._sync.close()

    async def aclose(self) -> None:
        """Close this event loop's connections (call before the loop ends)."""
        client = self._async.pop()
        if client is not None:
            await client.aclose()
