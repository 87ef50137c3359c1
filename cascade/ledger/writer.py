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
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cascade.errors import LedgerError, caused_by
from cascade.ledger.backends import NOWAIT, Backend, Tx, WouldBlock
from cascade.logs import get_logger

__all__ = ["Op", "Writer", "flush_all"]

log = get_logger()

# How long the writer lets a batch fill after its first write arrives. Each commit costs the
# same whatever its size, and every wake-up of this thread takes the GIL from the request path.
GATHER_S = 0.005

# How often a flush looks again whether the writer is still alive.
_FLUSH_SLICE_S = 0.1

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


class _Barrier:
    """Queued by ``flush``: set once everything queued before it is written."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


_STOP = object()  # queued by ``stop``: write what came before, then end the thread


class Writer:
    """The queue of a ledger's deferred writes and the daemon thread that commits them.

    Args:
        backend: The ledger's database.
        name: The thread's name.

    ``gather`` (the wait that lets a batch fill) and ``clock`` (which times a failure for the
    fail-closed window) are attributes, so tests can replace them instead of sleeping.
    """

    def __init__(self, backend: Backend, *, name: str = "cascade-ledger-writer"):
        self.gather: Callable[[], None] = _gather
        self.clock: Callable[[], float] = time.monotonic
        self._backend = backend
        self.where = backend.describe()
        self._name = name
        # SimpleQueue: a put is one C call and wakes the writer without a Condition's locks.
        self._queue: queue.SimpleQueue[Op | _Barrier | object] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders the count with the queue, starts the thread
        self._submitted = 0  # operations ever queued
        self._finished = 0  # operations committed or given up (written by the thread only)
        self._stopping = False
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self.batches = 0  # transactions committed, for tests and benchmarks
        self.failure: LedgerError | None = None  # the last operation that could not be written
        self.failed_at = 0.0  # self.clock() of that failure
        # Queued writes that add more to the totals than was reserved for them, because they
        # could not be committed at once (``write_excess``); a budget decision waits for them.
        self.excess = 0
        self._excess_lock = threading.Lock()
        _LIVE.add(self)

    # -- the request side ---------------------------------------------------------------------

    def submit(self, op: Op) -> None:
        """Queue ``op``; returns at once (microseconds).

        Raises:
            LedgerError: the ledger is closed, or was opened in another process (fork).
        """
        self._check_usable()
        with self._lock:
            if self._stopping:
                raise LedgerError("the ledger is closed: nothing more can be recorded")
            if self._thread is None:
                self._start()
            self._submitted += 1
            self._queue.put(op)

    def write_excess(self, op: Op) -> None:
        """Commit ``op``, a write that adds more to the totals than was reserved for it (a call
        that cost more than its worst case), before returning, in the calling thread and a
        transaction of its own; ``done`` runs here too.

        Its excess is then in the totals before any later reservation decides, in this process
        or another, so a budget is overshot only by calls still in flight (docs/ledger.md). If
        the database cannot take it now, it is queued, counted in ``excess`` until written or
        given up: the writer retries it (failing the ledger closed if it must), and this
        process's next budget decision waits for it.

        Raises:
            LedgerError: the ledger is closed, or was opened in another process (fork).
            WouldBlock: on the event loop (``NOWAIT``), the transaction cannot start at once;
                nothing was changed.
        """
        self._check_usable()
        if self._stopping:
            raise LedgerError("the ledger is closed: nothing more can be recorded")
        try:
            with self._backend.transaction() as tx:
                result = op.write(tx)
        except WouldBlock:
            raise
        except Exception:
            self.submit(self._counted(op))
            return
        _call(op.done, result)

    def _counted(self, op: Op) -> Op:
        """``op``, counted in ``excess`` until it is written or given up."""

        def count(change: int) -> None:
            with self._excess_lock:
                self.excess += change

        def done(result: Any) -> None:
            count(-1)
            _call(op.done, result)

        def failed(error: LedgerError) -> None:
            count(-1)
            if op.failed is not None:
                op.failed(error)
            else:  # what the writer does for an operation without a callback
                log.error("cascade.ledger_write_failed", error=str(error))

        count(1)
        return Op(op.write, done, failed)

    def _check_usable(self) -> None:
        if os.getpid() != self._pid:
            # A forked child shares the parent's connection but not its thread.
            raise LedgerError("a ledger opened before fork() cannot be used in the child; "
                              "open one per process")

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Operations queued and not yet committed (or given up)."""
        return self._submitted - self._finished

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every operation queued before this call is committed (or given up).

        On the event loop (``NOWAIT``), raises ``WouldBlock`` instead of waiting, before
        anything is changed. From the writer thread itself it returns at once.

        Returns:
            False if ``timeout`` ran out first.
        """
        thread = self._thread
        if thread is None or thread is threading.current_thread() or not self.backlog:
            return True
        if NOWAIT.get():
            raise WouldBlock
        if os.getpid() != self._pid or not thread.is_alive():
            return False  # nothing will write these (a forked child, a stopped writer)
        barrier = _Barrier()
        self._queue.put(barrier)
        # In slices: a writer that stopped between the check above and the put never sets it.
        deadline = None if timeout is None else time.monotonic() + timeout
        while not barrier.event.wait(_FLUSH_SLICE_S):
            if not thread.is_alive():
                return barrier.event.is_set()
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def stop(self, timeout: float | None = None) -> bool:
        """Refuse new operations, commit the queued ones, and end the thread.

        Returns:
            False if ``timeout`` ran out before the queue was written.
        """
        with self._lock:
            already = self._stopping
            self._stopping = True
            thread = self._thread
        if thread is None or os.getpid() != self._pid:
            return thread is None
        if not already:
            self._queue.put(_STOP)
        if thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    # -- the writer thread --------------------------------------------------------------------

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            if isinstance(batch[0], Op):
                self.gather()  # let the batch fill: one commit for many runs
            while True:  # group commit: everything that arrived meanwhile goes in
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            ops = [item for item in batch if isinstance(item, Op)]
            if ops:
                self._write(ops)
                self._finished += len(ops)
            for item in batch:
                if isinstance(item, _Barrier):
                    item.event.set()
                elif item is _STOP:
                    stopping = True
        while True:  # a flush that raced with stop() must not wait forever
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Barrier):
                item.event.set()

    def _write(self, batch: list[Op]) -> None:
        try:
            with self._backend.transaction() as tx:
                results = [op.write(tx) for op in batch]
        except Exception as exc:
            error = _as_ledger_error(exc)
            if len(batch) == 1:
                self._give_up(batch[0], error, closes=not _data_error(exc))
                return
            # One refused row must not take the others down: each on its own, once.
            for i, op in enumerate(batch):
                try:
                    with self._backend.transaction() as tx:
                        result = op.write(tx)
                except Exception as exc_one:
                    error = _as_ledger_error(exc_one)
                    self._give_up(op, error, closes=not _data_error(exc_one))
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

    def _give_up(self, op: Op, error: LedgerError, *, closes: bool = True) -> None:
        # A row refused for its own data (text the database cannot store) says nothing about
        # the ledger's health: logged, but it must not shut every caller out (fail closed).
        if closes:
            self.failure = error
            self.failed_at = self.clock()
        if op.failed is None:
            log.error("cascade.ledger_write_failed", error=str(error))
        else:
            _call(op.failed, error)


def _gather() -> None:
    time.sleep(GATHER_S)


def _data_error(exc: BaseException) -> bool:
    """Refused for the values of one row, not because the database cannot be written (the
    backends wrap the driver's error as a LedgerError, so its causes are looked at too)."""
    return caused_by(exc, lambda e: isinstance(e, (UnicodeError, ValueError)) or any(
        cls.__name__ == "DataError" for cls in type(e).__mro__
    ))


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
