"""The ledger's writer thread, on SQLite and on PostgreSQL: settlements and run rows are queued
and committed in batches; reads see what was queued before them; close and a normal exit write
the queue; a crash before the commit leaves the pending row, settled as lost at its reserved
cost; a failing batch is retried row by row, and the ledger then fails closed.

Tests hold the writer with a "gate": an operation whose ``done`` callback (run on the writer
thread, outside any transaction) waits for an event, so everything queued after it waits too.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cascade import Cascade, LedgerError
from cascade.ledger import Ledger, Pending, buckets
from cascade.ledger.money import Accounts, Hold, Limit
from cascade.ledger.writer import Op
from cascade.testing import FakeProvider, make_completion
from cascade.types import CascadeResult, StepRecord
from tests.engine.test_engine import config
from tests.ledger.ledger_db import Db

ROOT = Path(__file__).resolve().parents[2]


_GATES: list[threading.Event] = []


@pytest.fixture(autouse=True)
def _open_gates() -> Any:
    """A failed assertion must not leave a writer held (close() would wait for it)."""
    yield
    while _GATES:
        _GATES.pop().set()


def gate(ledger: Ledger) -> threading.Event:
    """Hold the writer thread until the returned event is set."""
    release, entered = threading.Event(), threading.Event()
    _GATES.append(release)

    def hold(_: object) -> None:
        entered.set()
        release.wait(30)

    ledger.writer.submit(Op(lambda tx: None, done=hold))
    assert entered.wait(10)  # what is queued from now on waits behind the gate
    return release


def release_later(event: threading.Event, delay: float = 0.3) -> None:
    threading.Timer(delay, event.set).start()


def pending(run_id: str, reserved: float = 0.25) -> Pending:
    return Pending(run_id, "t", 1, "large", "p", reserved, time.time())


def step(run_id: str, cost: float = 0.01) -> StepRecord:
    return StepRecord(run_id, "t", 1, "large", "p", 1, 10, 10, cost, 5.0, "accept")


def result(run_id: str, cost: float = 0.01) -> CascadeResult:
    return CascadeResult("ok", "large", True, cost, 5.0, run_id, (step(run_id, cost),), "t")


def test_many_settlements_commit_in_few_transactions(db: Db) -> None:
    """200 settlements and 200 run rows queued while the writer is busy go in one batch."""
    ledger = db.open()
    try:
        holds = [(ledger.reserve(p := pending(f"r{i}")), p) for i in range(200)]
        release = gate(ledger)
        before = ledger.writer.batches
        for i, (step_id, p) in enumerate(holds):
            assert isinstance(step_id, int)
            ledger.settle(step_id, p, step(f"r{i}"))
            ledger.record_run(result(f"r{i}"))
        assert ledger.writer.backlog == 401  # the gate's batch is counted when it ends
        release.set()
        assert ledger.flush(timeout=30)
        assert ledger.writer.batches - before == 1
        rows = ledger.query("SELECT status, COUNT(*) AS n FROM steps GROUP BY status")
        assert [(r["status"], r["n"]) for r in rows] == [("settled", 200)]
        assert ledger.query("SELECT COUNT(*) AS n FROM runs")[0]["n"] == 200
    finally:
        ledger.close()


def test_writes_arriving_together_share_a_commit(db: Db) -> None:
    """A run's settlement and its run row, queued a moment apart, go in one transaction: the
    writer lets a batch fill for GATHER_S instead of committing each write as it arrives."""
    ledger = db.open()
    gathering, release = threading.Event(), threading.Event()
    _GATES.append(release)
    try:
        step_id = ledger.reserve(p := pending("r1"))
        assert isinstance(step_id, int)
        assert ledger.flush(timeout=10)
        ledger.writer.gather = lambda: (gathering.set(), release.wait(30))  # type: ignore[assignment,func-returns-value]
        before = ledger.writer.batches
        ledger.settle(step_id, p, step("r1"))
        assert gathering.wait(10)  # the writer has the first write and is letting the batch fill
        ledger.record_run(result("r1"))  # the engine's next write, a little later
        release.set()
        assert ledger.flush(timeout=10)
        assert ledger.writer.batches - before == 1
    finally:
        ledger.close()


def test_a_settlement_above_its_reservation_is_written_before_the_next_reservation(
    db: Db,
) -> None:
    """A call that cost more than its worst case: the next budget decision sees that cost,
    not the reservation it replaces, even while the writer is busy."""
    ledger = db.open()
    try:
        step_id = ledger.reserve(first := pending("r1", reserved=0.25))
        assert isinstance(step_id, int)
        release = gate(ledger)  # the settlement stays queued behind this
        ledger.settle(step_id, first, step("r1", cost=0.4))
        release_later(release, 0.2)
        seen: dict[Any, int] = {}
        assert isinstance(ledger.reserve(pending("r2", reserved=0.1),
                                         lambda totals: seen.update(totals)), int)
        assert seen[buckets("t", first.ts)[0]] == round(0.4 * 1e9)  # spend before r2
    finally:
        ledger.close()


def test_reads_see_what_was_queued_before_them(db: Db) -> None:
    """query and spent, on this ledger or another of this process on the same database, and
    feedback wait for queued writes: the row is settled, the real cost counts (not the
    reservation), the run exists."""
    ledger = db.open()
    other = db.open()
    try:
        for n, read in enumerate(("other.query", "ledger.spent", "feedback")):
            p = pending(f"r{n}", reserved=0.25)
            step_id = ledger.reserve(p)
            assert isinstance(step_id, int)
            release = gate(ledger)
            ledger.settle(step_id, p, step(f"r{n}", cost=0.01))
            ledger.record_run(result(f"r{n}", cost=0.01))
            release_later(release)
            if read == "other.query":
                rows = other.query("SELECT status FROM steps WHERE run_id = 'r0'")
                assert [r["status"] for r in rows] == ["settled"]
            elif read == "ledger.spent":
                key = buckets("t", p.ts)[0]
                assert ledger.spent([key])[key] == pytest.approx(0.02)
            else:
                from cascade.ledger.feedback import add_feedback
                assert add_feedback(ledger, "r2", 1.0).run_id == "r2"
            assert release.is_set(), read  # it returned only once the writer was let go
    finally:
        other.close()
        ledger.close()


def test_close_writes_the_queue(db: Db) -> None:
    """close() commits everything queued, even while the writer is still busy."""
    ledger = db.open()
    p = pending("r")
    step_id = ledger.reserve(p)
    assert isinstance(step_id, int)
    release = gate(ledger)
    ledger.settle(step_id, p, step("r"))
    ledger.record_run(result("r"))
    release_later(release)
    ledger.close()
    assert db.rows("SELECT status FROM steps") == [("settled",)]
    assert db.rows("SELECT run_id FROM runs") == [("r",)]
    with pytest.raises(LedgerError, match="closed"):
        ledger.record_run(result("late"))


EXITER = """
import sys, threading, time
from cascade.ledger import Ledger, Pending
from cascade.ledger.writer import Op
from cascade.types import StepRecord
where, mode = sys.argv[1], sys.argv[2]
ledger = Ledger(where) if not where.startswith("postgresql") else Ledger(url=where)
p = Pending("run", "t", 1, "large", "p", 0.25, time.time())
step_id = ledger.reserve(p)
release, entered = threading.Event(), threading.Event()
ledger.writer.submit(Op(lambda tx: None, done=lambda _: (entered.set(), release.wait())))
entered.wait()
ledger.settle(step_id, p, StepRecord("run", "t", 1, "large", "p", 1, 10, 10, 0.01, 5.0, "accept"))
print(ledger.writer.backlog, flush=True)
if mode == "exit":
    # The writer is still held when the interpreter starts to exit: atexit runs this hook
    # (registered last) first, then the ledger's, which must wait for the settlement's commit.
    import atexit
    atexit.register(release.set)
else:
    import os
    os.kill(os.getpid(), 9)  # the settlement is still queued
"""


def run_exiter(db: Db, mode: str) -> subprocess.CompletedProcess[str]:
    where = str(db.path) if db.backend == "sqlite" else str(db.url)
    return subprocess.run([sys.executable, "-c", EXITER, where, mode], cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=60)


def test_a_normal_exit_writes_the_queue(db: Db) -> None:
    """A process that ends without closing its ledger still commits what it queued."""
    db.open().close()
    proc = run_exiter(db, "exit")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2"]  # the gate and the settlement were queued
    assert db.rows("SELECT status, cost_usd FROM steps") == [("settled", 0.01)]


def test_a_crash_before_the_commit_is_lost_at_the_reserved_cost(db: Db) -> None:
    """kill -9 with a settlement still queued: the pending row is there, and the next open
    settles it as lost at its reserved worst case, counted once in the totals."""
    db.open().close()
    proc = run_exiter(db, "kill")
    assert proc.returncode == -9, proc.stderr
    assert db.rows("SELECT status FROM steps") == [("pending",)]
    ledger = db.open()
    try:
        assert [r["run_id"] for r in ledger.recovered] == ["run"]
        assert db.rows("SELECT status, cost_usd FROM steps") == [("lost", 0.25)]
        key = buckets("t", time.time())[0]
        assert ledger.spent([key])[key] == 0.25
    finally:
        ledger.close()


def refuse_settling(db: Db, run_id: str) -> None:
    """The database refuses to settle that one run's row (as a full disk would, but only there)."""
    if db.backend == "sqlite":
        db.execute(f"CREATE TRIGGER refuse BEFORE UPDATE ON steps WHEN NEW.run_id = '{run_id}'"
                   " BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END;")
    else:
        db.execute(f"ALTER TABLE steps ADD CONSTRAINT refuse CHECK (run_id <> '{run_id}'"
                   " OR status = 'pending') NOT VALID")


def test_a_failing_batch_is_retried_row_by_row(db: Db) -> None:
    """One refused settlement fails the batch; the others are written on their own, the
    refused one is logged once (its row stays pending, at its worst case)."""
    ledger = db.open()
    try:
        accounts = Accounts(ledger, [])
        holds = {}
        for run_id in ("a", "bad", "c"):
            p = pending(run_id)
            step_id = ledger.reserve(p)
            assert isinstance(step_id, int)
            holds[run_id] = Hold(step_id, p)
        refuse_settling(db, "bad")
        with capture_logs() as logs:
            release = gate(ledger)
            for run_id, hold in holds.items():
                accounts.settle(hold, step(run_id))
                ledger.record_run(result(run_id))
            release.set()
            ledger.flush()
        assert db.rows("SELECT run_id, status FROM steps ORDER BY run_id") == [
            ("a", "settled"), ("bad", "pending"), ("c", "settled")]
        assert db.rows("SELECT run_id FROM runs ORDER BY run_id") == [("a",), ("bad",), ("c",)]
        failed = [e for e in logs if e["event"] == "cascade.ledger_settle_failed"]
        assert [(e["run_id"], e["log_level"]) for e in failed] == [("bad", "error")]
        assert failed[0]["reserved_usd"] == 0.25
    finally:
        ledger.close()


def test_after_a_failed_write_reserve_fails_closed_for_a_while(db: Db) -> None:
    """Once a queued write could not be written, the next reservation raises LedgerError
    naming the cause, so no model is called unrecorded; after fail_closed_s it tries again."""
    ledger = db.open(fail_closed_s=0.5)
    now = [1000.0]
    ledger.writer.clock = lambda: now[0]
    try:
        p = pending("bad")
        step_id = ledger.reserve(p)
        assert isinstance(step_id, int)
        refuse_settling(db, "bad")
        with capture_logs():
            ledger.settle(step_id, p, step("bad"))
            ledger.flush()
        with pytest.raises(LedgerError, match="could not record an earlier call's outcome"
                           ) as info:
            ledger.reserve(pending("next"))
        assert ("disk I/O error" if db.backend == "sqlite" else "refuse") in str(info.value)
        now[0] += 0.49  # still inside the window
        with pytest.raises(LedgerError, match="could not record"):
            ledger.reserve(pending("still"))
        now[0] += 0.02  # past it
        assert isinstance(ledger.reserve(pending("later")), int)
    finally:
        ledger.close()


def test_fail_closed_engine_calls_no_model(db: Db) -> None:
    """Through the engine: the call after a failed settlement raises LedgerError before its
    provider is called."""
    fake = FakeProvider("p", {"small": ["a fine answer"]})
    data = config(ladder=["small"], evaluators=[])
    data["ledger"] = db.section()
    with Cascade.from_dict(data, providers={"p": fake}) as engine:
        if db.backend == "sqlite":
            db.execute("CREATE TRIGGER nosettle BEFORE UPDATE ON steps BEGIN "
                       "SELECT RAISE(ABORT, 'disk I/O error'); END;")
        else:
            db.execute("ALTER TABLE steps ADD CONSTRAINT nosettle CHECK (status <> 'settled')"
                       " NOT VALID")
        with capture_logs():
            engine.complete("t", "q", max_tokens=10)
            assert engine.ledger is not None
            engine.ledger.flush()
            with pytest.raises(LedgerError, match="could not record"):
                engine.complete("t", "q", max_tokens=10)
    assert len(fake.calls) == 1


def test_text_the_database_cannot_store_is_stored_cleaned_and_closes_nothing(db: Db) -> None:
    """An answer with NUL (PostgreSQL refuses it) and a lone surrogate (neither backend can
    encode it), logged with content: stored with U+FFFD, and the next call goes ahead."""
    fake = FakeProvider("p", {"small": ["a\x00b\ud800c"]})
    data = config(ladder=["small"], evaluators=[])
    data["ledger"] = db.section()
    data["logging"] = {"content": True}
    with Cascade.from_dict(data, providers={"p": fake}) as engine:
        first = engine.complete("t", "q", max_tokens=10)
        assert engine.ledger is not None
        engine.ledger.flush()
        assert engine.complete("t", "q", max_tokens=10).accepted  # not failed closed
        assert engine.ledger.writer.failure is None
    assert db.rows("SELECT text FROM content WHERE run_id = ? AND kind = 'answer'",
                   (first.run_id,)) == [("a\ufffdb\ufffdc",)]


def test_a_row_refused_for_its_data_is_logged_without_failing_closed(db: Db) -> None:
    """A write refused for its own values (not the database's health) is given up and logged,
    and reservations go on."""
    ledger = db.open()
    try:
        def bad(tx: Any) -> None:
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")

        with capture_logs() as logs:
            ledger.writer.submit(Op(bad))
            assert ledger.flush(timeout=10)
        assert [e["event"] for e in logs] == ["cascade.ledger_write_failed"]
        assert isinstance(ledger.reserve(pending("next")), int)
    finally:
        ledger.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads (3.12+)
def test_a_forked_child_cannot_queue_into_the_parents_writer(db: Db) -> None:
    """After fork() the parent's writer thread does not exist in the child: a write there is a
    LedgerError, never silently queued to nobody."""
    ledger = db.open()
    try:
        ledger.record_run(result("parent"))  # the writer thread is running now
        assert ledger.flush(timeout=10)
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code only
            try:
                ledger.record_run(result("child"))
            except LedgerError:
                os._exit(0)
            except BaseException:
                os._exit(2)
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        ledger.close()


def test_a_flush_racing_a_stopping_writer_returns(db: Db) -> None:
    """A writer that ends between a flush's check and its barrier: the flush returns instead of
    waiting for ever."""
    ledger = db.open()
    writer = ledger.writer
    ledger.record_run(result("r"))
    ledger.close()

    class Racing:  # alive when the flush looks, gone once its barrier is queued
        calls = 0

        def is_alive(self) -> bool:
            Racing.calls += 1
            return Racing.calls == 1

    real, writer._thread = writer._thread, Racing()  # type: ignore[assignment]
    writer._submitted += 1  # something still counted as queued
    outcome: list[bool] = []
    try:
        flushing = threading.Thread(target=lambda: outcome.append(writer.flush(timeout=None)),
                                    daemon=True)
        flushing.start()
        flushing.join(60)  # a liveness bound: the flush needs one 0.1 s slice, not for ever
        assert outcome == [False]
        assert Racing.calls == 2  # it looked before queuing its barrier and after one slice
    finally:
        writer._thread, writer._submitted = real, writer._submitted - 1


def test_a_settlement_after_recovery_warns_from_the_writer(db: Db) -> None:
    """A row already settled as lost stays lost; the late settlement is a warning."""
    ledger = db.open()
    try:
        p = pending("r")
        step_id = ledger.reserve(p)
        assert isinstance(step_id, int)
        db.execute(f"UPDATE steps SET status = 'lost' WHERE id = {step_id}")
        with capture_logs() as logs:
            Accounts(ledger, []).settle(Hold(step_id, p), step("r"))
            ledger.flush()
        late = [e for e in logs if e["event"] == "cascade.ledger_settled_late"]
        assert len(late) == 1 and late[0]["log_level"] == "warning"
        assert db.rows("SELECT status, cost_usd FROM steps") == [("lost", 0.25)]
    finally:
        ledger.close()


def test_a_thousand_concurrent_runs_lose_no_row(db: Db) -> None:
    """1,000 concurrent acomplete runs: every step settled, every run recorded, and the totals
    equal the sum of the real costs."""
    fake = FakeProvider("p", {"small": [make_completion("a fine answer", input_tokens=10,
                                                        output_tokens=5)]})
    data = config(ladder=["small"], evaluators=[])
    data["ledger"] = db.section()
    engine = Cascade.from_dict(data, providers={"p": fake})

    async def main() -> list[CascadeResult]:
        return await asyncio.gather(*(engine.acomplete("t", f"q{i}", max_tokens=10)
                                      for i in range(1000)))

    with engine:
        results = asyncio.run(main())
        assert engine.ledger is not None
        batches = engine.ledger.writer.batches
    assert db.rows("SELECT status, COUNT(*) FROM steps GROUP BY status") == [("settled", 1000)]
    assert db.rows("SELECT COUNT(DISTINCT run_id) FROM runs") == [(1000,)]
    total = sum(r.cost_usd for r in results)
    ((spent,),) = db.rows("SELECT spent_nusd FROM totals WHERE scope = 'global'"
                          " AND period = 'daily'")
    assert spent / 1e9 == pytest.approx(total)
    assert batches < 2000  # grouped: fewer transactions than queued writes


def test_postgres_async_path_sends_only_the_reservation_to_a_thread(db: Db) -> None:
    """acomplete: the settlement and the run row are queued in place on the event loop; only
    the reservation (a transaction) goes to the ledger's threads."""
    fake = FakeProvider("p", {"small": ["a fine answer"]})
    data = config(ladder=["small"], evaluators=[])
    data["ledger"] = db.section()
    engine = Cascade.from_dict(data, providers={"p": fake})
    assert engine.ledger is not None
    on_thread: list[str] = []
    run = engine.ledger.run

    async def counted(fn: Any, *args: Any) -> Any:
        on_thread.append(getattr(getattr(fn, "func", fn), "__name__", "?"))
        return await run(fn, *args)

    engine.ledger.run = counted  # type: ignore[method-assign]
    with engine:
        asyncio.run(engine.acomplete("t", "q", max_tokens=10))
    assert "step" not in on_thread and "finish" not in on_thread
    assert on_thread == ([] if db.backend == "sqlite" else ["check"])
    assert db.rows("SELECT status FROM steps") == [("settled",)]


def test_a_refusal_first_writes_this_process_s_queued_settlements(db: Db) -> None:
    """A budget that fits the next call only once this process's queued settlement is
    committed (real cost instead of the worst case) grants it after waiting for the writer."""
    ledger = db.open()
    try:
        accounts = Accounts(ledger, [Limit("global", "daily", 0.3)])

        def reserve(run_id: str) -> tuple[Hold | None, Any]:
            return accounts.reserve(run_id=run_id, task="t", step=1, model_key="m",
                                    provider="p", estimate=0.25, spent=0.0, cap=None)

        first, refusal = reserve("a")
        assert first is not None and refusal is None
        release = gate(ledger)
        accounts.settle(first, step("a", cost=0.01))
        release_later(release)
        second, refusal = reserve("b")  # 0.25 + 0.25 > 0.3 until the settlement is written
        assert refusal is None and second is not None
        third, refusal = reserve("c")  # 0.01 + 0.25 + 0.25 > 0.3: a real refusal
        assert third is None and refusal is not None
    finally:
        ledger.close()
