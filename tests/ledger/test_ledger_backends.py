"""The ledger on both backends: write-ahead rows, budgets in the database, fail-closed writes,
recovery of dead processes' rows, in-place upgrade, and no password anywhere.

Every test here runs on SQLite and on PostgreSQL (the ``db`` fixture).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from cascade import Cascade, CascadeError, Completion, Ledger, LedgerError
from cascade.cli import main
from cascade.config.pricing import Price
from cascade.ledger import Pending, buckets
from cascade.ledger.money import worst_case_cost
from cascade.ledger.schema import VERSION
from cascade.replay.report import ledger_report
from cascade.testing import FakeProvider, make_completion
from tests.engine.test_engine import config
from tests.ledger.ledger_db import Db

ROOT = Path(__file__).resolve().parents[2]


def build(db: Db, script: dict[str, list[Any]], provider: FakeProvider | None = None,
          **kwargs: Any) -> tuple[Cascade, FakeProvider]:
    fake = provider or FakeProvider("p", script)
    data = config(**kwargs)
    data["ledger"] = db.section()
    return Cascade.from_dict(data, providers={"p": fake}, sleep=lambda s: None), fake


def test_rows_and_report_are_the_same_on_both_backends(db: Db) -> None:
    """One row per step, settled with real tokens and cost; the report reads the same."""
    engine, _ = build(db, {"small": [make_completion("no", input_tokens=100, output_tokens=1)],
                           "medium": [make_completion("a fine answer", input_tokens=100,
                                                      output_tokens=3)]})
    with engine:
        result = engine.complete("t", "q", max_tokens=50)
        report = ledger_report(engine.ledger)  # type: ignore[arg-type]
    got = db.rows("SELECT step, model, attempts, input_tokens, output_tokens, cost_usd, decision,"
                  " status FROM steps ORDER BY step")
    assert got == [
        (1, "small", 1, 100, 1, pytest.approx(102 / 1e6), "escalate", "settled"),
        (2, "medium", 1, 100, 3, pytest.approx(318 / 1e6), "accept", "settled"),
    ]
    (reserved,) = db.rows("SELECT reserved_usd FROM steps WHERE step = 1")[0]
    assert reserved == pytest.approx(worst_case_cost([{"role": "user", "content": "q"}],
                                                     {"max_tokens": 50}, Price(input=1, output=2)))
    assert report["runs"] == 1
    assert report["unfinished"] == 0
    assert report["total_cost_usd"] == pytest.approx(result.cost_usd)
    assert report["tasks"]["t"]["models"]["medium"]["calls"] == 1
    assert report["tasks"]["t"]["escalation_rate"] == 1.0
    assert db.rows("SELECT version FROM schema_version") == [(VERSION,)]


def test_a_pending_row_exists_before_the_call(db: Db) -> None:
    """While the provider is being called, the step's row is in the database as pending,
    with its worst case reserved and counted in spend."""
    seen: list[tuple[Any, ...]] = []

    class Peeking(FakeProvider):
        def complete(self, *args: Any, **kwargs: Any) -> Completion:
            seen.extend(db.rows("SELECT step, status, decision, cost_usd, reserved_usd"
                                " FROM steps"))
            return super().complete(*args, **kwargs)

    engine, _ = build(db, {}, provider=Peeking("p", {"small": ["a fine answer"]}))
    with engine:
        engine.complete("t", "q", max_tokens=100)
    ((step, status, decision, cost, reserved),) = seen
    assert (step, status, decision) == (1, "pending", "pending")
    assert cost == reserved > 0
    assert db.rows("SELECT status FROM steps") == [("settled",)]


def test_budget_holds_across_two_ledgers_sharing_the_database(db: Db) -> None:
    """A call in flight in one process (its pending row) blocks another process's call that
    the budget cannot also fit; afterwards the real cost, not the worst case, counts."""
    budget = worst_case_cost([{"role": "user", "content": "q"}], {"max_tokens": 1000},
                             Price(input=10, output=30)) * 1.5
    other_outcomes: list[Any] = []

    class Concurrent(FakeProvider):
        """While this call is in flight, another engine tries to spend the same budget."""

        def complete(self, *args: Any, **kwargs: Any) -> Completion:
            second, _ = build(db, {"large": ["a fine answer"]}, ladder=["large"], evaluators=[],
                              budgets={"daily_usd": budget})
            with second:
                try:
                    other_outcomes.append(second.complete("t", "q", max_tokens=1000))
                except Exception as exc:
                    other_outcomes.append(exc)
            return super().complete(*args, **kwargs)

    data = config(ladder=["large"], evaluators=[])
    data["budgets"] = {"daily_usd": budget}
    data["ledger"] = db.section()
    fake = Concurrent("p", {"large": [make_completion("a fine answer", input_tokens=10,
                                                      output_tokens=10)]})
    with Cascade.from_dict(data, providers={"p": fake}) as engine:
        result = engine.complete("t", "q", max_tokens=1000)
        assert result.accepted
        assert [type(o).__name__ for o in other_outcomes] == ["BudgetExceeded"]
        assert "daily budget of task 't'" in str(other_outcomes[0])
        status = engine.limits.guard.status()  # type: ignore[union-attr]
        assert status[0]["spent_usd"] == pytest.approx((10 * 10 + 10 * 30) / 1e6)


def test_unwritable_ledger_means_no_upstream_call(db: Db) -> None:
    """If the pending row cannot be written, the model is never called: one LedgerError."""
    engine, fake = build(db, {"small": ["a fine answer"]})
    if db.backend == "sqlite":  # the database refuses every write, like a full disk
        db.execute("CREATE TRIGGER full BEFORE INSERT ON steps BEGIN "
                   "SELECT RAISE(ABORT, 'database or disk is full'); END;")
    else:
        db.execute("ALTER TABLE steps ADD CONSTRAINT disk_full CHECK (false) NOT VALID")
    with engine, pytest.raises(LedgerError, match="ledger write failed") as info:
        engine.complete("t", "q")
    assert fake.calls == []
    assert isinstance(info.value, CascadeError)
    assert db.rows("SELECT COUNT(*) FROM steps") == [(0,)]


def test_failed_settlement_still_returns_the_answer(db: Db,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Only the settling write fails: the caller gets the answer, the failure is logged, and
    the pending row keeps counting its reserved worst case."""
    engine, fake = build(db, {"small": ["a fine answer"]}, ladder=["small"])
    if db.backend == "sqlite":
        db.execute("CREATE TRIGGER nosettle BEFORE UPDATE ON steps BEGIN "
                   "SELECT RAISE(ABORT, 'disk I/O error'); END;")
    else:
        db.execute("ALTER TABLE steps ADD CONSTRAINT nosettle CHECK (status <> 'settled')"
                   " NOT VALID")
    with capture_logs() as logs, engine:  # the engine closes (writes its queue) first
        result = engine.complete("t", "q", max_tokens=100)
    assert result.text == "a fine answer"
    assert len(fake.calls) == 1
    ((status, cost, reserved),) = db.rows("SELECT status, cost_usd, reserved_usd FROM steps")
    assert status == "pending"
    assert cost == reserved > result.cost_usd
    failed = [e for e in logs if e["event"] == "cascade.ledger_settle_failed"]
    assert len(failed) == 1 and failed[0]["log_level"] == "error"
    # The library prints nothing: the event goes to the stdlib logger ``cascade``.
    again, _ = build(db, {"small": ["a fine answer"]}, ladder=["small"])
    with again:
        again.complete("t", "q", max_tokens=100)
    assert db.rows("SELECT status FROM steps") == [("pending",), ("pending",)]
    assert capsys.readouterr().out == ""


CRASHER = """
import os, sys, time
from cascade.ledger import Ledger, Pending
where = sys.argv[1]
ledger = Ledger(where) if not where.startswith("postgresql") else Ledger(url=where)
ledger.reserve(Pending("dead-run", "t", 1, "large", "p", 0.25, time.time()))
os.kill(os.getpid(), 9)
"""


def crash_with_a_pending_row(db: Db) -> None:
    """A real process writes a pending row and is killed -9 before settling it."""
    where = str(db.path) if db.backend == "sqlite" else str(db.url)
    proc = subprocess.run([sys.executable, "-c", CRASHER, where], cwd=ROOT, check=False,
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr


def test_dead_process_rows_are_settled_lost_on_open(db: Db) -> None:
    """The next process to open the ledger settles a killed process's pending row as lost at
    its reserved cost; the report shows it unfinished and counts it in spend."""
    db.open().close()
    crash_with_a_pending_row(db)
    assert db.rows("SELECT status FROM steps") == [("pending",)]
    ledger = db.open()
    try:
        assert [r["run_id"] for r in ledger.recovered] == ["dead-run"]
        assert db.rows("SELECT status, decision, cost_usd FROM steps") == [
            ("lost", "lost", 0.25)]
        report = ledger_report(ledger)
        assert report["unfinished"] == 1
        assert report["total_cost_usd"] == 0.25
        key = buckets("t", time.time())[0]
        assert ledger.spent([key])[key] == 0.25  # charged when written, not charged twice
    finally:
        ledger.close()


def test_live_process_rows_are_left_alone(db: Db) -> None:
    """Another live ledger's pending row is not touched; a recycled pid does not save one."""
    live = db.open()
    try:
        live.reserve(Pending("live-run", "t", 1, "large", "p", 0.5, time.time()))
        other = db.open()
        assert other.recovered == []
        assert db.rows("SELECT status FROM steps") == [("pending",)]
        # Same pid, another start time: a new process that reused the pid. That owner is dead.
        db.execute(f"UPDATE owners SET proc_start = '1' WHERE owner = '{live.owner.owner}'")
        assert [r["run_id"] for r in other.recover()] == ["live-run"]
        other.close()
    finally:
        live.close()


def test_owner_on_another_host_is_dead_after_its_lease(db: Db) -> None:
    """A replica on another host is alive while its heartbeat is fresh, dead after the lease."""
    ledger = db.open()
    try:
        now = time.time()
        db.execute("INSERT INTO owners (owner, host, boot_id, pid, proc_start, started, heartbeat)"
                   f" VALUES ('remote', 'other-host', 'b', 1, '1', {now}, {now})")
        db.execute("INSERT INTO steps (run_id, ts, task, step, model, provider, attempts,"
                   " input_tokens, output_tokens, cost_usd, latency_ms, decision, status,"
                   f" reserved_usd, owner) VALUES ('r', {now}, 't', 1, 'm', 'p', 0, 0, 0, 0.1,"
                   " 0, 'pending', 'pending', 0.1, 'remote')")
        assert ledger.recover(now=now + 30) == []
        assert len(ledger.recover(now=now + 61)) == 1
        assert db.rows("SELECT status FROM steps") == [("lost",)]
    finally:
        ledger.close()


def test_cli_ledger_recover(db: Db, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``cascade ledger recover`` settles a dead process's rows and says so in one line."""
    db.open().close()
    crash_with_a_pending_row(db)
    if db.backend == "sqlite":
        args = ["--ledger", str(db.path)]
    else:
        monkeypatch.setenv("TEST_LEDGER_URL", str(db.url))
        args = ["--url-env", "TEST_LEDGER_URL"]
    assert main(["ledger", "recover", *args]) == 0
    out = capsys.readouterr().out
    assert "settled 1 pending step(s) of dead processes as lost ($0.25 " in out
    assert db.rows("SELECT status FROM steps") == [("lost",)]
    assert main(["report", *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["unfinished"] == 1
    assert report["tasks"]["t"]["models"]["large"]["unfinished"] == 1


def test_cancelled_call_is_settled_lost_not_dropped(db: Db) -> None:
    """A call cancelled mid-flight may have been billed: its row is lost at its worst case,
    and no reservation is left open."""
    import asyncio

    class Slow(FakeProvider):
        async def acomplete(self, *args: Any, **kwargs: Any) -> Completion:
            await asyncio.sleep(10)
            return self.complete(*args, **kwargs)

    engine, _ = build(db, {}, provider=Slow("p", {"large": ["ok"]}), ladder=["large"],
                      evaluators=[])

    async def go() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine.acomplete("t", "q", max_tokens=1000), 0.2)

    with engine:
        asyncio.run(go())
    ((status, cost, reserved),) = db.rows("SELECT status, cost_usd, reserved_usd FROM steps")
    assert status == "lost"
    assert cost == reserved > 0


def test_postgres_url_password_never_shown(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A password in the URL is in no error, repr, log line or CLI output."""
    from tests.ledger.ledger_db import pg_schema
    secret = "pw-SECRET-4711"
    dead = "postgresql://alice:" + secret + "@127.0.0.1:1/test"
    with pytest.raises(LedgerError) as info:
        Ledger(url=dead)
    assert secret not in str(info.value)
    assert str(info.value).startswith("postgresql://alice@127.0.0.1:1/test: cannot connect: "
                                      "OperationalError: connection failed")
    assert info.value.__cause__ is None and info.value.__context__ is None

    # trust auth ignores the password, so this one connects; a schema of its own, since other
    # branches' tests may have left the shared database's default schema at another version
    private = pg_schema()
    live = next(private).url.replace("@", f":{secret}@", 1)  # type: ignore[union-attr]
    try:
        ledger = Ledger(url=live)
        assert secret not in repr(ledger) + ledger.where
        ledger.close()
    finally:
        private.close()

    from cascade.config import parse_config
    data = config()
    data["ledger"] = {"url": dead}
    assert secret not in repr(parse_config(data))
    monkeypatch.setenv("LEDGER_URL", dead)
    data["ledger"] = {"url_env": "LEDGER_URL"}
    structlog.configure(logger_factory=structlog.PrintLoggerFactory())
    with pytest.raises(LedgerError):
        Cascade.from_dict(data, providers={"p": FakeProvider("p", {})})
    assert main(["report", "--url-env", "LEDGER_URL"]) == 1
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: postgresql://alice@")


def test_upgrade_in_place_from_release_0_1(tmp_path: Path) -> None:
    """A ledger file written by release 0.1 (schema 1) opens, upgrades and loses nothing: rows
    are settled, totals rebuilt from them, the report unchanged."""
    path = tmp_path / "old.sqlite"
    shutil.copy(ROOT / "tests" / "data" / "ledger_v1.sqlite", path)
    db = Db("sqlite", path=path)
    assert db.rows("SELECT name FROM sqlite_master WHERE name = 'schema_version'") == []
    ledger = Ledger(path)
    try:
        assert ledger.schema_before == 1
        assert db.rows("SELECT version FROM schema_version") == [(VERSION,)]
        assert db.rows("SELECT run_id, step, cost_usd, status FROM steps ORDER BY id") == [
            ("r1", 1, 0.25, "settled"), ("r1", 2, 1.5, "settled"), ("r2", 1, 0.125, "settled")]
        nov30 = buckets("faq", 1796040000.0)
        oct15 = buckets("code", 1792065600.0)
        assert ledger.spent(nov30) == dict(zip(nov30, [1.75, 1.75, 1.75, 1.75], strict=True))
        assert ledger.spent(oct15) == dict(zip(oct15, [0.125, 0.125, 0.125, 0.125],
                                               strict=True))
        report = ledger_report(ledger)
        assert report["runs"] == 2
        assert report["total_cost_usd"] == 1.875
        assert report["tasks"]["faq"]["accepted_rate"] == 1.0
    finally:
        ledger.close()
    Ledger(path).close()  # a second open finds schema 3 and changes nothing
    assert db.rows("SELECT COUNT(*) FROM steps") == [(3,)]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A ledger from a newer release is not written by this one."""
    Ledger(tmp_path / "l.sqlite").close()
    Db("sqlite", path=tmp_path / "l.sqlite").execute("UPDATE schema_version SET version = 99")
    with pytest.raises(LedgerError, match="schema 99 is newer than this cascade"):
        Ledger(tmp_path / "l.sqlite")


def test_report_for_a_dead_port_is_one_line(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreachable PostgreSQL ledger is one clear line and exit 1, no traceback."""
    monkeypatch.setenv("DEAD_LEDGER", "postgresql://bob@127.0.0.1:1/test")
    assert main(["ledger", "recover", "--url-env", "DEAD_LEDGER"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: postgresql://bob@127.0.0.1:1/test: cannot connect")
    assert "Traceback" not in err


def test_missing_url_env_is_a_config_error() -> None:
    from cascade import ConfigError
    data = config()
    data["ledger"] = {"url_env": "NO_SUCH_VARIABLE_4711"}
    os.environ.pop("NO_SUCH_VARIABLE_4711", None)
    with pytest.raises(ConfigError, match="ledger.url_env: environment variable "
                                          "NO_SUCH_VARIABLE_4711"):
        Cascade.from_dict(data, providers={"p": FakeProvider("p", {})})


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A 256 KiB tmpfs (needs root, as on this machine and in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_full_disk_means_no_upstream_call(tiny_disk: Path) -> None:
    """A real full disk under a SQLite ledger: the next call is never made, one LedgerError."""
    data = config()
    data["ledger"] = {"path": str(tiny_disk / "ledger.sqlite")}
    fake = FakeProvider("p", {"small": ["a fine answer"]})
    with Cascade.from_dict(data, providers={"p": fake}) as engine:
        fill_up(engine, fake, tiny_disk)


def fill_up(engine: Cascade, fake: FakeProvider, tiny_disk: Path) -> None:
    engine.complete("t", "q")
    assert len(fake.calls) == 1
    with (tiny_disk / "filler").open("wb", buffering=0) as filler, \
            pytest.raises(OSError, match="No space"):
        while True:
            filler.write(b"x" * 4096)
    with pytest.raises(LedgerError, match="database or disk is full"):
        for i in range(20):  # the WAL reuses its free pages first; it needs a new one soon
            engine.complete("t", "q" * 1000 + str(i))
    calls = len(fake.calls)
    with pytest.raises(LedgerError, match="database or disk is full"):
        engine.complete("t", "q" * 2000)
    assert len(fake.calls) == calls  # the refused call reached no provider
    rows = Db("sqlite", path=tiny_disk / "ledger.sqlite").rows("SELECT COUNT(*) FROM steps")
    assert rows == [(calls,)]  # every call made has its row, and no refused one has


def test_a_busy_ledger_delays_only_the_writer_thread(tmp_path: Path) -> None:
    """acomplete: when another connection holds the SQLite write lock at settle time, the
    event loop neither waits nor hands anything to a thread (the settlement is queued); the
    writer thread commits it once the lock is free: one step, one settled row, one event."""
    import asyncio
    import sqlite3

    path = tmp_path / "l.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    class LocksOnReturn(FakeProvider):
        async def acomplete(self, *args: Any, **kwargs: Any) -> Completion:
            # Held when the engine settles this step, until the test lets go after acomplete.
            holder.execute("BEGIN IMMEDIATE")
            return self.complete(*args, **kwargs)

    data = config(ladder=["small"], evaluators=[])
    data["ledger"] = {"path": str(path)}
    engine = Cascade.from_dict(data, providers={"p": LocksOnReturn("p", {"small": ["ok"]})})
    assert engine.ledger is not None
    on_thread: list[str] = []
    run = engine.ledger.run

    async def counted(fn: Any, *args: Any) -> Any:
        on_thread.append(getattr(getattr(fn, "func", fn), "__name__", "?"))
        return await run(fn, *args)

    engine.ledger.run = counted  # type: ignore[method-assign]

    with capture_logs() as logs, engine:
        # acomplete returns while the lock is still held: it did not wait for the settlement.
        result = asyncio.run(engine.acomplete("t", "q", max_tokens=10))
        assert engine.ledger.writer.backlog >= 1  # the settlement waits for the lock, queued
        holder.execute("ROLLBACK")
    holder.close()
    assert on_thread == []
    assert len(result.steps) == 1
    assert Db("sqlite", path=path).rows("SELECT status FROM steps") == [("settled",)]
    assert Db("sqlite", path=path).rows("SELECT COUNT(*) FROM runs") == [(1,)]
    assert [e["event"] for e in logs].count("cascade.step") == 1
