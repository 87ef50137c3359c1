"""Named gateway keys, kept in the ledger so that every replica of the gateway sees the same ones.

A key is one token, ``ck-<id>-<secret>``: ``id`` is 12 hex digits, public, and finds the key's
row; ``secret`` is ``secrets.token_urlsafe(32)`` (256 random bits). The ``keys`` table holds a
per-key random salt and SHA-256 of salt and secret, never the key, and a presented key is
checked with ``hmac.compare_digest``.

Why SHA-256 and not scrypt or bcrypt: slow hashes protect low-entropy secrets (passwords) from
guessing after a database leak. A 256-bit random secret cannot be guessed whatever the hash's
speed, so a slow hash would only add milliseconds of CPU to every lookup that misses the
gateway's cache. The salt makes equal secrets (there are none in practice) hash differently.

``KeyStore`` creates, lists, changes and revokes keys (``cascade keys``) and finds the row of a
presented key (the gateway's ``cascade.gateway.keys``, which caches it briefly). ``KeyScope`` is
what a run made with a key carries into the engine: its name, its tasks and its budgets.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cascade.config.schema import MAX_PER_MINUTE, MAX_USD
from cascade.errors import KeyStoreError
from cascade.formatting import FIRST_TS, TIME_RANGE, UNTIL_TS
from cascade.ledger.core import Ledger
from cascade.ledger.rows import Record

__all__ = [
    "LIMIT_FIELDS",
    "PREFIX",
    "KeyRecord",
    "KeyScope",
    "KeyStore",
    "check_limits",
    "check_name",
    "hash_secret",
    "split_token",
]

PREFIX = "ck-"
_ID = re.compile(r"[0-9a-f]{12}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
# What ``update`` may change; None clears a limit (tasks: None allows every task).
LIMIT_FIELDS = ("tasks", "daily_usd", "monthly_usd", "rpm", "tpm", "expires")
_COLUMNS = "id, name, tasks, daily_usd, monthly_usd, rpm, tpm, expires, created, updated, revoked"


@dataclass(frozen=True, slots=True)
class KeyScope:
    """What a run made with a named gateway key may do and spend (``Cascade.complete(key=)``).

    Attributes:
        name: The key's name: stored on the run's rows, and its spend's totals scope ``key:NAME``.
        tasks: The tasks it may run (None: all).
        daily_usd: Its daily budget in USD (None: none), checked with the other budgets.
        monthly_usd: Its monthly budget in USD.
    """

    name: str
    tasks: frozenset[str] | None = None
    daily_usd: float | None = None
    monthly_usd: float | None = None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key's row, without its salt and hash (times are Unix seconds)."""

    id: str
    name: str
    tasks: frozenset[str] | None
    daily_usd: float | None
    monthly_usd: float | None
    rpm: int | None
    tpm: int | None
    expires: float | None
    created: float
    updated: float
    revoked: float | None

    def state(self, now: float) -> str:
        """``active``, ``revoked`` or ``expired`` at ``now``."""
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    @property
    def scope(self) -> KeyScope:
        return KeyScope(self.name, self.tasks, self.daily_usd, self.monthly_usd)

    def as_json(self) -> dict[str, Any]:
        """The fields ``cascade keys list|show --json`` prints (the key itself is never known)."""
        return {
            "name": self.name,
            "id": self.id,
            "tasks": sorted(self.tasks) if self.tasks is not None else None,
            "daily_usd": self.daily_usd,
            "monthly_usd": self.monthly_usd,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "expires": self.expires,
            "created": self.created,
            "updated": self.updated,
            "revoked": self.revoked,
            "state": self.state(time.time()),
        }


def hash_secret(salt: str, secret: str) -> str:
    """SHA-256 of the salt and the secret, in hex (see the module docstring for why)."""
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a ``ck-<id>-<secret>`` token; None for anything else."""
    if not token.startswith(PREFIX):
        return None
    key_id, sep, secret = token[len(PREFIX) :].partition("-")
    if not sep or not secret or not _ID.fullmatch(key_id):
        return None
    return key_id, secret


def _record(row: Record | Mapping[str, Any]) -> KeyRecord:
    tasks = row["tasks"]
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        tasks=frozenset(json.loads(tasks)) if tasks is not None else None,
        daily_usd=_float(row["daily_usd"]),
        monthly_usd=_float(row["monthly_usd"]),
        rpm=None if row["rpm"] is None else int(row["rpm"]),
        tpm=None if row["tpm"] is None else int(row["tpm"]),
        expires=_float(row["expires"]),
        created=float(row["created"]),
        updated=float(row["updated"]),
        revoked=_float(row["revoked"]),
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def check_name(name: str) -> None:
    """Refuse a name that is not a key name (``KeyStoreError``), before anything is opened."""
    if not _NAME.fullmatch(name):
        raise KeyStoreError(
            f"{name!r} is not a key name (1-64 letters, digits and _ . @ -, starting with a "
            "letter or digit)",
            param="name",
        )


def check_limits(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The limits as stored, or a ``KeyStoreError`` naming the field at fault.

    Rates are whole numbers in 1..``MAX_PER_MINUTE``, budgets finite in 0 < x <= ``MAX_USD``
    (nano-dollars of more overflow the ledger's 64-bit totals), ``expires`` in ``TIME_RANGE``.
    """
    unknown = sorted(set(changes) - set(LIMIT_FIELDS))
    if unknown:
        raise KeyStoreError(f"unknown field(s) {', '.join(unknown)}", param=unknown[0])
    out: dict[str, Any] = {}
    for field, value in changes.items():
        if value is None:
            out[field] = None
        elif field == "tasks":
            tasks = sorted({str(t).strip() for t in value if str(t).strip()})
            if not tasks:
                raise KeyStoreError("name at least one task (or clear the limit)", param=field)
            out[field] = json.dumps(tasks)
        elif field in ("rpm", "tpm"):
            whole = isinstance(value, int) and not isinstance(value, bool)
            if not whole or not 1 <= value <= MAX_PER_MINUTE:
                raise KeyStoreError(
                    f"must be a whole number from 1 to {MAX_PER_MINUTE} (2**53), got {value!r}",
                    param=field,
                )
            out[field] = value
        elif field == "expires":
            number = _number(value)
            if number is None or not FIRST_TS <= number < UNTIL_TS:
                raise KeyStoreError(
                    f"must be a Unix time in {TIME_RANGE}, got {value!r}", param=field
                )
            out[field] = number
        else:  # daily_usd, monthly_usd
            number = _number(value)
            if number is None or not 0 < number <= MAX_USD:
                raise KeyStoreError(
                    f"must be a number > 0 and <= {MAX_USD:,.0f} USD, got {value!r}", param=field
                )
            out[field] = number
    return out


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (NaN, an infinity, an int too large, not a number)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


class KeyStore:
    """The ``keys`` table of a ledger (SQLite or PostgreSQL).

    Args:
        ledger: An open ``Ledger``; its schema (8 or later) has the table.
        clock: Wall-clock seconds (created, updated, revoked; injected in tests).
    """

    def __init__(self, ledger: Ledger, clock: Any = time.time):
        self.ledger = ledger
        self.clock = clock

    def create(self, name: str, **limits: Any) -> tuple[KeyRecord, str]:
        """A new key named ``name`` with ``limits`` (``LIMIT_FIELDS``).

        Returns:
            Its record and the key itself, which is stored nowhere: show it once.

        Raises:
            KeyStoreError: a bad or duplicate name, or a bad limit.
            LedgerError: the ledger cannot be written.
        """
        check_name(name)
        values = {field: None for field in LIMIT_FIELDS} | check_limits(limits)
        key_id, secret, salt = (
            secrets.token_hex(6),
            secrets.token_urlsafe(32),
            secrets.token_hex(16),
        )
        now = self.clock()
        with self.ledger.backend.transaction() as tx:
            if tx.execute("SELECT id FROM keys WHERE name = ?", (name,)):
                raise KeyStoreError(f"a key named {name!r} exists already", param="name")
            tx.execute(
                "INSERT INTO keys (id, name, salt, hash, tasks, daily_usd, monthly_usd, rpm, tpm,"
                " expires, created, updated, revoked) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,NULL)",
                (key_id, name, salt, hash_secret(salt, secret), *values.values(), now, now),
            )
        return self.get(name), f"{PREFIX}{key_id}-{secret}"

    def get(self, name: str) -> KeyRecord:
        """The key named ``name``.

        Raises:
            KeyStoreError: there is none.
        """
        rows = self.ledger.backend.read(f"SELECT {_COLUMNS} FROM keys WHERE name = ?", (name,))
        if not rows:
            raise KeyStoreError(f"no key named {name!r}", param="name")
        return _record(rows[0])

    def list(self) -> list[KeyRecord]:
        """Every key, revoked and expired ones included, by name."""
        rows = self.ledger.backend.read(f"SELECT {_COLUMNS} FROM keys ORDER BY name")
        return [_record(r) for r in rows]

    def count(self) -> int:
        """How many keys there are (revoked ones included)."""
        return int(self.ledger.backend.read("SELECT COUNT(*) AS n FROM keys")[0]["n"])

    def update(self, name: str, **changes: Any) -> KeyRecord:
        """Change the limits of ``name`` (a None value clears that limit).

        Raises:
            KeyStoreError: no such key, or a bad limit.
        """
        values = check_limits(changes)
        if values:
            sets = ", ".join(f"{field} = ?" for field in values)
            self._change(name, f"{sets}, updated = ?", (*values.values(), self.clock()))
        return self.get(name)

    def revoke(self, name: str) -> KeyRecord:
        """Revoke ``name`` for good (revoking twice keeps the first time).

        Raises:
            KeyStoreError: no such key.
        """
        now = self.clock()
        self._change(name, "revoked = COALESCE(revoked, ?), updated = ?", (now, now))
        return self.get(name)

    def _change(self, name: str, sets: str, args: tuple[Any, ...]) -> None:
        with self.ledger.backend.transaction() as tx:
            if not tx.rowcount(f"UPDATE keys SET {sets} WHERE name = ?", (*args, name)):
                raise KeyStoreError(f"no key named {name!r}", param="name")

    def find(self, token: str) -> KeyRecord | None:
        """The record of the key ``token`` when its secret matches (any state); else None."""
        parts = split_token(token)
        if parts is None:
            return None
        return self.check(self.fetch(parts[0]), parts[1])

    def fetch(self, key_id: str) -> tuple[KeyRecord, str, str] | None:
        """The row of the key whose public id is ``key_id``, with its salt and hash."""
        rows = self.ledger.backend.read(
            f"SELECT {_COLUMNS}, salt, hash FROM keys WHERE id = ?", (key_id,)
        )
        return (_record(rows[0]), rows[0]["salt"], rows[0]["hash"]) if rows else None

    @staticmethod
    def check(row: tuple[KeyRecord, str, str] | None, secret: str) -> KeyRecord | None:
        """The record of ``row`` when ``secret`` is its key's secret (constant-time compare)."""
        if row is None:
            return None
        record, salt, digest = row
        return record if hmac.compare_digest(hash_secret(salt, secret), digest) else None
