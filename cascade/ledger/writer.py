"""The ledger's writer thread: what happens after a model call, committed in batches.

A reservation (the write-ahead row) is written by the caller before the call, synchronously:
it decides the budget and is the durability contract. Everything after the call (settling the
row, settling it as lost, recording a skip or a cache hit, the run's row and its content) only
goes into this queue, which costs the request a lock and a list append. One thread per ledger
drains the whole queue into one transaction (group commit), commits, and repeats; under load a
batch holds every operation that arrived while the previous one committed.

Until a settlement commits, its pending row still counts its reserved worst case in the
totals, so budgets only ever see too much spend, never too little. A process killed before the
batch commits leaves the pending row, which recovery settles as ``lost`` at that worst case,
exactly as if the process had died during the call.

A batch that fails is retried operation by operation, so one bad row does not take the others
down; an operation that still cannot be written is reported through its ``failed`` callback
(the callers log a ``cascade.ledger_*_failed`` event) and recorded as the writer's
``failure``, which makes the ledger refuse new reservations for a while (fail closed).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cascade.errors import LedgerError
from cascade.ledger.backends import NOWAIT, Backend, Tx, WouldBlock
from cascade.logs import get_logger

__all__ = ["Op", "Writer", "flush_all"]

log = get_logger()

# How long a normal interpreter exit waits for queued rows to be committed.
EXIT_FLUSH_S = 30.0

# Failures that say the database cannot be reached at all (not that this one row is refused):
# retrying the rest of the batch one by one would only wait for the same timeout again.
_UNREACHABLE = ("no ledger connection", "cannot connect", "database is locked",
                "OperationalError")


@dataclass(frozen=True, slots=True)
class Op:
    """One queued write.

    ``write`` runs inside the batch's transaction and returns a result; after the commit,
    ``done(result)`` runs on the writer thread. ``failed(error)`` runs instead when the
    operation could not be written even on its own.
    """

    write: Callable[[Tx], Any]
    done: Callable[[Any], None] | None = None
    failed: Callable[[LedgerError], None] | None = None


class Writer:
    """The queue of a ledger's deferred writes and the daemon thread that commits them.

    Args:
        backend: The ledger's database.
        name: The thread's name.
    """

    def __init__(self, backend: Backend, *, name: str = "cascade-ledger-writer"):
        self._backend = backend
        self.where = backend.describe()
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[Op] = []
        self._submitted = 0  # operations ever queued
        self._finished = 0  # operations committed or given up, in queue order
        self._stopping = False
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self.batches = 0  # transactions committed, for tests and benchmarks
        self.failure: LedgerError | None = None  # the last operation that could not be written
        self.failed_at = 0.0  # time.monotonic() of that failure
        _LIVE.add(self)

    # -- the request side ---------------------------------------------------------------------

    def submit(self, op: Op) -> None:
        """Queue ``op``; returns at once (microseconds).

        Raises:
            LedgerError: the ledger is closed, or was opened in another process (fork).
        """
        with self._cond:
            if self._stopping:
                raise LedgerError("the ledger is closed: nothing more can be recorded")
            if os.getpid() != self._pid:
                # A forked child shares the parent's connection but not its thread.
                raise LedgerError("a ledger opened before fork() cannot be used in the child; "
                                  "open one per process")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._queue.append(op)
            self._submitted += 1
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every operation queued before this call is committed (or given up).

        On the event loop (``NOWAIT``), raises ``WouldBlock`` instead of waiting, before
        anything is changed. From the writer thread itself it returns at once.

        Returns:
            False if ``timeout`` ran out first.
        """
        if threading.current_thread() is self._thread:
            return True
        with self._cond:
            target = self._submitted
            if self._finished >= target:
                return True
            if NOWAIT.get():
                raise WouldBlock
            if self._thread is None or os.getpid() != self._pid:
                return False  # nothing will ever write these (a forked child)
            return self._cond.wait_for(lambda: self._finished >= target, timeout)

    @property
    def backlog(self) -> int:
        """Operations queued and not yet committed."""
        return self._submitted - self._finished

    def stop(self, timeout: float | None = None) -> bool:
        """Refuse new operations, commit the queued ones, and end the thread.

        Returns:
            False if ``timeout`` ran out before the queue was written.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        if os.getpid() != self._pid:
            return False
        thread.join(timeout)
        return not thread.is_alive()

    # -- the writer thread --------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                batch, self._queue = self._queue, []
                if not batch:
                    return  # stopping, and everything is written
            self._write(batch)
            with self._cond:
                self._finished += len(batch)
                self._cond.notify_all()

    def _write(self, batch: list[Op]) -> None:
        try:
            with self._backend.transaction() as tx:
                results = [op.write(tx) for op in batch]
        except Exception as exc:
            error = _as_ledger_error(exc)
            if len(batch) == 1:
                self._give_up(batch[0], error)
                return
            # One refused row must not take the others down: each on its own, once.
            for i, op in enumerate(batch):
                try:
                    with self._backend.transaction() as tx:
                        result = op.write(tx)
                except Exception as exc_one:
                    error = _as_ledger_error(exc_one)
                    self._give_up(op, error)
                    if any(mark in str(error) for mark in _UNREACHABLE):
                        for rest in batch[i + 1:]:
                            self._give_up(rest, error)
                        return
                else:
                    self.batches += 1
                    _call(op.done, result)
            return
        self.batches += 1
        for op, result in zip(batch, results, strict=True):
            _call(op.done, result)

    def _give_up(self, op: Op, error: LedgerError) -> None:
        self.failure = error
        self.failed_at = time.monotonic()
        if op.failed is None:
            log.error("cascade.ledger_write_failed", error=str(error))
        else:
            _call(op.failed, error)


def _as_ledger_error(exc: Exception) -> LedgerError:
    if isinstance(exc, LedgerError):
        return exc
    return LedgerError(f"ledger write failed: {type(exc).__name__}: {exc}")


def _call(callback: Callable[[Any], None] | None, value: Any) -> None:
    """Run a caller's callback on the writer thread; its bug must not stop the writer."""
    if callback is None:
        return
    try:
        callback(value)
    except Exception as exc:
        bug = f"{type(exc).__name__}: {exc}"
    else:
        return
    # One line, no traceback (it could carry a database URL), as money.ledger_failed.
    log.error("cascade.ledger_callback_failed", error=bug)


_LIVE: weakref.WeakSet[Writer] = weakref.WeakSet()


def flush_all(timeout: float | None = EXIT_FLUSH_S, *, where: str | None = None) -> None:
    """Wait until every ledger of this process (on database ``where``, if given) has committed
    what it queued: before a read, in tests, at exit."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for writer in list(_LIVE):
        if where is None or writer.where == where:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            writer.flush(timeout=left)


# The writer is a daemon thread (it must not keep a process alive), and daemon threads still run
# during atexit: a normal exit commits what is queued before they are stopped.
atexit.register(flush_all)
