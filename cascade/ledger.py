"""The SQLite ledger: one row per step of every run, one row per run.

Steps are written as they happen, so a run cut short (a crash, a disconnected client) still
leaves the steps it paid for. WAL mode lets a reader (``cascade report``) run beside a writer.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cascade.errors import ConfigError
from cascade.types import CascadeResult, StepRecord

__all__ = ["Ledger", "check_ledger_path", "open_ledger", "open_sqlite"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    ts REAL NOT NULL,
    task TEXT NOT NULL,
    step INTEGER NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    latency_ms REAL NOT NULL,
    decision TEXT NOT NULL,
    error TEXT,
    verdicts TEXT NOT NULL DEFAULT '[]',
    usage_estimated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS steps_run ON steps(run_id);
CREATE INDEX IF NOT EXISTS steps_task_ts ON steps(task, ts);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    task TEXT NOT NULL,
    model TEXT,
    accepted INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    latency_ms REAL NOT NULL,
    steps INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'ok'
);
CREATE INDEX IF NOT EXISTS runs_task_ts ON runs(task, ts);
"""


def open_sqlite(path: str) -> sqlite3.Connection:
    """A WAL-mode connection shared by threads (callers hold a lock around every use).

    One connection behind a lock: SQLite serialises writers anyway, and this keeps concurrent
    threads from ever seeing "database is locked".
    """
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def _unopenable(path: str, why: str, config_path: str | None) -> ConfigError:
    return ConfigError(
        f"cannot open the ledger {path!r}: {why}", path=config_path, location="ledger.path"
    )


def check_ledger_path(path: str, *, config_path: str | None = None) -> None:
    """Check, without creating anything, that a ledger could be opened at ``path``.

    Raises:
        ConfigError: one line naming ``ledger.path`` (a directory, a read-only place...).
    """
    if path == ":memory:":
        return
    target = Path(path)
    if target.is_dir():
        raise _unopenable(path, "it is a directory", config_path)
    if target.exists():
        if not os.access(target, os.R_OK | os.W_OK):
            raise _unopenable(path, "the file is not readable and writable", config_path)
        return
    parent = target.parent
    while not parent.exists():  # the ledger creates missing folders
        parent = parent.parent
    if not parent.is_dir():
        raise _unopenable(path, f"{str(parent)!r} is not a directory", config_path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _unopenable(path, f"cannot create files in {str(parent)!r}", config_path)


def open_ledger(path: str, *, config_path: str | None = None) -> Ledger:
    """``Ledger(path)``, with a failure to open it reported as a one-line ``ConfigError``."""
    check_ledger_path(path, config_path=config_path)
    try:
        return Ledger(path)
    except (OSError, sqlite3.Error) as exc:
        raise _unopenable(path, str(exc), config_path) from exc


class Ledger:
    """Append-only record of spend. Safe to share between threads and asyncio tasks.

    Args:
        path: The SQLite file (created with its folder), or ``":memory:"``.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._conn = open_sqlite(self.path)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            self._migrate()

    def __repr__(self) -> str:
        return f"Ledger({self.path!r})"

    def _migrate(self) -> None:
        """Bring a ledger written by an older version up to this schema, in place.

        Adding a column with a default rewrites nothing: old rows read as 0 (usage reported).
        """
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(steps)")}
        if "usage_estimated" not in columns:
            self._conn.execute(
                "ALTER TABLE steps ADD COLUMN usage_estimated INTEGER NOT NULL DEFAULT 0"
            )

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def record_step(self, step: StepRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO steps (run_id, ts, task, step, model, provider, attempts,"
                " input_tokens,"
                " cached_input_tokens, output_tokens, cost_usd, latency_ms, decision, error,"
                " verdicts, usage_estimated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    step.run_id,
                    step.ts or time.time(),
                    step.task,
                    step.step,
                    step.model,
                    step.provider,
                    step.attempts,
                    step.input_tokens,
                    step.cached_input_tokens,
                    step.output_tokens,
                    step.cost_usd,
                    step.latency_ms,
                    step.decision,
                    step.error,
                    json.dumps([v.as_dict() for v in step.verdicts]),
                    int(step.usage_estimated),
                ),
            )

    def record_run(self, result: CascadeResult, *, status: str = "ok") -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO runs (run_id, ts, task, model, accepted, cost_usd,"
                " latency_ms, steps, status) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    result.run_id,
                    time.time(),
                    result.task,
                    result.model or None,
                    int(result.accepted),
                    result.cost_usd,
                    result.latency_ms,
                    len(result.steps),
                    status,
                ),
            )

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cursor = self._conn.cursor()
            cursor.row_factory = sqlite3.Row
            return list(cursor.execute(sql, params))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
