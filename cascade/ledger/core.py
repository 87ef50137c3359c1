"""``Ledger``: the step, run and totals rows, written in transactions on either backend."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from cascade.config import LedgerConfig
from cascade.errors import ConfigError, LedgerError
from cascade.ledger.backends import (
    NOWAIT,
    SQLITE_BUSY_TIMEOUT_S,
    Backend,
    PostgresBackend,
    SqliteBackend,
    Tx,
    WouldBlock,
    one_deadline,
)
from cascade.ledger.owners import HEARTBEAT_S, Owner, is_alive, this_process
from cascade.ledger.rows import Record
from cascade.ledger.schema import migrate
from cascade.ledger.writer import Op, Writer, flush_all
from cascade.ledger.writes import (
    STEP_COLUMNS,
    ContentRow,
    Pending,
    TotalsKey,
    add_to_totals,
    buckets,
    content_write,
    free_step_write,
    loss_write,
    nano,
    run_write,
    settle_write,
    write_ahead,
)
from cascade.logs import get_logger
from cascade.types import CascadeResult, StepRecord

__all__ = ["Ledger", "Pending", "TotalsKey", "buckets", "nano"]

log = get_logger()

T = TypeVar("T")

# How long the ledger refuses new reservations after a queued write could not be written.
FAIL_CLOSED_S = 10.0

class _Refused(Exception):
    """A budget refused the reservation: roll the transaction back."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Ledger:
    """Append-only record of spend. Safe to share between threads and asyncio tasks.

    Open one per process: the rows a process leaves pending are recognised as its own by the
    owner token this object registers.

    ``reserve`` writes at once; ``settle``, ``abandon``, ``record_step``, ``record_run`` and
    ``record_content`` are queued and committed in batches by the ledger's writer thread
    (``cascade.ledger.writer``), except a settlement above its reservation, committed at once.
    Reads (``query``, ``spent``) and ``close`` first wait for what was queued before them
    (``flush``).

    Args:
        path: The SQLite file (created with its folder), or ``":memory:"``.
        url: A PostgreSQL URL instead of ``path``; it may hold a password, which is never
            shown (``repr``, logs and errors name only user, host, port and database).
        pool_size: PostgreSQL connections (and threads serving async callers).
        recover: Settle dead processes' pending rows as ``lost`` on open.
        fail_closed_s: After a queued write could not be written, ``reserve`` refuses for
            this long (the calls it would allow could not be recorded either).
        busy_timeout_s: SQLite: how long an operation waits for the locks, from its arrival.

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
        fail_closed_s: float = FAIL_CLOSED_S,
        busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S,
    ):
        if (path is None) == (url is None):
            raise ValueError("Ledger needs a path (SQLite) or a url (PostgreSQL)")
        self.path = str(path) if path is not None else None
        self.backend: Backend = (
            PostgresBackend(url, pool_size=pool_size) if url is not None
            else SqliteBackend(str(path), busy_timeout_s=busy_timeout_s)
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
        self.writer = Writer(self.backend)
        self.fail_closed_s = fail_closed_s
        # A ledger dropped without close() still gets its queue written and its thread ended
        # (without waiting here: at exit, writer.flush_all waits, bounded).
        weakref.finalize(self, self.writer.stop, 0)
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
        return cls(config.path, busy_timeout_s=config.busy_timeout_s) if config.path else None

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
        with one_deadline(self.backend):  # the time queued for a thread counts
            call = functools.partial(contextvars.copy_context().run, fn, *args)
        future = loop.run_in_executor(self.executor, call)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])
            raise

    async def arun(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a ledger operation for the event loop without ever waiting on it.

        The operation runs right here while it only queues writes (a settlement, a run's row)
        or, on SQLite, while its transaction can start at once (about 0.1 ms, no fsync: the
        WAL is checkpointed off the loop). It goes to the ledger's threads when it would wait:
        for a lock (another process's included), for queued writes to be committed
        (``flush``), or for any PostgreSQL transaction (a network round trip). The operation
        must start with its one transaction or flush, so that the retry repeats nothing.
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
                    f"SELECT id, {STEP_COLUMNS} FROM steps WHERE owner = ? AND status = 'pending'"
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

    # -- writes ---------------------------------------------------------------------------------

    def reserve(
        self,
        pending: Pending,
        decide: Callable[[Mapping[TotalsKey, int]], str | None] | None = None,
    ) -> int | str:
        """Write the pending row and charge its reserved cost, if ``decide`` allows it.

        One transaction: insert the row (or raise a pending row's reservation, for a retry after
        an attempt that timed out: ``Pending.grows``), add the reservation to the step's four
        totals (which locks them: SQLite holds the database's write lock from ``BEGIN
        IMMEDIATE``, PostgreSQL the rows' locks from the upsert), then ask ``decide`` about the
        spend before this reservation (None to go, or the reason to refuse; nano-dollars). A
        refusal rolls everything back. Concurrent reservations from any number of processes and
        hosts are serialised on those rows, and hold them only for the upsert and the commit.

        Returns:
            The new row's id, or ``decide``'s refusal (nothing written).

        Raises:
            LedgerError: nothing could be written, or a queued write failed less than
                ``fail_closed_s`` ago; the model must not be called.
        """
        self._check_writer()
        # A write above its reservation that could not be committed at once (``settle``) is
        # queued as excess: a budget decision waits for it, never deciding on spend it could
        # already know.
        if self.writer.excess and decide is not None:
            self.writer.flush()  # on the event loop: WouldBlock, and so the ledger's thread
        outcome = self._try_reserve(pending, decide)
        if isinstance(outcome, str) and self.writer.backlog:
            # The refusal may come from this process's settlements still queued (their rows
            # count the worst case until committed): write them, then ask once more. Only a
            # refusal pays for this wait (on the event loop it moves to the ledger's thread).
            self.writer.flush()
            outcome = self._try_reserve(pending, decide)
        return outcome

    def _try_reserve(
        self,
        pending: Pending,
        decide: Callable[[Mapping[TotalsKey, int]], str | None] | None,
    ) -> int | str:
        try:
            with self.backend.transaction() as tx:
                return self._reserve(tx, pending, decide)
        except _Refused as refused:
            return refused.reason

    def _check_writer(self) -> None:
        failure = self.writer.failure
        if failure is not None and self.writer.clock() - self.writer.failed_at < self.fail_closed_s:
            raise LedgerError(
                f"refusing new calls for {self.fail_closed_s:g} s: the ledger could not record"
                f" an earlier call's outcome: {failure.message}",
                backend=self.backend.name,
            )

    def _reserve(
        self,
        tx: Tx,
        pending: Pending,
        decide: Callable[[Mapping[TotalsKey, int]], str | None] | None,
    ) -> int:
        written = write_ahead(tx, pending, self.owner.owner)
        if written is None:
            raise _Refused("the step's row is no longer pending (settled as lost)")
        step_id, amount = written
        after = add_to_totals(tx, buckets(pending.task, pending.ts, pending.key_name), amount)
        if decide is not None:
            refusal = decide({key: total - amount for key, total in after.items()})
            if refusal is not None:
                raise _Refused(refusal)  # rolls the row and the charge back
        return step_id

    def _submit(self, write: Callable[[Tx], Any], done: Callable[[Any], None] | None,
                failed: Callable[[LedgerError], None] | None) -> None:
        self.writer.submit(Op(write, done, failed))

    def settle(
        self,
        step_id: int,
        pending: Pending,
        step: StepRecord,
        *,
        lost: bool = False,
        done: Callable[[bool], None] | None = None,
        failed: Callable[[LedgerError], None] | None = None,
    ) -> None:
        """Replace a pending row's reservation by the step's real outcome.

        Queued for the writer thread when the real cost is within the reservation: until the
        writer commits it, the row keeps counting its reserved worst case, which is more. A
        cost above the reservation is committed before this returns (``Writer.write_excess``),
        so that every budget decided afterwards, in any process, counts it.

        Args:
            lost: The step ended in a call whose outcome is not known (it timed out): status
                ``lost``.
            done: Called on the writer thread after the commit, with False when the row was no
                longer pending (settled as lost by a recovery that took this process for
                dead): the lost charge then stands.
            failed: Called on the writer thread if the settlement cannot be written.

        Raises:
            LedgerError: the ledger is closed.
            WouldBlock: on the event loop (``arun``), a cost above the reservation whose
                transaction cannot start at once; nothing was changed.
        """
        op = Op(settle_write(step_id, pending, step, lost), done, failed)
        if nano(step.cost_usd) > nano(pending.reserved_usd):
            self.writer.write_excess(op)
        else:
            self.writer.submit(op)

    def abandon(
        self, step_id: int, reason: str, *, failed: Callable[[LedgerError], None] | None = None
    ) -> None:
        """Queue settling this process's own pending row as ``lost`` (the outcome will never
        be known)."""
        self.writer.submit(Op(loss_write(step_id, reason), None, failed))

    def record_step(
        self,
        step: StepRecord,
        *,
        failed: Callable[[LedgerError], None] | None = None,
        key_name: str | None = None,
    ) -> None:
        """Queue a finished step that had no write-ahead row (a skip, a cache hit); one with a
        cost, which nothing reserved, is committed before this returns, as in ``settle``.
        ``key_name``: the named gateway key that made its run."""
        op = Op(free_step_write(step, key_name), None, failed)
        if nano(step.cost_usd):
            self.writer.write_excess(op)
        else:
            self.writer.submit(op)

    def record_run(
        self,
        result: CascadeResult,
        *,
        status: str = "ok",
        content: Sequence[ContentRow] = (),
        failed: Callable[[LedgerError], None] | None = None,
        key_id: str | None = None,
        key_name: str | None = None,
        top: tuple[float, bool] | None = None,
    ) -> None:
        """Queue the run's row and its ``content`` rows (step, kind, model, model name, text,
        mean token log-probability), written in one transaction; ``key_id``: the gateway key
        that made the run, ``key_name``: its name when it is a named key; ``top``: what
        always-top would have cost, and whether that is an estimate (``cascade.engine.savings``).
        """
        self.writer.submit(
            Op(run_write(result, status, content, key_id, key_name, top), None, failed)
        )

    def record_content(
        self,
        run_id: str,
        content: Sequence[ContentRow],
        *,
        failed: Callable[[LedgerError], None] | None = None,
    ) -> None:
        """Queue ``content`` rows for a run recorded earlier (a shadow call's answer)."""
        self.writer.submit(Op(content_write(run_id, content), None, failed))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write queued before this call is committed (or given up).

        Returns:
            False if ``timeout`` ran out first.
        """
        return self.writer.flush(timeout)

    # -- reads --------------------------------------------------------------------------------

    def spent(self, keys: Sequence[TotalsKey]) -> dict[TotalsKey, float]:
        """The running totals under ``keys`` in dollars (one primary-key lookup each), after
        the queued writes."""
        self._read_your_writes()
        rows = {}
        for key in keys:
            found = self.backend.read(
                "SELECT spent_nusd FROM totals WHERE scope = ? AND period = ? AND bucket = ?", key
            )
            rows[key] = int(found[0]["spent_nusd"]) / 1e9 if found else 0.0
        return rows

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Record]:
        """Run a read query (``?`` placeholders on both backends), after the queued writes."""
        self._read_your_writes()
        rows = self.backend.read(sql, params)
        if not rows:
            return []
        names = {k: i for i, k in enumerate(rows[0])}
        return [Record(list(r.values()), names) for r in rows]

    def _read_your_writes(self) -> None:
        # This ledger's queue, and that of any other ledger of this process on the same
        # database (a report opened next to an engine): a read sees every write queued before.
        self.writer.flush()
        flush_all(None, where=self.writer.where)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.executor.shutdown(wait=True)  # its tasks may still queue writes
        if not self.writer.stop():
            log.error("cascade.ledger_write_failed", error="the writer did not finish")
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

