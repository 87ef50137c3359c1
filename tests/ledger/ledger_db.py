"""The two ledger backends as test fixtures: a SQLite file, or a PostgreSQL schema of its own.

PostgreSQL runs at 127.0.0.1:5432 (trust auth, database ``test``) on this machine and in CI.
Each test gets a fresh schema (dropped afterwards), selected through the URL's search_path.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cascade import Ledger
from cascade.ledger.writer import flush_all

PG_HOST = "127.0.0.1:5432"
PG_DB = "test"


@cache
def pg_base() -> str:
    """A URL that connects (user postgres or root, whichever exists here)."""
    errors = []
    for user in ("postgres", "root"):
        url = f"postgresql://{user}@{PG_HOST}/{PG_DB}"
        try:
            with psycopg.connect(url, connect_timeout=5):
                return url
        except psycopg.Error as exc:
            errors.append(f"{user}: {exc}")
    raise RuntimeError(f"PostgreSQL at {PG_HOST} is required for these tests: {errors}")


@dataclass
class Db:
    backend: str
    path: Path | None = None
    url: str | None = None
    schema: str | None = None

    def open(self, **kwargs: Any) -> Ledger:
        if self.backend == "sqlite":
            return Ledger(self.path, **kwargs)
        return Ledger(url=self.url, **kwargs)

    def section(self) -> dict[str, Any]:
        """The config's ``ledger:`` section for this database."""
        return {"path": str(self.path)} if self.backend == "sqlite" else {"url": self.url}

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        flush_all()  # what the ledgers of this process queued for their writer threads
        if self.backend == "sqlite":
            with sqlite3.connect(self.path) as conn:  # type: ignore[arg-type]
                return conn.execute(sql, params).fetchall()
        with psycopg.connect(self.url, autocommit=True) as conn:  # type: ignore[arg-type]
            return [tuple(r) for r in conn.execute(sql.replace("?", "%s"), params).fetchall()]

    def execute(self, sql: str) -> None:
        """Run DDL as the database's owner (to make the ledger fail on purpose)."""
        if self.backend == "sqlite":
            with sqlite3.connect(self.path) as conn:  # type: ignore[arg-type]
                conn.executescript(sql)
            return
        with psycopg.connect(self.url, autocommit=True) as conn:  # type: ignore[arg-type]
            conn.execute(sql)  # type: ignore[arg-type]

    def drop_rollup(self) -> None:
        """Take a ledger back to schema 4: no rollup, its log or their triggers."""
        self._drop_triggers("rollup_top", _TOP_TRIGGERS)
        self._drop_triggers("rollup", (("steps", "insert"), ("steps", "update"),
                                       ("runs", "insert"), ("runs", "update"),
                                       ("feedback", "insert")))
        self.execute("DROP TABLE rollup")
        self.execute("DROP TABLE rollup_log")
        self.execute("UPDATE schema_version SET version = 4")

    def _drop_triggers(self, prefix: str, which: tuple[tuple[str, str], ...]) -> None:
        for table, event in which:
            name = f"{prefix}_{table}_{event}"
            if self.backend == "sqlite":
                self.execute(f"DROP TRIGGER {name}")
            else:
                self.execute(f"DROP TRIGGER {name} ON {table}")
                self.execute(f"DROP FUNCTION {name}()")

    def to_schema_7(self) -> None:
        """Take a ledger back to schema 7: no keys table or key names (schema 8), no
        always-top figures, their rollup sums and triggers, or the period indexes (schema 9)."""
        from cascade.ledger.triggers import SCHEMA_9_METRICS

        self._drop_triggers("rollup_top", _TOP_TRIGGERS)
        for index in ("runs_ts", "steps_ts", "runs_key_ts", "feedback_shadow"):
            self.execute(f"DROP INDEX {index}")
        for table, columns in (("rollup", SCHEMA_9_METRICS), ("rollup_log", SCHEMA_9_METRICS),
                               ("runs", ("top_usd", "top_estimated", "key_name")),
                               ("steps", ("key_name",)), ("feedback", ("key_name",))):
            for column in columns:
                self.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        self.execute("DROP TABLE keys")
        self.execute("UPDATE schema_version SET version = 7")


_TOP_TRIGGERS = (("runs", "insert"), ("runs", "update"), ("feedback", "insert"))


@cache
def _pg_ok() -> bool:
    pg_base()
    return True


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    """The same test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield Db("sqlite", path=tmp_path / "ledger.sqlite")
        return
    yield from pg_schema()


def pg_schema() -> Iterator[Db]:
    base = pg_base()
    schema = f"cl_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type]
    try:
        yield Db("postgres", url=f"{base}?options=-csearch_path%3D{schema}", schema=schema)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[arg-type]
