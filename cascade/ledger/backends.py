"""The two databases the ledger runs on, behind one small interface.

SQLite is the embedded default: one WAL-mode connection per ledger behind a lock, every write in
``BEGIN IMMEDIATE`` so the write lock is taken before anything is read (two processes can then
never both pass a budget check on the same totals). PostgreSQL runs through a psycopg 3
connection pool; a reservation locks the totals rows it reads (``SELECT ... FOR UPDATE``).

SQL is written once with ``?`` placeholders; the PostgreSQL backend turns them into ``%s``.
Every database error leaves here as a ``LedgerError`` whose message holds no password.
"""

from __future__ import annotations

import contextlib
import contextvars
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from cascade.errors import LedgerError
from cascade.formatting import install_hint

__all__ = [
    "DEADLINE",
    "NOWAIT",
    "Backend",
    "PostgresBackend",
    "Row",
    "SqliteBackend",
    "Tx",
    "WouldBlock",
    "one_deadline",
    "open_sqlite",
    "safe_url",
]

Row = dict[str, Any]

# How long a ledger operation waits for the SQLite locks (another process's write lock, and this
# process's connection) before failing closed; ``ledger.busy_timeout_s`` sets it.
SQLITE_BUSY_TIMEOUT_S = 30.0
# How long a PostgreSQL caller waits for a pooled connection before failing closed.
PG_CONNECTION_TIMEOUT_S = 10.0
# A SQLite ledger checkpoints its WAL itself, after this many commits, on a thread of its own
# when it runs on an event loop (an automatic checkpoint would fsync inside a commit).
CHECKPOINT_EVERY = 1000


class WouldBlock(Exception):
    """The ledger is busy right now; the caller asked not to wait (``NOWAIT``)."""


# Set while the event loop runs a ledger operation: a transaction that would wait for a lock
# raises WouldBlock before changing anything, and the operation is run again on a thread.
NOWAIT: contextvars.ContextVar[bool] = contextvars.ContextVar("cascade_ledger_nowait",
                                                              default=False)

# When the ledger operation under way stops waiting for locks (on its backend's clock). Set once
# per operation, so every wait inside it (the connection, the database's write lock, a second
# transaction) shares one budget counted from the operation's arrival; without it, requests
# queued behind one another's waits would each start a full timeout of their own in turn.
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "cascade_ledger_deadline", default=None
)


class Tx(Protocol):
    """One open transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def rowcount(self, sql: str, params: Sequence[Any] = ()) -> int: ...


class Backend(Protocol):
    name: str  # "sqlite" | "postgres"
    lock_rows: str  # appended to a SELECT that must lock what it reads
    nowait: bool  # transaction() honours NOWAIT (raises WouldBlock rather than wait)

    def transaction(self) -> Any: ...  # a context manager yielding a Tx

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def deadline(self) -> float: ...  # DEADLINE's value for an operation arriving now

    def has_table(self, tx: Tx, name: str) -> bool: ...

    def has_column(self, tx: Tx, table: str, column: str) -> bool: ...

    def describe(self) -> str: ...  # safe to print: no password

    def close(self) -> None: ...


@contextmanager
def one_deadline(backend: Backend) -> Iterator[None]:
    """Give the operation starting here its wait for the locks, unless it already has one."""
    if DEADLINE.get() is not None:
        yield
        return
    token = DEADLINE.set(backend.deadline())
    try:
        yield
    finally:
        DEADLINE.reset(token)


def open_sqlite(path: str, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """A WAL-mode connection shared by threads (callers hold a lock around every use).

    One connection behind a lock: SQLite serialises writers anyway, and this keeps concurrent
    threads from ever seeing "database is locked".
    """
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, check_same_thread=False, isolation_level=None, timeout=busy_timeout_s
    )
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cursor = self._conn.execute(sql, tuple(params))
        if cursor.description is None:
            return []
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def rowcount(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, tuple(params)).rowcount


class SqliteBackend:
    """The embedded ledger file.

    Args:
        path: The file, or ``":memory:"``.
        busy_timeout_s: How long an operation waits for the locks, from its arrival.
        clock: Times that wait (``time.monotonic``; tests inject their own).
    """

    name = "sqlite"
    lock_rows = ""  # BEGIN IMMEDIATE already holds the database's write lock
    nowait = True  # a transaction can start without waiting, or say it would have to

    def __init__(
        self,
        path: str,
        *,
        busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.clock = clock
        try:
            self._conn = open_sqlite(path, busy_timeout_s)
            # NORMAL in WAL mode: a commit survives a killed process (not a power cut) and
            # costs no fsync per step.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"{path}: cannot open the ledger: {exc}", backend="sqlite") from exc
        self._lock = threading.Lock()
        self._busy_ms = int(busy_timeout_s * 1000)  # what sqlite3.connect(timeout=) set
        self._commits = 0
        self.checkpoint_due = False

    def describe(self) -> str:
        return self.path

    def deadline(self) -> float:
        """When an operation arriving now stops waiting for the locks."""
        return self.clock() + self.busy_timeout_s

    def _left(self) -> float:
        """Seconds the operation under way may still wait (0: try once, without waiting)."""
        deadline = DEADLINE.get()
        if deadline is None:
            return self.busy_timeout_s
        return max(0.0, deadline - self.clock())

    def _acquire(self, nowait: bool) -> float:
        """Take the connection's lock; returns the seconds left to wait for the database's."""
        if nowait:
            if not self._lock.acquire(blocking=False):
                raise WouldBlock
            return 0.0
        left = self._left()
        if self._lock.acquire(blocking=False):
            return left  # (without a deadline: the same busy timeout each time, no PRAGMA)
        started = self.clock()
        # Past its deadline an operation still tries once: the lock may be free by now.
        if not self._lock.acquire(timeout=left if left > 0 else 0):
            raise self._error(sqlite3.OperationalError(
                "database is locked (this process's ledger connection stayed busy for the "
                "whole busy timeout)"))
        return max(0.0, left - (self.clock() - started))

    @contextmanager
    def transaction(self) -> Iterator[_SqliteTx]:
        nowait = NOWAIT.get()
        left = self._acquire(nowait)
        try:
            self._begin(nowait, left)
            try:
                yield _SqliteTx(self._conn)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise self._error(exc) from exc
            except BaseException:
                self._rollback()
                raise
            self._commits += 1
            if self._commits % CHECKPOINT_EVERY == 0:
                if nowait:
                    self.checkpoint_due = True  # the ledger runs it on its thread
                else:
                    self._checkpoint()
        finally:
            self._lock.release()

    def _begin(self, nowait: bool, left: float) -> None:
        # The busy timeout is switched only when it changes: on an event loop most
        # transactions are NOWAIT reservations, and each PRAGMA is a statement of its own.
        busy_ms = 0 if nowait else int(left * 1000)
        if busy_ms != self._busy_ms:
            self._conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
            self._busy_ms = busy_ms
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if nowait and ("locked" in str(exc) or "busy" in str(exc)):
                raise WouldBlock from None  # another process holds the write lock
            raise self._error(exc) from exc
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _checkpoint(self) -> None:
        # PASSIVE: copies what it can without waiting for readers or writers.
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def checkpoint(self) -> None:
        with self._lock:
            self.checkpoint_due = False
            self._checkpoint()

    def _rollback(self) -> None:
        # The failed statement may already have ended the transaction.
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._acquire(nowait=False)  # a WAL read never waits for the database's write lock
        try:
            return _SqliteTx(self._conn).execute(sql, params)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            self._lock.release()

    def has_table(self, tx: Tx, name: str) -> bool:
        rows = tx.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        )
        return bool(rows)

    def has_column(self, tx: Tx, table: str, column: str) -> bool:
        rows = tx.execute("SELECT name FROM pragma_table_info(?) WHERE name = ?", (table, column))
        return bool(rows)

    def _error(self, exc: sqlite3.Error) -> LedgerError:
        return LedgerError(f"{self.path}: ledger write failed: {exc}", backend="sqlite")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def safe_url(url: str) -> str:
    """The URL without its password (and without anything that could hold one)."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(url)
    except Exception:
        return "postgresql://<unparseable URL>"
    host = parts.get("host") or "localhost"
    port = parts.get("port") or "5432"
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"postgresql://{user}{host}:{port}/{parts.get('dbname') or ''}"


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class _PgTx:
    def __init__(self, cursor: Any):
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cursor.execute(sql.replace("?", "%s"), tuple(params))
        if self._cursor.description is None:
            return []
        return list(self._cursor.fetchall())

    def rowcount(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cursor.execute(sql.replace("?", "%s"), tuple(params))
        return int(self._cursor.rowcount)


class PostgresBackend:
    """A PostgreSQL database shared by every process and host, through a connection pool."""

    name = "postgres"
    lock_rows = " FOR UPDATE"
    # Every statement is a network round trip: under NOWAIT a transaction or read says at once
    # that it would wait, so the event loop runs only work that merely queues writes.
    nowait = True

    def __init__(self, url: str, *, pool_size: int = 10, app_name: str = "cascade-ledger"):
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise LedgerError(
                f"a PostgreSQL ledger needs psycopg: {install_hint('postgres')}",
                backend="postgres",
            ) from exc
        self._psycopg = psycopg
        self._where = safe_url(url)
        try:
            password = str(conninfo_to_dict(url).get("password") or "")
        except Exception:
            password = ""
        self._secrets = tuple(s for s in (url, password) if s)
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "connect_timeout": 5,
                "application_name": app_name,
            },
            # A connection that died (a PostgreSQL restart, a failover) is replaced, not used.
            check=ConnectionPool.check_connection,
            open=False,
            name="cascade-ledger",
        )
        # One direct connection first: it fails fast with the real reason (refused, unknown
        # database), where the pool would retry until its timeout and report only that.
        failure = None
        try:
            psycopg.connect(url, connect_timeout=5).close()
            self._pool.open(wait=True, timeout=PG_CONNECTION_TIMEOUT_S)
        except Exception as exc:
            failure = self._error("cannot connect", exc)
        if failure is not None:
            # Raised outside the handler, so no chained exception can carry the URL along.
            self._pool.close()
            raise failure

    def describe(self) -> str:
        return self._where

    def deadline(self) -> float:
        # Not used to bound PostgreSQL's waits: each pool checkout has its own timeout.
        return time.monotonic() + PG_CONNECTION_TIMEOUT_S

    def _error(self, what: str, exc: BaseException) -> LedgerError:
        detail = _scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "", self._secrets)
        return LedgerError(
            f"{self._where}: {what}: {type(exc).__name__}: {detail}", backend="postgres"
        )

    @contextmanager
    def transaction(self) -> Iterator[_PgTx]:
        if NOWAIT.get():
            raise WouldBlock
        psycopg = self._psycopg
        try:
            with (
                self._pool.connection(timeout=PG_CONNECTION_TIMEOUT_S) as conn,
                conn.transaction(),
                conn.cursor() as cursor,
            ):
                yield _PgTx(cursor)
        except (psycopg.Error, OSError) as exc:
            raise self._error("ledger write failed", exc) from None
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg_pool"):
                raise self._error("no ledger connection", exc) from None
            raise

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        if NOWAIT.get():
            raise WouldBlock
        try:
            with self._pool.connection(timeout=PG_CONNECTION_TIMEOUT_S) as conn:
                cursor: Any = conn.execute(sql.replace("?", "%s"), tuple(params))
                rows: list[Row] = cursor.fetchall()  # dict rows: the pool's row_factory
                return rows
        except Exception as exc:
            if isinstance(exc, self._psycopg.Error) or type(exc).__module__.startswith(
                "psycopg_pool"
            ):
                raise self._error("ledger read failed", exc) from None
            raise

    def has_table(self, tx: Tx, name: str) -> bool:
        rows = tx.execute("SELECT to_regclass(?) IS NOT NULL AS present", (name,))
        return bool(rows[0]["present"])

    def has_column(self, tx: Tx, table: str, column: str) -> bool:
        rows = tx.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = ? AND column_name = ?",
            (table, column),
        )
        return bool(rows)

    def close(self) -> None:
        self._pool.close()
