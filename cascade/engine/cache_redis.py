"""The exact-match response cache on Redis, which every replica of a gateway shares.

Same keys, TTL and invalidation as the SQLite cache (``cascade.engine.cache``): the key hashes
the task's definition, the messages and the parameters, so a changed config misses; an entry
expires with Redis's own ``SET ... PX`` after the task's ``cache.ttl_s``. The value is one JSON
string (model key, text, parsed JSON, task).

A Redis that is down, slow (``timeout_s``) or answers with something unreadable is a miss, and
a put is dropped: logged at most every ten seconds (``cascade.cache_unavailable``) and counted
in ``errors``, never raised. The sync methods use redis-py's sync client, the async ones its
asyncio client (one per event loop).
"""

from __future__ import annotations

import json
from typing import Any

from cascade.config import RedisConfig
from cascade.engine.redis_client import PerLoop, Throttled, async_redis, redis_errors, sync_redis

__all__ = ["RedisResponseCache"]

_WHERE = "cache.redis"


class RedisResponseCache:
    """Accepted answers on Redis, under ``<prefix>cache:<key>``.

    Args:
        config: ``cache.redis``.
        path: The config file, for error messages.

    Raises:
        ConfigError: the URL variable is unset, or redis is not installed. No connection is
            made here: the first lookup connects.
    """

    def __init__(self, config: RedisConfig, *, path: str | None = None):
        self.config = config
        self._sync = sync_redis(config, _WHERE, path)
        self._async: PerLoop[Any] = PerLoop(async_redis(config, _WHERE, path))
        self._errors = redis_errors()
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

    def get(self, key: str) -> tuple[str, str, Any] | None:
        try:
            raw = self._sync.get(self._key(key))
        except self._errors as exc:
            self.failures.failed(exc, op="get")
            return None
        return self._hit(raw)

    def put(self, key: str, task: str, model: str, text: str, parsed: Any, ttl_s: float) -> None:
        try:
            self._sync.set(
                self._key(key), self._entry(task, model, text, parsed), px=self._ttl_ms(ttl_s)
            )
        except self._errors as exc:
            self.failures.failed(exc, op="put")

    async def aget(self, key: str) -> tuple[str, str, Any] | None:
        try:
            raw = await self._async.get().get(self._key(key))
        except self._errors as exc:
            self.failures.failed(exc, op="get")
            return None
        return self._hit(raw)

    async def aput(
        self, key: str, task: str, model: str, text: str, parsed: Any, ttl_s: float
    ) -> None:
        try:
            await self._async.get().set(
                self._key(key), self._entry(task, model, text, parsed), px=self._ttl_ms(ttl_s)
            )
        except self._errors as exc:
            self.failures.failed(exc, op="put")

    def close(self) -> None:
        self._sync.close()

    async def aclose(self) -> None:
        """Close this event loop's connections (call before the loop ends)."""
        client = self._async.pop()
        if client is not None:
            await client.aclose()
