"""Behaviour a mutation run found untested (issue 22, "Tests the suite lacks"), ledger side.

Each test's docstring names the mutant it kills; each was checked by applying the mutant.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cascade.errors import LedgerError
from cascade.ledger.writer import Op, Writer
from cascade.ledger.writes import buckets, nano
from tests.ledger.ledger_db import Db
from tests.ledger.test_ledger_writer import gate, pending, step


def test_nano_dollars_are_rounded_not_truncated() -> None:
    """writes.nano: int() instead of round() would book 1.9 nano-dollars as 1, and drift the
    totals away from the steps by up to a nano-dollar per row."""
    assert nano(1.9e-9) == 2
    assert nano(-1.9e-9) == -2
    assert nano(0.1 + 0.2) == 300_000_000


def test_a_late_settlement_leaves_the_lost_charge_in_the_totals(db: Db) -> None:
    """writes.settle_write: `if changed and delta` -> `if delta` would correct the totals of a
    row that stays lost, so the totals would no longer equal the steps."""
    ledger = db.open()
    try:
        p = pending("r", reserved=0.25)
        step_id = ledger.reserve(p)
        assert isinstance(step_id, int)
        ledger.abandon(step_id, "cancelled")
        assert ledger.flush(timeout=10)
        key = buckets(p.task, p.ts)[0]
        assert ledger.spent([key])[key] == 0.25
        ledger.settle(step_id, p, step("r", cost=0.01))
        assert ledger.flush(timeout=10)
        assert ledger.spent([key])[key] == 0.25
        assert db.rows("SELECT status, cost_usd FROM steps") == [("lost", 0.25)]
    finally:
        ledger.close()


class _Unreachable:
    """A backend whose every transaction fails as an unreachable database does."""

    name = "fake"
    nowait = False

    def describe(self) -> str:
        return "fake"

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        raise LedgerError("cannot connect to the ledger database")
        yield  # pragma: no cover


def test_every_op_of_a_batch_hears_of_an_unreachable_database() -> None:
    """writer._write: after the first op of a batch finds the database unreachable, each op
    left gets its failure callback (batch[i + 2:] would drop one silently)."""
    writer = Writer(_Unreachable())  # type: ignore[arg-type]
    gathering, release = threading.Event(), threading.Event()
    writer.gather = lambda: (gathering.set(), release.wait(10))  # type: ignore[assignment,func-returns-value]
    failed: list[int] = []
    try:
        for i in range(4):
            writer.submit(Op(lambda tx: None, failed=lambda exc, i=i: failed.append(i)))
            if i == 0:
                assert gathering.wait(10)  # the others join the first one's batch
        release.set()
        assert writer.flush(timeout=10)
    finally:
        release.set()
        writer.stop(10)
    assert sorted(failed) == [0, 1, 2, 3]


def test_flush_says_false_when_its_timeout_runs_out(db: Db) -> None:
    """writer.flush: returning True at the deadline would tell a caller its writes are
    committed while they still wait behind a busy writer."""
    ledger = db.open()
    release = gate(ledger)  # the writer is held; what is queued now waits
    try:
        step_id = ledger.reserve(p := pending("r"))
        assert isinstance(step_id, int)
        ledger.settle(step_id, p, step("r"))
        assert ledger.writer.flush(timeout=0.05) is False
        release.set()
        assert ledger.writer.flush(timeout=10) is True
    finally:
        release.set()
        ledger.close()
