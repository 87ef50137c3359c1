"""The gateway's lookup of named keys (``server.ledger_keys: true``), cached briefly.

A presented ``ck-<id>-<secret>`` key is found by its public id in the ledger's ``keys`` table
(``cascade.ledger.keys``) and its secret checked against the stored hash. The row is cached
per id for at most ``ttl_s`` (0.5 s), unknown ids included, so a steady stream of requests
reads the ledger about twice a second per key, and a key revoked (or changed, or expired) on
any replica is refused by every replica at most ``ttl_s`` later: within the 1 s promised.
The secret is checked on every request, cached row or not; expiry against the wall clock,
on every request too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cascade.ledger import Ledger
from cascade.ledger.keys import KeyRecord, KeyStore, split_token

__all__ = ["KEY_CACHE_S", "Denied", "LedgerKeys"]

# How long a key's row is trusted before it is read again; well under the 1 s within which a
# revocation must reach every replica.
KEY_CACHE_S = 0.5
# Cached rows kept at most (unknown ids included): a flood of made-up ids cannot grow it.
_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Denied:
    """Why a request's key was refused (the answer is 401); never holds the key.

    Attributes:
        reason: ``missing``, ``unknown``, ``revoked`` or ``expired``.
        name: The key's name, for a revoked or expired named key.
    """

    reason: str
    name: str | None = None

    @property
    def message(self) -> str:
        if self.reason == "revoked":
            return f"the API key {self.name!r} was revoked; ask for a new key"
        if self.reason == "expired":
            return f"the API key {self.name!r} has expired; ask for a new key"
        return (
            "invalid or missing API key: send 'Authorization: Bearer <key>' with one of the "
            "gateway's keys"
        )


_Row = tuple[KeyRecord, str, str]
_STALE = object()  # no cached row, or one older than the cache time


class LedgerKeys:
    """Cached lookups of named keys in one ledger.

    Args:
        ledger: The ledger holding the ``keys`` table (the engine's).
        ttl_s: How long a row is reused before it is read again.
        clock: Monotonic seconds for the cache (injected in tests).
        now: Wall-clock seconds for expiry (injected in tests).
        max_entries: Cached rows kept at most (unknown ids included); the oldest goes first.
    """

    def __init__(
        self,
        ledger: Ledger,
        ttl_s: float = KEY_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
        max_entries: int = _MAX_ENTRIES,
    ):
        self.store = KeyStore(ledger)
        self.max_entries = max_entries
        self.ledger = ledger
        self.ttl_s = ttl_s
        self.clock = clock
        self.now = now
        self.reads = 0  # ledger reads so far (tests count them)
        self._rows: dict[str, tuple[_Row | None, float]] = {}

    def count(self) -> int:
        """How many keys the ledger holds (revoked ones included)."""
        return self.store.count()

    async def lookup(self, token: str) -> KeyRecord | Denied:
        """The active key ``token`` names, or why it is refused.

        Raises:
            LedgerError: the ledger cannot be read.
        """
        found = self._cached(token)
        if not isinstance(found, tuple):
            return found
        key_id, secret, row = found
        if row is _STALE:
            row = await self.ledger.run(self.store.fetch, key_id)
            self._keep(key_id, row)
        return self._verdict(row, secret)  # type: ignore[arg-type]

    def lookup_sync(self, token: str) -> KeyRecord | Denied:
        """``lookup`` without an event loop (benchmarks, tools): reads the ledger here."""
        found = self._cached(token)
        if not isinstance(found, tuple):
            return found
        key_id, secret, row = found
        if row is _STALE:
            row = self.store.fetch(key_id)
            self._keep(key_id, row)
        return self._verdict(row, secret)  # type: ignore[arg-type]

    def _cached(self, token: str) -> Denied | tuple[str, str, object]:
        """The token's id, secret and cached row (``_STALE``: read it again), or its refusal."""
        parts = split_token(token)
        if parts is None:
            return Denied("unknown")
        key_id, secret = parts
        cached = self._rows.get(key_id)
        if cached is not None and self.clock() - cached[1] < self.ttl_s:
            return key_id, secret, cached[0]
        return key_id, secret, _STALE

    def _keep(self, key_id: str, row: _Row | None) -> None:
        self.reads += 1
        self._rows.pop(key_id, None)  # re-inserted last: the dict's order is the age order
        if len(self._rows) >= self.max_entries:
            # Drop the entry read longest ago, not the whole cache: a flood of made-up ids then
            # costs the ledger one read each, but never evicts every real key at once.
            del self._rows[next(iter(self._rows))]
        self._rows[key_id] = (row, self.clock())

    def _verdict(self, row: _Row | None, secret: str) -> KeyRecord | Denied:
        record = KeyStore.check(row, secret)
        if record is None:
            return Denied("unknown")
        state = record.state(self.now())
        return record if state == "active" else Denied(state, record.name)
