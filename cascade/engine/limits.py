"""What may stop a rung before it is called: an open circuit, the request's cost cap, a period
budget; and how many calls a provider may have in flight."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from cascade.config import CascadeConfig
from cascade.engine.breaker import CircuitBreaker, OutputSpeed
from cascade.errors import ConfigError, LedgerError
from cascade.ledger import Ledger
from cascade.ledger.keys import KeyScope
from cascade.ledger.money import Accounts, Hold, Limit, cap_refusal, worst_case_cost
from cascade.types import Message

__all__ = ["Gate", "Limits", "Tab"]


class Tab(Protocol):
    """A run's steps in flight, as its cost cap counts them (``engine.recorder.Run``)."""

    held: dict[int, float]  # step index -> its reservation (its cost once its answer is back)

    def committed(self) -> float:
        """The run's recorded steps' cost plus what its steps in flight hold."""
        ...


class Gate:
    """The outcome of checking one rung: go (with its pending-row hold) or skip, and why.

    A gone-through gate also remembers what its step has reserved (``reserved``: its worst case
    once per attempt that may be billed) and against what (``task``, ``cap``, the run's ``tab``),
    so that a retry after an attempt that timed out can reserve again (``Limits.extend``).
    """

    __slots__ = ("cap", "estimate", "hold", "key", "kind", "limit_usd", "reason", "reserved",
                 "step", "tab", "task")

    def __init__(
        self,
        hold: Hold | None = None,
        reason: str | None = None,
        kind: str = "",
        estimate: float = 0.0,
        limit_usd: float = 0.0,
        *,
        task: str = "",
        cap: float | None = None,
        tab: Tab | None = None,
        step: int = 0,
        key: KeyScope | None = None,
    ):
        self.hold = hold
        self.key = key
        self.reason = reason
        self.kind = kind  # "circuit" | "budget" when skipped
        self.estimate = estimate
        self.limit_usd = limit_usd
        self.task = task
        self.cap = cap
        self.tab = tab
        self.step = step
        self.reserved = estimate

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
        estimate: float | None = None,
        tab: Tab | None = None,
        key: KeyScope | None = None,
    ) -> Gate:
        """Circuit, cost cap and period budgets; a go writes the step's pending row.

        Args:
            estimate: The call's worst case when the caller has it (``worst_case``).
            tab: The run whose cap a retry of this call must also fit (``extend``).
            key: The named gateway key that made the run: its budgets decide too, and the
                row carries its name.

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
        if estimate is None:
            estimate = self.worst_case(model_key, messages, params)
        hold, refusal = self.accounts.reserve(
            run_id=run_id,
            task=task,
            step=step,
            model_key=model_key,
            provider=provider,
            estimate=estimate,
            spent=spent,
            cap=cap,
            key=key,
        )
        if refusal is not None:
            return Gate(
                reason=refusal.reason, kind="budget", estimate=estimate,
                limit_usd=refusal.limit_usd,
            )
        return Gate(hold=hold, estimate=estimate, task=task, cap=cap, tab=tab, step=step, key=key)

    def worst_case(
        self, model_key: str, messages: Sequence[Message], params: Mapping[str, Any]
    ) -> float:
        """The most one call of ``model_key`` can cost (``ledger.money.worst_case_cost``)."""
        return worst_case_cost(messages, params, self.config.models[model_key].price)

    def extend(self, gate: Gate) -> str | None:
        """Reserve one more worst case for ``gate``'s step before its call is retried (an
        earlier attempt timed out, or was billed, and used up what was reserved): the run's
        cost cap, counting its steps in flight, and the period budgets decide as for the
        step's first reservation.

        Returns:
            None when reserved; else the refusal's reason (the call must not be retried).

        Raises:
            LedgerError: the reservation could not be written (do not retry).
        """
        refusal = self._over_cap(gate)
        if refusal is None and gate.hold is not None:
            found = self.accounts.extend(gate.hold, estimate=gate.estimate, key=gate.key)
            refusal = None if found is None else found.reason
        if refusal is None:
            self._hold(gate, gate.reserved + gate.estimate)
        return refusal

    async def aextend(self, gate: Gate) -> str | None:
        """The async twin of ``extend``: the ledger's part never waits on the event loop."""
        ledger = self.accounts.ledger
        if ledger is None or gate.hold is None:
            return self.extend(gate)
        refusal = self._over_cap(gate)
        if refusal is not None:
            return refusal
        # Counted at once, so that a hedged rung started while the ledger decides sees it.
        before = gate.reserved
        self._hold(gate, before + gate.estimate)
        try:
            found = await ledger.arun(
                self.accounts.extend, gate.hold, estimate=gate.estimate, key=gate.key
            )
        except LedgerError:
            self._hold(gate, before)
            raise
        if found is not None:
            self._hold(gate, before)
            return found.reason
        return None

    def _over_cap(self, gate: Gate) -> str | None:
        spent = gate.tab.committed() if gate.tab is not None else 0.0
        refusal = cap_refusal(spent, gate.estimate, gate.cap)
        return None if refusal is None else refusal.reason

    @staticmethod
    def _hold(gate: Gate, reserved: float) -> None:
        gate.reserved = reserved
        if gate.tab is not None and gate.step in gate.tab.held:
            gate.tab.held[gate.step] = reserved

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
