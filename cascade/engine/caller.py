"""One model call of a step: concurrency slot, circuit breaker, deadlines and tenacity's retries.

A provider's ``timeout_s`` bounds each attempt as a whole (the SDKs' own timeout only bounds
each read, so an upstream trickling one byte a second could hold a call for ever), and the
run's deadline bounds all attempts together.

An attempt that timed out was sent, and the provider may bill it: it costs its worst case
(``Outcome.lost_usd``), and a retry after it first reserves a worst case of its own
(``Limits.extend``), which the cost cap or a budget may refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cascade.config import CascadeConfig, ModelConfig
from cascade.engine.call_threads import run_within
from cascade.engine.limits import Gate, Limits
from cascade.engine.retry import RetryPolicy
from cascade.errors import CascadeError, ConfigError, ProviderError, RequestError
from cascade.ledger.money import bill
from cascade.logs import get_logger
from cascade.providers.base import Provider
from cascade.providers.sdk import SDKProvider
from cascade.tokens import max_output_tokens
from cascade.types import Completion, Message

__all__ = ["NOTHING", "Call", "Caller", "Outcome"]

log = get_logger()


@dataclass(frozen=True, slots=True)
class Call:
    """A request to call one ``models:`` key once (with its retries)."""

    model_key: str
    messages: tuple[Message, ...]
    params: Mapping[str, Any]
    query_id: str | None
    deadline: float | None = None  # time.monotonic() by which the run must end
    gate: Gate | None = None  # the step's reservation, which a retry after a timeout extends


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a call produced: an answer or the error that ended its retries."""

    completion: Completion | None
    error: ProviderError | None
    attempts: int
    latency_ms: float
    billed: tuple[Completion, ...] = ()  # usage of failed attempts that was billed anyway
    # The error that stopped the call before its request was sent (a missing API key, a body
    # that cannot be built): nothing left the process, so the step costs nothing of its own.
    unsent: CascadeError | None = None
    # Attempts that timed out after their request was sent: whether the provider billed them
    # will never be known, so each costs its worst case (their sum).
    lost: int = 0
    lost_usd: float = 0.0


NOTHING = Outcome(None, None, 0, 0.0)  # the outcome of a step that called nothing (a skip)


@dataclass(slots=True)
class _Tally:
    """What a call's attempts left behind: their count, the last fault, bills of failures."""

    attempts: int = 0
    last: ProviderError | None = None
    billed: list[Completion] = field(default_factory=list)
    unsent: CascadeError | None = None
    lost: int = 0
    lost_usd: float = 0.0

    def outcome(self, completion: Completion | None, error: ProviderError | None,
                started: float) -> Outcome:
        # When the circuit opened mid-step, the fault that opened it is the better story.
        return Outcome(completion, self.last or error if completion is None else None,
                       self.attempts, _since(started), tuple(self.billed), self.unsent,
                       self.lost, self.lost_usd)


class _NotSent(Exception):
    """Ends a call whose request was never sent (its cause is kept in the tally)."""


# Raised by our own code while the request is built, so before anything is sent.
_BEFORE_SENDING = (ConfigError, RequestError)


class Caller:
    """Runs ``Call``s against the configured providers, sync or async.

    Retries are tenacity's alone. The first attempt runs before tenacity is entered, since
    most calls succeed at once and tenacity's bookkeeping is a large part of a call's own
    time; when it fails, its error is handed to tenacity as attempt 1, so the waits, stops,
    logs and attempt numbers are exactly those of a call made under tenacity throughout.
    """

    def __init__(
        self,
        config: CascadeConfig,
        providers: Mapping[str, Provider],
        retry: RetryPolicy,
        limits: Limits,
    ):
        self.config = config
        self.providers = providers
        self.retry = retry
        self.limits = limits

    def call(self, op: Call) -> Outcome:
        model = self.config.models[op.model_key]
        provider = self.providers[model.provider]
        started = time.perf_counter()
        tally = _Tally()
        if not getattr(provider, "transient_faults", True):
            # A recording never fails transiently, so replay skips the retry machinery.
            tally.attempts = 1
            try:
                done = provider.complete(
                    op.messages, model=model.name, params=op.params, query_id=op.query_id
                )
            except ProviderError as exc:
                if exc.billed is not None:
                    tally.billed.append(exc.billed)
                return tally.outcome(None, exc, started)
            except _BEFORE_SENDING as exc:
                tally.attempts, tally.unsent = 0, exc
                return tally.outcome(None, None, started)
            return tally.outcome(done, None, started)
        slot = self.limits.sync_slot(model.provider)
        try:
            try:
                completion = self._once(op, model, provider, slot, tally)
            except ProviderError as first:
                completion = self._retried(op, model, provider, slot, tally, first)
        except ProviderError as exc:
            return tally.outcome(None, exc, started)
        except _NotSent:
            return tally.outcome(None, None, started)
        return tally.outcome(completion, None, started)

    def _retried(self, op: Call, model: ModelConfig, provider: Provider,
                 slot: threading.BoundedSemaphore | None, tally: _Tally,
                 first: ProviderError) -> Completion:
        """Attempts after the first, under tenacity, which sees ``first`` as its attempt 1."""
        replay: ProviderError | None = first
        for attempt in self.retry.retrying(op.deadline):
            with attempt:
                if replay is not None:
                    error, replay = replay, None
                    raise error
                return self._once(op, model, provider, slot, tally)
        raise AssertionError("tenacity re-raises the last error")  # pragma: no cover

    def _once(self, op: Call, model: ModelConfig, provider: Provider,
              slot: threading.BoundedSemaphore | None, tally: _Tally) -> Completion:
        """One attempt: breaker, timeout, concurrency slot, the provider call, the breaker fed."""
        self._gate(model.provider, model.name)
        if isinstance(provider, SDKProvider):
            provider.load_sdk()  # the first import (0.5-1 s) is not this attempt's time
        timeout, cut_short = self._timeout(op, model.provider, model.name)
        if op.gate is not None and _used_up(op.gate, model, tally):
            self._refused(model, tally, self.limits.extend(op.gate))
        tally.attempts += 1
        try:
            with slot or contextlib.nullcontext():
                completion = _within(
                    timeout,
                    lambda: provider.complete(
                        op.messages, model=model.name, params=op.params, query_id=op.query_id
                    ),
                )
        except (TimeoutError, asyncio.TimeoutError):  # distinct on 3.10
            raise self._timed_out(op, model, tally, timeout, cut_short) from None
        except ProviderError as exc:
            self._failed(op, model, tally, exc)
            raise
        except _BEFORE_SENDING as exc:
            # Not an attempt: nothing was sent, nothing can be billed, the breaker learns
            # nothing about the provider, and a retry would fail the same way.
            tally.attempts -= 1
            tally.unsent = exc
            raise _NotSent from exc
        self._note(model.provider, None)
        self.limits.speeds.observe(op.model_key, completion)
        return completion

    async def acall(self, op: Call) -> Outcome:
        model = self.config.models[op.model_key]
        provider = self.providers[model.provider]
        slot = self.limits.async_slot(model.provider)
        started = time.perf_counter()
        tally = _Tally()
        try:
            try:
                completion = await self._aonce(op, model, provider, slot, tally)
            except ProviderError as first:
                completion = await self._aretried(op, model, provider, slot, tally, first)
        except ProviderError as exc:
            return tally.outcome(None, exc, started)
        except _NotSent:
            return tally.outcome(None, None, started)
        return tally.outcome(completion, None, started)

    async def _aretried(self, op: Call, model: ModelConfig, provider: Provider,
                        slot: asyncio.Semaphore | None, tally: _Tally,
                        first: ProviderError) -> Completion:
        """The async twin of ``_retried``."""
        replay: ProviderError | None = first
        async for attempt in self.retry.aretrying(op.deadline):
            with attempt:
                if replay is not None:
                    error, replay = replay, None
                    raise error
                return await self._aonce(op, model, provider, slot, tally)
        raise AssertionError("tenacity re-raises the last error")  # pragma: no cover

    async def _aonce(self, op: Call, model: ModelConfig, provider: Provider,
                     slot: asyncio.Semaphore | None, tally: _Tally) -> Completion:
        """The async twin of ``_once``."""
        self._gate(model.provider, model.name)
        if isinstance(provider, SDKProvider):
            provider.load_sdk()  # the gateway has already imported it (create_app)
        timeout, cut_short = self._timeout(op, model.provider, model.name)
        if op.gate is not None and _used_up(op.gate, model, tally):
            self._refused(model, tally, await self.limits.aextend(op.gate))
        tally.attempts += 1
        try:
            async with slot or contextlib.nullcontext():
                completion = await _awithin(
                    timeout,
                    provider.acomplete(
                        op.messages, model=model.name, params=op.params, query_id=op.query_id
                    ),
                )
        except (TimeoutError, asyncio.TimeoutError):  # distinct on 3.10
            raise self._timed_out(op, model, tally, timeout, cut_short) from None
        except ProviderError as exc:
            self._failed(op, model, tally, exc)
            raise
        except _BEFORE_SENDING as exc:
            # Not an attempt: nothing was sent, nothing can be billed, the breaker learns
            # nothing about the provider, and a retry would fail the same way.
            tally.attempts -= 1
            tally.unsent = exc
            raise _NotSent from exc
        self._note(model.provider, None)
        self.limits.speeds.observe(op.model_key, completion)
        return completion

    def _timed_out(
        self, op: Call, model: ModelConfig, tally: _Tally, timeout: float, cut_short: bool
    ) -> ProviderError:
        """An attempt that ran out of time: its worst case spent either way (the request was
        sent), and fed to the breaker unless the run's deadline (not the provider) cut it short
        or the request's own size explains it."""
        tally.last = _timed_out(model.provider, model.name, timeout, cut_short)
        self._lost(op, tally)
        if not (cut_short or self._sized(op, timeout)):
            self._note(model.provider, tally.last)
        return tally.last

    def _sized(self, op: Call, timeout: float) -> bool:
        """Whether the call's output limit, at the model's observed speed, takes longer than
        ``timeout``: one client's large request then says nothing about the provider's health,
        and must not open its circuit for everyone (``OutputSpeed.explains``)."""
        return self.limits.speeds.explains(op.model_key, max_output_tokens(op.params), timeout)

    def _lost(self, op: Call, tally: _Tally) -> None:
        """An attempt sent with no reply in time costs its worst case: what its step reserved
        for it (computed when nothing was reserved: no cap and no ledger)."""
        tally.lost += 1
        if op.gate is not None and op.gate.estimate:
            tally.lost_usd += op.gate.estimate
        else:
            tally.lost_usd += self.limits.worst_case(op.model_key, op.messages, op.params)

    @staticmethod
    def _refused(model: ModelConfig, tally: _Tally, refusal: str | None) -> None:
        """A retry whose own reservation was refused ends the call (not an attempt, not a
        provider fault), with the last fault and the refusal as its error."""
        if refusal is None:
            return
        last = tally.last.message if tally.last is not None else "the call failed"
        tally.last = ProviderError(
            f"{last}; not retried: {refusal}",
            provider=model.provider,
            model=model.name,
            retryable=False,
        )
        raise tally.last

    def _failed(self, op: Call, model: ModelConfig, tally: _Tally, exc: ProviderError) -> None:
        """An attempt the provider failed: kept as the last fault, its bill (if any) kept (a
        timeout the SDK reported costs its worst case, as the engine's own), the breaker fed."""
        tally.last = exc
        if exc.billed is not None:
            tally.billed.append(exc.billed)
        if exc.timed_out:
            self._lost(op, tally)
        self._note(model.provider, exc)

    def _timeout(self, op: Call, provider: str, model: str) -> tuple[float, bool]:
        """This attempt's time: ``timeout_s``, or less if the run's deadline comes first.

        The second value says the deadline cut it short: a timeout then says nothing about
        the provider's health and must not count towards its circuit breaker.

        Raises:
            ProviderError: the run's deadline has already passed (not a provider fault).
        """
        full = self.config.providers[provider].timeout_s
        if op.deadline is None:
            return full, False
        left = op.deadline - time.monotonic()
        if left <= 0:
            raise ProviderError(
                f"{provider}: the run's deadline passed before calling {model}",
                provider=provider,
                model=model,
                retryable=False,
            )
        return min(full, left), left < full

    def _gate(self, provider: str, model: str) -> None:
        """Stop retrying into a provider whose circuit opened during this step."""
        breaker = self.limits.breakers.get(provider)
        left = breaker.open_for() if breaker else None
        if left is not None:
            raise ProviderError(
                f"{provider}: circuit open ({left:.1f}s of cool-down left)",
                provider=provider,
                model=model,
                retryable=False,
            )

    def _note(self, provider: str, error: ProviderError | None) -> None:
        """Feed the breaker: a provider fault counts, a request the provider refused does not.

        A 400 (prompt too long) or 404 (a typo in a model name) says nothing about the
        provider's health and must not take it out of service for everyone.
        """
        if error is not None and not (error.retryable or error.status_code is None):
            return
        if self.limits.record(provider, error is None):
            breaker = self.limits.breakers[provider]
            log.warning(
                "cascade.circuit_open",
                provider=provider,
                failures=breaker.failures,
                cooldown_s=breaker.cooldown_s,
            )


_T = TypeVar("_T")


def _within(timeout: float, call: Callable[[], _T]) -> _T:
    """Run a blocking call with a deadline for the whole of it, on a reused call thread
    (``cascade.engine.call_threads``); the caller stops waiting at the deadline.

    Raises:
        TimeoutError: the call did not finish in ``timeout`` seconds.
    """
    return run_within(timeout, call)


async def _awithin(timeout: float, call: Awaitable[_T]) -> _T:
    """Await a call with a deadline for the whole of it (``TimeoutError`` past it).

    ``asyncio.timeout`` (3.11+) cancels in place; ``wait_for`` wraps the call in a task of its
    own, an extra scheduling hop on every call.
    """
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout):
            return await call
    return await asyncio.wait_for(call, timeout)


def _timed_out(provider: str, model: str, timeout: float, cut_short: bool) -> ProviderError:
    why = "the run's deadline" if cut_short else "providers.timeout_s"
    return ProviderError(
        f"{provider}: request to {model} timed out after {timeout:.3g}s ({why})",
        provider=provider,
        model=model,
        # Another try helps after a slow reply, never once the run's time is up.
        retryable=not cut_short,
        timed_out=True,
    )


def _used_up(gate: Gate, model: ModelConfig, tally: _Tally) -> bool:
    """Whether the step's reservation no longer covers another attempt: earlier ones timed out
    or were billed. Never true before a retry, so a call that succeeds at once costs no ledger
    write more."""
    if not (tally.lost or tally.billed):
        return False
    used = tally.lost_usd + bill(tally.billed, model.price)
    return used + gate.estimate > gate.reserved


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
