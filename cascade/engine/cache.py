"""An exact-match response cache, opt-in per task with a TTL: in SQLite, or on Redis.

The key is a hash of the task's configuration, the messages and the call parameters, so
changing a ladder, an evaluator or a prompt never serves a stale answer. A gateway key's name
is part of it too, so a key never sees another key's answers, unless
``cache.shared_across_keys``.

Both backends have the shape of ``CacheBackend``: ``ResponseCache`` (SQLite, one file per
host) here, ``RedisResponseCache`` (every replica shares it) in ``cascade.engine.cache_redis``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from cascade.config import CascadeConfig, resolve_path
from cascade.engine.cache_redis import RedisResponseCache
from cascade.ledger import open_sqlite
from cascade.types import Message

__all__ = [
    "CacheBackend",
    "Hit",
    "ResponseCache",
    "cache_key",
    "open_cache",
    "task_cache_key",
]

# A cached answer: the model key that gave it, its text, and its parsed JSON (or None).
Hit = tuple[str, str, Any]


class CacheBackend(Protocol):
    """Where accepted answers are kept. ``get``/``put`` serve ``Cascade.complete``,
    ``aget``/``aput`` serve ``acomplete`` (they must not block the event loop for long).

    A backend that cannot be reached answers a miss and drops a put: a cache is never worth a
    failed request.
    """

    @property
    def errors(self) -> int:
        """Lookups and puts that failed and were served as misses."""
        ...

    def get(self, key: str) -> Hit | None: ...

    def put(self, key: str, task: str, model: str, text: str, parsed: Any, ttl_s: float) -> None:
        ...

    async def aget(self, key: str) -> Hit | None: ...

    async def aput(
        self, key: str, task: str, model: str, text: str, parsed: Any, ttl_s: float
    ) -> None: ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


def open_cache(config: CascadeConfig, path: str | None) -> CacheBackend | None:
    """The cache the config asks for, or None when no task opts in.

    Raises:
        ConfigError: ``cache.redis.url_env`` names an unset variable, or redis is not installed.
    """
    if not any(t.cache for t in config.tasks.values()):
        return None
    if config.cache.redis is not None:
        return RedisResponseCache(config.cache.redis, path=path)
    return ResponseCache(resolve_path(config.cache.path, path))


def cache_key(
    task_config: Mapping[str, Any], messages: Sequence[Message], params: Mapping[str, Any]
) -> str:
    blob = json.dumps(
        {"task": task_config, "messages": list(messages), "params": params},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def task_cache_key(
    config: CascadeConfig,
    task: str,
    messages: Sequence[Message],
    params: Mapping[str, Any],
    key_name: str | None = None,
) -> str:
    """The key of ``task``'s answer to ``messages`` under this config, for the gateway key
    named ``key_name``.

    Models and providers are part of it: a changed model name, price or parameter must not
    serve an answer cached under the old one. So is ``key_name``, unless
    ``cache.shared_across_keys``: one key's prompt and answer stay its own. Without a name
    (library calls, unnamed keys) the key is what it was before keys had names.
    """
    definition: dict[str, Any] = {
        "task": config.tasks[task].model_dump(mode="json"),
        "models": {k: m.model_dump(mode="json") for k, m in config.models.items()},
        "providers": {k: p.model_dump(mode="json") for k, p in config.providers.items()},
    }
    if key_name is not None and not config.cache.shared_across_keys:
        definition["key_name"] = key_name
    return cache_key(definition, messages, params)


class ResponseCache:
    """Accepted answers in a SQLite file: text, the model key that answered, the parsed JSON.

    The async methods run the same statements in place: a local SQLite read or write takes
    well under a millisecond.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._conn = open_sqlite(self.path)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, task TEXT NOT NULL,"
                " created REAL NOT NULL, expires REAL NOT NULL, model TEXT NOT NULL,"
                " text TEXT NOT NULL, json TEXT)"
            )

    def __repr__(self) -> str:
        return f"ResponseCache({self.path!r})"

    @property
    def errors(self) -> int:
        """Always 0: a local file that fails is a broken host, and raises."""
        return 0

    def get(self, key: str) -> Hit | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT model, text, json FROM cache WHERE key = ? AND expires > ?",
                (key, time.time()),
            ).fetchone()
        if row is None:
            return None
        return row[0], row[1], json.loads(row[2]) if row[2] is not None else None

    def put(self, key: str, task: str, model: str, text: str, parsed: Any, ttl_s: float) -> None:
        now = time.time()
        blob = json.dumps(parsed) if parsed is not None else None
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO cache VALUES (?,?,?,?,?,?,?)",
                (key, task, now, now + ttl_s, model, text, blob),
            )

    async def aget(self, key: str) -> Hit | None:
        return self.get(key)

    async def aput(
        self, key: str, task: str, model: str, text: str, parsed: Any, ttl_s: float
    ) -> None:
        self.put(key, task, model, text, parsed, ttl_s)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    async def aclose(self) -> None:
        """Nothing is bound to an event loop; ``close`` closes the file."""
