"""An exact-match response cache in SQLite, opt-in per task with a TTL.

The key is a hash of the task's configuration, the messages and the call parameters, so
changing a ladder, an evaluator or a prompt never serves a stale answer.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cascade.config import CascadeConfig
from cascade.ledger import open_sqlite
from cascade.types import Message

__all__ = ["ResponseCache", "cache_key", "task_cache_key"]


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
    config: CascadeConfig, task: str, messages: Sequence[Message], params: Mapping[str, Any]
) -> str:
    """The key of ``task``'s answer to ``messages`` under this config.

    Models and providers are part of it: a changed model name, price or parameter must not
    serve an answer cached under the old one.
    """
    definition = {
        "task": config.tasks[task].model_dump(mode="json"),
        "models": {k: m.model_dump(mode="json") for k, m in config.models.items()},
        "providers": {k: p.model_dump(mode="json") for k, p in config.providers.items()},
    }
    return cache_key(definition, messages, params)


class ResponseCache:
    """Stores accepted answers: text, the model key that answered, and the parsed JSON."""

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

    def get(self, key: str) -> tuple[str, str, Any] | None:
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

    def close(self) -> None:
        with self._lock:
            self._conn.close()
