"""A SQLite ledger operation waits for the locks at most ``busy_timeout_s`` from its arrival
(issue 22, item 10), counted on an injected clock: the time it queued for one of the ledger's
threads, or behind this process's connection, comes out of the same budget.

The waits are shown by what the operation asked SQLite for (the busy timeout it set, the
``BEGIN IMMEDIATE`` attempts it made), never by elapsed seconds.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cascade import Ledger, LedgerError
from cascade.ledger import Pending
from cascade.ledger.backends import DEADLINE, SqliteBackend

BUSY_TIMEOUT_S = 2.0


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Spy:
    """The ledger's connection, recording each attempt to take the write lock with the busy
    timeout (ms) SQLite then had: how long that attempt was allowed to wait."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        self.attempts: list[int] = []

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "BEGIN IMMEDIATE":
            self.attempts.append(self._conn.execute("PRAGMA busy_timeout").fetchone()[0])
        return self._conn.execute(sql, *args)

    def close(self) -> None:
        self._conn.close()


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[tuple[Ledger, Clock, Spy]]:
    """A ledger on an injected clock, its connection spied on, while another connection holds
    the database's write lock."""
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path, busy_timeout_s=BUSY_TIMEOUT_S)
    backend = ledger.backend
    assert isinstance(backend, SqliteBackend)
    clock = Clock()
    backend.clock = clock
    spy = Spy(backend._conn)
    backend._conn = spy  # type: ignore[assignment]
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield ledger, clock, spy
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        ledger.close()


def _pending() -> Pending:
    return Pending("run", "t", 1, "m", "p", 0.01, 1_795_000_000.0)


def test_time_queued_for_a_ledger_thread_counts_against_the_wait(
        locked: tuple[Ledger, Clock, Spy]) -> None:
    """A reservation handed to the ledger's threads while both are busy, that gets one only
    after its whole busy timeout has passed, tries the lock once without waiting and fails
    closed: it does not start a full timeout of its own behind the others."""
    ledger, clock, spy = locked
    release = threading.Event()

    async def scenario() -> None:
        # Both threads of a SQLite ledger are taken (by requests waiting for the lock).
        busy = [asyncio.ensure_future(ledger.run(release.wait)) for _ in range(2)]
        queued = asyncio.ensure_future(ledger.run(ledger.reserve, _pending()))
        await asyncio.sleep(0)  # the reservation is handed over: its wait starts now
        clock.now += BUSY_TIMEOUT_S + 1
        release.set()
        await asyncio.gather(*busy)
        with pytest.raises(LedgerError, match="database is locked"):
            await queued

    asyncio.run(scenario())
    assert spy.attempts == [0]


def test_a_reservation_arriving_now_waits_one_busy_timeout(
        locked: tuple[Ledger, Clock, Spy]) -> None:
    """The same reservation arriving with its whole budget asks SQLite to wait for all of it,
    once."""
    ledger, _clock, spy = locked
    with pytest.raises(LedgerError, match="database is locked"):
        ledger.reserve(_pending())
    assert spy.attempts == [int(BUSY_TIMEOUT_S * 1000)]


def test_waiting_behind_this_process_connection_counts_too(
        locked: tuple[Ledger, Clock, Spy]) -> None:
    """While another thread of this process holds the ledger's connection (the writer thread
    waiting for the lock, say), an operation past its deadline fails at once instead of
    waiting for the connection, and never reaches SQLite."""
    ledger, clock, spy = locked
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        backend = ledger.backend
        assert isinstance(backend, SqliteBackend)
        backend._lock.acquire()
        inside.set()
        release.wait()
        backend._lock.release()

    holder = threading.Thread(target=hold)
    holder.start()
    outcome: list[BaseException] = []

    def late_reservation() -> None:
        token = DEADLINE.set(clock() - 1)  # it arrived more than a busy timeout ago
        try:
            ledger.reserve(_pending())
        except LedgerError as exc:
            outcome.append(exc)
        finally:
            DEADLINE.reset(token)

    try:
        assert inside.wait(10)
        late = threading.Thread(target=late_reservation)
        late.start()
        late.join(10)  # a guard against a hang only: it returns at once when right
        assert not late.is_alive()
    finally:
        release.set()
        holder.join()
    assert len(outcome) == 1
    assert "database is locked" in str(outcome[0])
    assert spy.attempts == []
