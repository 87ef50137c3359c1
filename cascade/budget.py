"""Spending limits: a per-request cap, and daily/monthly budgets enforced from the ledger.

Period budgets use reservations. Before a rung is called its worst-case cost is reserved; the
reservation is released only after the step's real cost is in the ledger. A check therefore sees
``ledger spend + open reservations + this estimate``, so concurrent requests in one process can
overshoot a budget by at most the amount one request's estimate undershoots its real cost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cascade.ledger import Ledger
from cascade.pricing import Price
from cascade.tokens import estimate_input_tokens, max_output_tokens
from cascade.types import Message

__all__ = [
    "BudgetGuard",
    "Reservation",
    "estimate_input_tokens",
    "max_output_tokens",
    "worst_case_cost",
]

# Used for the worst case when a call sets no output limit. The engine always sends one (the
# model's max_output_tokens, by default this value), so that the estimate is a real bound.
DEFAULT_MAX_TOKENS = 4096


def worst_case_cost(messages: Sequence[Message], params: Mapping[str, Any], price: Price) -> float:
    """The most a call can cost: the prompt counted high, plus the whole output limit."""
    out = max_output_tokens(params) or DEFAULT_MAX_TOKENS
    return price.estimate(estimate_input_tokens(messages, params), out)


@dataclass(frozen=True, slots=True)
class Limit:
    scope: str  # "global" or the task name
    period: str  # "daily" or "monthly"
    limit_usd: float


@dataclass(slots=True)
class Reservation:
    amount: float
    limits: tuple[Limit, ...]
    released: bool = False


def period_start(period: str, now: float | None = None) -> float:
    moment = datetime.fromtimestamp(time.time() if now is None else now, tz=timezone.utc)
    if period == "daily":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start.timestamp()


class BudgetGuard:
    """Checks and reserves period budgets against the ledger. Safe across threads and tasks."""

    def __init__(self, ledger: Ledger, limits: Sequence[Limit]):
        self.ledger = ledger
        self.limits = tuple(limits)
        self._lock = threading.Lock()
        # Open reservations by id, summed when checked: adding and subtracting floats would
        # leave residue that never returns to zero.
        self._open: dict[Limit, dict[int, float]] = {}

    def applicable(self, task: str) -> tuple[Limit, ...]:
        return tuple(lim for lim in self.limits if lim.scope in ("global", task))

    def spent(self, limit: Limit, now: float | None = None) -> float:
        since = period_start(limit.period, now)
        if limit.scope == "global":
            rows = self.ledger.query(
                "SELECT COALESCE(SUM(cost_usd), 0) AS s FROM steps WHERE ts >= ?", (since,)
            )
        else:
            rows = self.ledger.query(
                "SELECT COALESCE(SUM(cost_usd), 0) AS s FROM steps WHERE task = ? AND ts >= ?",
                (limit.scope, since),
            )
        return float(rows[0]["s"])

    def reserve(self, task: str, amount: float) -> tuple[Reservation | None, Limit | None, str]:
        """Reserve ``amount`` under every budget of ``task``; on refusal say which and why."""
        limits = self.applicable(task)
        if not limits:
            return Reservation(0.0, ()), None, ""
        with self._lock:
            for limit in limits:
                used = self.spent(limit) + self.reserved(limit)
                if used + amount > limit.limit_usd:
                    where = "global" if limit.scope == "global" else f"task {limit.scope!r}"
                    return (
                        None,
                        limit,
                        (
                            f"{limit.period} budget of {where}: spent+reserved "
                            f"${used:.6f} + worst case ${amount:.6f} > "
                            f"${limit.limit_usd:.6f}"
                        ),
                    )
            reservation = Reservation(amount, limits)
            for limit in limits:
                self._open.setdefault(limit, {})[id(reservation)] = amount
        return reservation, None, ""

    def release(self, reservation: Reservation | None) -> None:
        if reservation is None or reservation.released:
            return
        with self._lock:
            for limit in reservation.limits:
                self._open.get(limit, {}).pop(id(reservation), None)
            reservation.released = True

    def reserved(self, limit: Limit) -> float:
        """The worst cases reserved under ``limit`` by calls still in flight."""
        return sum(self._open.get(limit, {}).values())

    def status(self) -> list[dict[str, Any]]:
        """Spend against each budget, for ``cascade report``."""
        return [
            {
                "scope": lim.scope,
                "period": lim.period,
                "limit_usd": lim.limit_usd,
                "spent_usd": self.spent(lim),
            }
            for lim in self.limits
        ]
