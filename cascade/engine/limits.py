"""What may stop a rung before it is called: an open circuit, the request's cost cap, a period
budget; and how many calls a provider may have in flight."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from cascade.config import CascadeConfig
from cascade.engine.breaker import CircuitBreaker, OutputSpeed
from cascade.errors import ConfigError
from cascade.ledger import Ledger
from cascade.ledger.money import Accounts, Hold, Limit, worst_case_cost
from cascade.types import Message

__all__ = ["Gate", "Limits"]


class Gate:
    """The outcome of checking one rung: go (with its pending-row hold) or skip, and why."""

    __slots__ = ("estimate", "hold", "kind", "limit_usd", "reason")

    def __init__(
        self,
        hold: Hold | None = None,
        reason: str | None = None,
        kind: str = "",
        estimate: float = 0.0,
        limit_usd: float = 0.0,
    ):
        self.hold = hold
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
        # Tells a timeout the request's size explains from one that says the provider is slow.
        self.speeds = OutputSpeed()
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
                "period budgets are enforced from the ledger; set ledger.path or ledger.url_env",
                location="budgets",
            )
        self.accounts = Accounts(ledger, limits)

    @property
    def guard(self) -> Accounts | None:
        """The accounts when period budgets are set (release 0.1's ``BudgetGuard``)."""
        return self.accounts if self.accounts.limits else None

    def check(
        self,
        task: str,
        provider: str,
        model_key: str,
        messages: Sequence[Message],
        params: Mapping[str, Any],
        spent: float,
        cap: float | None,
        *,
        run_id: str = "",
        step: int = 0,
    ) -> Gate:
        """Circuit, cost cap and period budgets; a go writes the step's pending row.

        Raises:
            LedgerError: the pending row could not be written (do not call the model).
        """
        breaker = self.breakers.get(provider)
        if breaker is not None:
            left = breaker.open_for()
            if left is not None:
                return Gate(
                    reason=f"circuit open for provider {provider!r} "
                    f"({left:.1f}s of cool-down left)",
                    kind="circuit",
                )
        if cap is None and self.accounts.ledger is None:
            return Gate()  # nothing to reserve against and nowhere to write a pending row
        estimate = worst_case_cost(messages, params, self.config.models[model_key].price)
        hold, refusal = self.accounts.reserve(
            run_id=run_id,
            task=task,
            step=step,
            model_key=model_key,
            provider=provider,
            estimate=estimate,
            spent=spent,
            cap=cap,
        )
        if refusal is not None:
            return Gate(
                reason=refusal.reason, kind="budget", estimate=estimate,
                limit_usd=refusal.limit_usd,
            )
        return Gate(hold=hold, estimate=estimate)

    def release(self, gate: Gate) -> None:
        self.accounts.release(gate.hold)

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
