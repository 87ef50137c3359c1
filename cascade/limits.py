"""What may stop a rung before it is called: an open circuit, the request's cost cap, a period
budget; and how many calls a provider may have in flight."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from cascade.breaker import CircuitBreaker
from cascade.budget import BudgetGuard, Limit, Reservation, worst_case_cost
from cascade.config import CascadeConfig
from cascade.errors import ConfigError
from cascade.ledger import Ledger
from cascade.types import Message

__all__ = ["Gate", "Limits"]


class Gate:
    """The outcome of checking one rung: go (with a reservation to release) or skip, and why."""

    __slots__ = ("estimate", "kind", "limit_usd", "reason", "reservation")

    def __init__(
        self,
        reservation: Reservation | None = None,
        reason: str | None = None,
        kind: str = "",
        estimate: float = 0.0,
        limit_usd: float = 0.0,
    ):
        self.reservation = reservation
        self.reason = reason
        self.kind = kind  # "circuit" | "budget" when skipped
        self.estimate = estimate
        self.limit_usd = limit_usd

    @property
    def skipped(self) -> bool:
        return self.reason is not None


class Limits:
    """Circuit breakers, concurrency limits and budgets of one ``Cascade``."""

    def __init__(self, config: CascadeConfig, ledger: Ledger | None):
        self.config = config
        self.breakers = {
            name: CircuitBreaker(p.circuit_breaker.failures, p.circuit_breaker.cooldown_s)
            for name, p in config.providers.items()
            if p.circuit_breaker
        }
        self._sync_slots = {
            name: threading.BoundedSemaphore(p.max_concurrency)
            for name, p in config.providers.items()
            if p.max_concurrency
        }
        self._async_slots: weakref.WeakKeyDictionary[Any, dict[str, asyncio.Semaphore]] = (
            weakref.WeakKeyDictionary()
        )
        limits = []
        for scope, budgets in [
            ("global", config.budgets),
            *((name, t.budgets) for name, t in config.tasks.items()),
        ]:
            for period in ("daily", "monthly"):
                value = getattr(budgets, f"{period}_usd", None) if budgets else None
                if value is not None:
                    limits.append(Limit(scope, period, value))
        if limits and ledger is None:
            raise ConfigError(
                "period budgets are enforced from the ledger; set ledger.path", location="budgets"
            )
        self.guard = BudgetGuard(ledger, limits) if limits and ledger else None

    def budgeted(self, task: str, cap: float | None) -> bool:
        return cap is not None or bool(self.guard and self.guard.applicable(task))

    def check(
        self,
        task: str,
        provider: str,
        model_key: str,
        messages: Sequence[Message],
        params: Mapping[str, Any],
        spent: float,
        cap: float | None,
    ) -> Gate:
        breaker = self.breakers.get(provider)
        if breaker is not None:
            left = breaker.open_for()
            if left is not None:
                return Gate(
                    reason=f"circuit open for provider {provider!r} "
                    f"({left:.1f}s of cool-down left)",
                    kind="circuit",
                )
        if not self.budgeted(task, cap):
            return Gate()
        estimate = worst_case_cost(messages, params, self.config.models[model_key].price)
        if cap is not None and spent + estimate > cap:
            return Gate(
                reason=f"max_cost_usd ${cap:.6f}: spent ${spent:.6f} + worst case "
                f"${estimate:.6f} for {model_key}",
                kind="budget",
                estimate=estimate,
                limit_usd=cap,
            )
        if self.guard is None:
            return Gate(estimate=estimate)
        reservation, limit, refusal = self.guard.reserve(task, estimate)
        if limit is not None:
            return Gate(reason=refusal, kind="budget", estimate=estimate, limit_usd=limit.limit_usd)
        return Gate(reservation=reservation, estimate=estimate)

    def release(self, gate: Gate) -> None:
        if self.guard is not None:
            self.guard.release(gate.reservation)

    def sync_slot(self, provider: str) -> threading.BoundedSemaphore | None:
        return self._sync_slots.get(provider)

    def async_slot(self, provider: str) -> asyncio.Semaphore | None:
        size = self.config.providers[provider].max_concurrency
        if size is None:
            return None
        per_loop = self._async_slots.setdefault(asyncio.get_running_loop(), {})
        if provider not in per_loop:
            per_loop[provider] = asyncio.Semaphore(size)
        return per_loop[provider]

    def record(self, provider: str, ok: bool) -> bool:
        """Feed the provider's breaker; True when this failure opened it."""
        breaker = self.breakers.get(provider)
        if breaker is None:
            return False
        if ok:
            breaker.success()
            return False
        return breaker.failure()
