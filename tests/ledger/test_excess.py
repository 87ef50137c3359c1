"""Prompt tokens above the estimate (issue 22, item 5), through the real openai SDK against a
loopback upstream, on SQLite and PostgreSQL.

- The estimate is a bound: an upstream counting one token per byte of the prompt (the most a
  byte-level tokeniser can) never bills a call above its reservation.
- A call billed above its reservation (an upstream reporting far more input than was sent, a
  file sent by id) is in the totals when ``complete`` returns, so every later reservation, in
  this process or another, sees it: once over budget, new calls are refused.
- The true bound: spend exceeds the budget by at most the excess of the calls in flight at once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from typing import Any

import psycopg
import pytest

from cascade import Cascade, CascadeResult
from cascade.errors import BudgetExceeded
from cascade.testing import MockLLMServer, Reply
from tests.conftest import FAKE_OPENAI_KEY
from tests.ledger.ledger_db import Db

BUDGET = 1.0
PRICE = {"input": 15.0, "output": 75.0}  # $ per million tokens
CALLED = "decision <> 'skip'"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)


def config(server: MockLLMServer, db: Db) -> dict[str, Any]:
    """One rung, a $1 daily budget; its worst case for a short prompt is about $0.001."""
    return {
        "providers": {"openai": {"type": "openai", "base_url": server.openai_url}},
        "models": {"m": {"provider": "openai", "name": "big", "price": PRICE,
                         "max_output_tokens": 10}},
        "retry": {"attempts": 1},
        "ledger": db.section(),
        "budgets": {"daily_usd": BUDGET},
        "tasks": {"t": {"ladder": ["m"], "evaluators": []}},
    }


def spent(db: Db) -> float:
    """The day's running total as the next reservation reads it: what is committed, without
    waiting for any ledger's queue (``Db.rows`` would)."""
    sql = "SELECT SUM(spent_nusd) FROM totals WHERE scope = 'global' AND period = 'daily'"
    if db.backend == "sqlite":
        with closing(sqlite3.connect(db.path)) as conn:  # type: ignore[arg-type]
            (total,) = conn.execute(sql).fetchone()
    else:
        with psycopg.connect(db.url, autocommit=True) as conn:  # type: ignore[arg-type]
            (total,) = conn.execute(sql).fetchone()  # type: ignore[misc]
    return float(total) / 1e9


def excess(db: Db) -> float:
    """The most one call was billed above its reservation."""
    return float(db.rows(f"SELECT MAX(cost_usd - reserved_usd) FROM steps WHERE {CALLED}")[0][0])


def utf8_bytes_of_prompt(model: str, body: dict[str, Any]) -> Reply:
    """The most tokens a byte-level tokeniser can make of the prompt: one per byte of its text."""
    return Reply(text="ok", input_tokens=sum(
        len(m["content"].encode()) for m in body["messages"]), output_tokens=1)


@pytest.mark.parametrize("prompt", [
    "x" * 3000,  # a tokeniser that took every character apart
    "1 2 3 4 5 6 7 8 9 " * 100,
    "価格はいくらですか" * 300,
    "🙂" * 500,
])
def test_the_estimate_bounds_a_byte_level_tokeniser(db: Db, prompt: str) -> None:
    """A prompt counted at one token per byte by the upstream is never billed above its
    reservation: the estimate is a bound, not an average."""
    with MockLLMServer(utf8_bytes_of_prompt) as server, Cascade.from_dict(
            config(server, db)) as engine:
        result = engine.complete("t", prompt)
    assert result.steps[0].input_tokens == len(prompt.encode())
    ((cost, reserved),) = db.rows(f"SELECT cost_usd, reserved_usd FROM steps WHERE {CALLED}")
    assert 0 < cost <= reserved


@contextmanager
def held_writers(engines: list[Cascade]) -> Iterator[threading.Event]:
    """Every engine's ledger writer stops before its first commit until the event is set: each
    engine stands for a process whose queued writes have not been committed yet."""
    release = threading.Event()
    for engine in engines:
        assert engine.ledger is not None
        engine.ledger.writer.gather = release.wait  # type: ignore[method-assign]
    try:
        yield release
    finally:
        release.set()


def complete(engine: Cascade, on_loop: bool) -> CascadeResult:
    """``complete``, or ``acomplete`` on an event loop of its own."""
    if not on_loop:
        return engine.complete("t", "hello there")

    async def run() -> CascadeResult:
        try:
            return await engine.acomplete("t", "hello there")
        finally:
            await engine.aclose()  # the async clients of this event loop

    return asyncio.run(run())


@pytest.mark.parametrize("on_loop", [False, True], ids=["complete", "acomplete"])
def test_a_call_above_its_reservation_is_in_the_totals_when_it_returns(
    db: Db, on_loop: bool
) -> None:
    """With every ledger writer still holding its queue, a call billed far above its
    reservation is already in the shared totals when the run returns: the next process to
    reserve is refused once the budget is spent, whatever its own queue holds."""
    with ExitStack() as stack:
        server = stack.enter_context(MockLLMServer())
        server.script("big", [Reply(text="ok", input_tokens=40_000, output_tokens=1)])  # $0.60
        # Four engines on one ledger: four processes, each with its own writer and queue.
        engines = [stack.enter_context(Cascade.from_dict(config(server, db))) for _ in range(4)]
        stack.enter_context(held_writers(engines))
        first = complete(engines[0], on_loop)
        assert spent(db) == pytest.approx(first.cost_usd)  # not the worst case still queued
        complete(engines[1], on_loop)  # $0.60 + $0.60: now over the $1 budget
        for engine in engines[2:]:
            with pytest.raises(BudgetExceeded):
                complete(engine, on_loop)
    assert len(server.calls("big")) == 2
    assert spent(db) <= BUDGET + excess(db)  # one call in flight at a time


class InFlight:
    """Counts the calls in progress at once, from their reservation to their settlement."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = self.most = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


def test_concurrent_excess_is_bounded_by_the_calls_in_flight(db: Db) -> None:
    """Nine threads' calls each report 20,000 prompt tokens against an estimate of about 20:
    spend passes the budget by at most the excess of the calls in flight at once, and once
    over it every new call is refused."""
    with MockLLMServer() as server, Cascade.from_dict(config(server, db)) as engine:
        server.script("big", [Reply(text="ok", input_tokens=20_000, output_tokens=5,
                                    delay_s=0.2)])  # $0.30 a call, overlapping
        flight = InFlight()

        def call(_: int) -> bool:
            with flight:
                try:
                    engine.complete("t", "hello there")
                except BudgetExceeded:
                    return False
                return True

        threads = [threading.Thread(target=call, args=(i,)) for i in range(9)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        burst = spent(db)
        assert burst > BUDGET  # the calls in flight together went past it ...
        assert burst <= BUDGET + flight.most * excess(db)  # ... by at most their excess
        assert not any(call(i) for i in range(5))  # and nothing more is admitted
        assert spent(db) == pytest.approx(burst)
    assert len(server.calls("big")) == db.rows(
        f"SELECT COUNT(*) FROM steps WHERE {CALLED}")[0][0]


def test_concurrent_excess_is_bounded_on_the_event_loop(db: Db) -> None:
    """The same through ``acomplete`` (asyncio.gather), where a settlement above its
    reservation that cannot commit on the loop at once moves to the ledger's thread."""

    async def scenario(engine: Cascade, flight: InFlight) -> list[bool]:
        async def call() -> bool:
            with flight:
                try:
                    await engine.acomplete("t", "hello there")
                except BudgetExceeded:
                    return False
                return True

        try:
            burst = await asyncio.gather(*(call() for _ in range(9)))
            later = [await call() for _ in range(5)]
        finally:
            await engine.aclose()  # the async clients of this event loop
        return [*burst, *later]

    with MockLLMServer() as server, Cascade.from_dict(config(server, db)) as engine:
        server.script("big", [Reply(text="ok", input_tokens=20_000, output_tokens=5,
                                    delay_s=0.2)])
        flight = InFlight()
        admitted = asyncio.run(scenario(engine, flight))
        assert not any(admitted[9:])  # once over the budget, refused
        assert BUDGET < spent(db) <= BUDGET + flight.most * excess(db)
    assert len(server.calls("big")) == sum(admitted)
