"""Which rows a report covers: a period (``--since``, ``--until``), a task, a gateway key."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cascade.errors import ConfigError
from cascade.formatting import FIRST_TS, TIME_RANGE, UNTIL_TS, utc_minute

__all__ = ["BUCKETS", "Period", "bucket_seconds", "parse_since"]

# Time buckets of the charts, in seconds: the smallest that draws a period in at most
# MAX_BUCKETS points, so a chart's size is bounded whatever the ledger's.
BUCKETS = (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 28 * 86400)
MAX_BUCKETS = 240


def parse_since(value: str, flag: str = "--since") -> float:
    """``2026-11-30`` or an ISO timestamp (UTC unless it says otherwise) as a Unix time.

    Raises:
        ConfigError: not a date, or one outside ``TIME_RANGE`` (naming ``flag``).
    """
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(f"not a date (YYYY-MM-DD or ISO 8601): {value!r}", location=flag) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    ts = moment.timestamp()  # an aware datetime's never overflows, even one hour before year 1
    if not FIRST_TS <= ts < UNTIL_TS:
        raise ConfigError(f"{value!r} is outside {TIME_RANGE}", location=flag)
    return ts


@dataclass(frozen=True, slots=True)
class Period:
    """The rows a report reads: ``since <= ts < until`` (either open), of one task and one
    gateway key (``runs.key_name``) if given."""

    since: float | None = None
    until: float | None = None
    task: str | None = None
    key: str | None = None

    @property
    def whole(self) -> bool:
        """Every row of the ledger: what ``cascade report --json`` reads."""
        return self == Period()

    def runs(self, alias: str = "r") -> tuple[str, tuple[Any, ...]]:
        """A WHERE clause (``1 = 1 AND ...``) over runs, and its parameters."""
        return self._where(alias, f"{alias}.key_name = ?")

    def steps(self, alias: str = "s") -> tuple[str, tuple[Any, ...]]:
        """A WHERE clause over steps; a key selects the steps of its runs."""
        return self._where(alias, f"{alias}.run_id IN (SELECT run_id FROM runs WHERE key_name = ?)")

    def _where(self, alias: str, key_clause: str) -> tuple[str, tuple[Any, ...]]:
        clauses, args = ["1 = 1"], []
        for clause, value in (
            (f"{alias}.ts >= ?", self.since),
            (f"{alias}.ts < ?", self.until),
            (f"{alias}.task = ?", self.task),
            (key_clause, self.key),
        ):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        return " AND ".join(clauses), tuple(args)

    def describe(self) -> str:
        parts = [
            f"from {utc_minute(self.since)}" if self.since is not None else "from the start",
            f"until {utc_minute(self.until)}" if self.until is not None else "until now",
        ]
        if self.task:
            parts.append(f"task {self.task}")
        if self.key:
            parts.append(f"key {self.key}")
        return ", ".join(parts)


def bucket_seconds(start: float, end: float) -> int:
    """The chart bucket for rows between ``start`` and ``end`` (see ``BUCKETS``)."""
    span = max(end - start, 1.0)
    return next((b for b in BUCKETS if math.ceil(span / b) <= MAX_BUCKETS), BUCKETS[-1])
