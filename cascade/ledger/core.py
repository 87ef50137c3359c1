"""``Ledger``: the step, run and totals rows, written in transactions on either backend."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from cascade.config import LedgerConfig
from cascade.errors import ConfigError, LedgerError
from cascade.ledger.backends import (
    NOWAIT,
    Backend,
    PostgresBackend,
    SqliteBackend,
    Tx,
    WouldBlock,
)
from cascade.ledger.owners import HEARTBEAT_S, Owner, is_alive, this_process
from cascade.ledger.rows import Record
from cascade.ledger.schema import migrate
from cascade.logs import get_logger
from cascade.types import CascadeResult, StepRecord

__all__ = ["Ledger", "Pending", "TotalsKey", "buckets", "nano"]

log = get_logger()

T = TypeVar("T")

# (scope, period, bucket): ("global" | "task:NAME", "daily" | "monthly", "2026-12-01" | "2026-12")
TotalsKey = tuple[str, str, str]


def nano(usd: float) -> int:
    """Dollars as integer nano-dollars, the unit of the ``totals`` table."""
    return round(usd * 1e9)


def buckets(task: str, ts: float) -> tuple[TotalsKey, ...]:
    """The four totals a step at ``ts`` adds to: global and its task, by UTC day and month."""
    moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    day, month = moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m")
    return (
        ("global", "daily", day),
        ("global", "monthly", month),
        (f"task:{task}", "daily", day),
        (f"task:{task}", "monthly", month),
    )


@dataclass(frozen=True, slots=True)
class Pending:
    """A step about to call a model: what its write-ahead row says before the call."""

    run_id: str
    task: str
    step: int
    model: str
    provider: str
    reserved_usd: float
    ts: float


_STEP_COLUMNS = (
    "run_id, ts, task, step, model, provider, attempts, input_tokens, cached_input_tokens,"
    " output_tokens, cost_usd, latency_ms, decision, error, verdicts, status, reserved_usd, owner,"
    " usage_estimated"
)


class _Refused(Exception):
    """A budget refused the reservation: roll the transaction back."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Ledger:
    """Append-only record of spend. Safe to share between threads and asyncio tasks.

    Open one per process: the rows a process leaves pending are recognised as its own by the
    owner token this object registers.

    Args:
        path: The SQLite file (created with its folder), or ``":memory:"``.
        url: A PostgreSQL URL instead of ``path``; it may hold a password, which is never
            shown (``repr``, logs and errors name only user, host, port and database).
        pool_size: PostgreSQL connections (and threads serving async callers).
        recover: Settle dead processes' pending rows as ``lost`` on open.

    Raises:
        LedgerError: the database cannot be opened, upgraded or written.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        url: str | None = None,
        pool_size: int = 10,
        recover: bool = True,
    ):
        if (path is None) == (url is None):
            raise ValueError("Ledger needs a path (SQLite) or a url (PostgreSQL)")
        self.path = str(path) if path is not None else None
        self.backend: Backend = (
            PostgresBackend(url, pool_size=pool_size) if url is not None
            else SqliteBackend(str(path))
        )
        self.owner: Owner = this_process()
        self._closed = threading.Event()
        try:
            self.schema_before = migrate(self.backend)
            self._register()
            self.recovered = self.recover() if recover else []
        except BaseException:
            self.backend.close()
            raise
        # Ledger work of async callers (acomplete, the gateway) that would wait runs here, never
        # on the event loop (see ``arun``). SQLite has one connection, so more threads would only
        # queue on its lock.
        workers = pool_size if self.backend.name == "postgres" else 2
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="cascade-ledger")
        self._heartbeat: threading.Thread | None = None
        if self.backend.name == "postgres":
            self._heartbeat = threading.Thread(
                target=self._beat, name="cascade-ledger-heartbeat", daemon=True
            )
            self._heartbeat.start()

    def __repr__(self) -> str:
        return f"Ledger({self.backend.name}: {self.backend.describe()!r})"

    @classmethod
    def from_config(cls, config: LedgerConfig, *, path: str | None = None) -> Ledger | None:
        """The ledger a config's ``ledger:`` section describes (None when turned off).

        Raises:
            ConfigError: ``url_env`` names an unset variable.
            LedgerError: the database cannot be opened.
        """
        if config.url is not None:
            return cls(url=config.url.get_secret_value(), pool_size=config.pool_size)
        if config.url_env is not None:
            url = os.environ.get(config.url_env, "")
            if not url:
                raise ConfigError(
                    f"environment variable {config.url_env} (the ledger's PostgreSQL URL) "
                    "is not set",
                    path=path,
                    location="ledger.url_env",
                )
            return cls(url=url, pool_size=config.pool_size)
        return cls(config.path) if config.path else None

    @property
    def where(self) -> str:
        """The file, or the database URL without its password."""
        return self.backend.describe()

    # -- async --------------------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the ledger's threads and await it, off the event loop.

        If the awaiting task is cancelled, the call still runs to its end (a thread cannot be
        stopped halfway through a transaction) before the cancellation goes on.
        """
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        future = loop.run_in_executor(self.executor, call)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])
            raise

    async def arun(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a ledger operation for the event loop without ever waiting on it.

        SQLite: the operation runs right here if the ledger is free (a transaction takes about
        0.1 ms and no fsync: the WAL is checkpointed on the ledger's thread), and on the
        ledger's thread if it would wait for a lock, another process's included. The operation
        must start with its one transaction, so that the retry repeats nothing.
        PostgreSQL: always on the ledger's threads.
        """
        if self.backend.nowait:
            token = NOWAIT.set(True)
            try:
                result = fn(*args, **kwargs)
            except WouldBlock:
                pass
            else:
                if getattr(self.backend, "checkpoint_due", False):
                    self.executor.submit(self.backend.checkpoint)  # type: ignore[attr-defined]
                return result
            finally:
                NOWAIT.reset(token)
        return await self.run(functools.partial(fn, *args, **kwargs))

    # -- owners -------------------------------------------------------------------------------

    def _register(self) -> None:
        me = self.owner
        now = time.time()
        with self.backend.transaction() as tx:
            tx.execute(
                "INSERT INTO owners (owner, host, boot_id, pid, proc_start, started, heartbeat)"
                " VALUES (?,?,?,?,?,?,?)",
                (me.owner, me.host, me.boot_id, me.pid, me.proc_start, now, now),
            )

    def _beat(self) -> None:
        while not self._closed.wait(HEARTBEAT_S):
            try:
                with self.backend.transaction() as tx:
                    tx.execute(
                        "UPDATE owners SET heartbeat = ? WHERE owner = ?",
                        (time.time(), self.owner.owner),
                    )
            except LedgerError as exc:
                log.warning("cascade.ledger_heartbeat_failed", error=str(exc))

    def recover(self, now: float | None = None) -> list[Record]:
        """Settle the pending rows of dead processes as ``lost`` at their reserved cost.

        Their cost is already in the totals (it was charged when the row was written), so the
        budgets do not change. Returns the rows settled.
        """
        lost: list[Record] = []
        with self.backend.transaction() as tx:
            owners = [r["owner"] for r in tx.execute(
                "SELECT DISTINCT owner FROM steps WHERE status = 'pending'"
            )]
            for owner in owners:
                if owner == self.owner.owner:
                    continue
                found = tx.execute("SELECT * FROM owners WHERE owner = ?", (owner,))
                if is_alive(found[0] if found else None, self.owner, now):
                    continue
                rows = tx.execute(
                    f"SELECT id, {_STEP_COLUMNS} FROM steps WHERE owner = ? AND status = 'pending'"
                    f"{self.backend.lock_rows}",
                    (owner,),
                )
                tx.execute(
                    "UPDATE steps SET status = 'lost', decision = 'lost', error = ? WHERE owner = ?"
                    " AND status = 'pending'",
                    ("the process that made this call died before recording its outcome; "
                     "counted at its reserved worst case",
                     owner),
                )
                tx.execute("DELETE FROM owners WHERE owner = ?", (owner,))
                names = {k: i for i, k in enumerate(rows[0])} if rows else {}
                lost += [Record(list(r.values()), names) for r in rows]
        if lost:
            log.warning("cascade.ledger_recovered", lost_steps=len(lost),
                        reserved_usd=sum(float(r["reserved_usd"]) for r in lost))
        return lost

    # -- writes -------------------------------------------------------------------------------

    @staticmethod
    def _add(tx: Tx, keys: Sequence[TotalsKey], nusd: int) -> dict[TotalsKey, int]:
        """Add ``nusd`` to each of ``keys`` (creating rows as needed); returns the new totals.

        One statement, rows in sorted order: every writer locks the rows in the same order, so
        two transactions never wait on each other in a cycle (PostgreSQL).
        """
        ordered = sorted(keys)
        rows = tx.execute(
            "INSERT INTO totals (scope, period, bucket, spent_nusd) VALUES "
            + ", ".join("(?,?,?,?)" for _ in ordered)
            + " ON CONFLICT (scope, period, bucket)"
            " DO UPDATE SET spent_nusd = totals.spent_nusd + excluded.spent_nusd"
            " RETURNING scope, period, bucket, spent_nusd",
            [v for key in ordered for v in (*key, nusd)],
        )
        return {(r["scope"], r["period"], r["bucket"]): int(r["spent_nusd"]) for r in rows}

    def reserve(
        self,
        pending: Pending,
        decide: Callable[[Mapping[TotalsKey, int]], str | None] | None = None,
    ) -> int | str:
        """Write the pending row and charge its reserved cost, if ``decide`` allows it.

        One transaction: insert the row, add the reservation to the step's four totals (which
        locks them: SQLite holds the database's write lock from ``BEGIN IMMEDIATE``, PostgreSQL
        the rows' locks from the upsert), then ask ``decide`` about the spend before this
        reservation (None to go, or the reason to refuse; nano-dollars). A refusal rolls
        everything back. Concurrent reservations from any number of processes and hosts are
        serialised on those rows, and hold them only for the upsert and the commit.

        Returns:
            The new row's id, or ``decide``'s refusal (nothing written).

        Raises:
            LedgerError: nothing could be written; the model must not be called.
        """
        try:
            with self.backend.transaction() as tx:
                return self._reserve(tx, pending, decide)
        except _Refused as refused:
            return refused.reason

    def _reserve(
        self,
        tx: Tx,
        pending: Pending,
        decide: Callable[[Mapping[TotalsKey, int]], str | None] | None,
    ) -> int:
        amount = nano(pending.reserved_usd)
        rows = tx.execute(
            f"INSERT INTO steps ({_STEP_COLUMNS}) VALUES"
            " (?,?,?,?,?,?,0,0,0,0,?,0,'pending',NULL,'[]','pending',?,?,0) RETURNING id",
            (pending.run_id, pending.ts, pending.task, pending.step, pending.model,
             pending.provider, pending.reserved_usd, pending.reserved_usd, self.owner.owner),
        )
        after = self._add(tx, buckets(pending.task, pending.ts), amount)
        if decide is not None:
            refusal = decide({key: total - amount for key, total in after.items()})
            if refusal is not None:
                raise _Refused(refusal)  # rolls the row and the charge back
        return int(rows[0]["id"])

    def settle(self, step_id: int, pending: Pending, step: StepRecord) -> bool:
        """Replace a pending row's reservation with the step's real outcome and cost.

        Returns False when the row was no longer pending (settled as lost by a recovery that
        took this process for dead): the lost charge then stands.
        """
        keys = buckets(pending.task, pending.ts)
        with self.backend.transaction() as tx:
            changed = tx.rowcount(
                "UPDATE steps SET attempts = ?, input_tokens = ?, cached_input_tokens = ?,"
                " output_tokens = ?, cost_usd = ?, latency_ms = ?, decision = ?, error = ?,"
                " verdicts = ?, usage_estimated = ?, status = 'settled'"
                " WHERE id = ? AND status = 'pending'",
                (step.attempts, step.input_tokens, step.cached_input_tokens, step.output_tokens,
                 step.cost_usd, step.latency_ms, step.decision, step.error,
                 json.dumps([v.as_dict() for v in step.verdicts]), int(step.usage_estimated),
                 step_id),
            )
            delta = nano(step.cost_usd) - nano(pending.reserved_usd)
            if changed and delta:
                self._add(tx, keys, delta)
        return bool(changed)

    def abandon(self, step_id: int, reason: str) -> None:
        """Settle this process's own pending row as ``lost`` (the outcome will never be known)."""
        with self.backend.transaction() as tx:
            tx.execute(
                "UPDATE steps SET status = 'lost', decision = 'lost', error = ?"
                " WHERE id = ? AND status = 'pending'",
                (reason, step_id),
            )

    def record_step(self, step: StepRecord) -> None:
        """Record a finished step that had no write-ahead row (a skip, a cache hit)."""
        ts = step.ts or time.time()
        with self.backend.transaction() as tx:
            tx.execute(
                f"INSERT INTO steps ({_STEP_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,"
                "'settled',0,NULL,?)",
                (step.run_id, ts, step.task, step.step, step.model, step.provider,
                 step.attempts, step.input_tokens, step.cached_input_tokens,
                 step.output_tokens, step.cost_usd, step.latency_ms, step.decision, step.error,
                 json.dumps([v.as_dict() for v in step.verdicts]), int(step.usage_estimated)),
            )
            if nano(step.cost_usd):
                self._add(tx, buckets(step.task, ts), nano(step.cost_usd))

    def record_run(
        self,
        result: CascadeResult,
        *,
        status: str = "ok",
        content: Sequence[tuple[int, str, str | None, str | None, str]] = (),
    ) -> None:
        """Write the run's row, and its ``content`` rows (step, kind, model, model name, text)
        in the same transaction, so a retried write never duplicates them."""
        now = time.time()
        with self.backend.transaction() as tx:
            tx.execute(
                "INSERT INTO runs (run_id, ts, task, model, accepted, cost_usd, latency_ms,"
                " steps, status, task_probability) VALUES (?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (run_id) DO UPDATE SET"
                " ts = excluded.ts, task = excluded.task, model = excluded.model,"
                " accepted = excluded.accepted, cost_usd = excluded.cost_usd,"
                " latency_ms = excluded.latency_ms, steps = excluded.steps,"
                " status = excluded.status, task_probability = excluded.task_probability",
                (result.run_id, now, result.task, result.model or None,
                 int(result.accepted), result.cost_usd, result.latency_ms, len(result.steps),
                 status, result.task_probability),
            )
            for row in content:
                tx.execute(
                    "INSERT INTO content (run_id, ts, step, kind, model, model_name, text)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (result.run_id, now, *row),
                )

    # -- reads --------------------------------------------------------------------------------

    def spent(self, keys: Sequence[TotalsKey]) -> dict[TotalsKey, float]:
        """The running totals under ``keys`` in dollars (one primary-key lookup each)."""
        rows = {}
        for key in keys:
            found = self.backend.read(
                "SELECT spent_nusd FROM totals WHERE scope = ? AND period = ? AND bucket = ?", key
            )
            rows[key] = int(found[0]["spent_nusd"]) / 1e9 if found else 0.0
        return rows

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Record]:
        """Run a read query (``?`` placeholders on both backends)."""
        rows = self.backend.read(sql, params)
        if not rows:
            return []
        names = {k: i for i, k in enumerate(rows[0])}
        return [Record(list(r.values()), names) for r in rows]

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.executor.shutdown(wait=True)
        try:
            with self.backend.transaction() as tx:
                # Keep the owner row while its pending rows exist: the next process needs it
                # to tell that they are ours and that we are gone.
                tx.execute(
                    "DELETE FROM owners WHERE owner = ? AND NOT EXISTS (SELECT 1 FROM steps"
                    " WHERE owner = ? AND status = 'pending')",
                    (self.owner.owner, self.owner.owner),
                )
        except LedgerError:
            pass
        self.backend.close()
