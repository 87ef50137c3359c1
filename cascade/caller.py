"""One model call of a step: concurrency slot, circuit breaker, deadlines and tenacity's retries.

A provider's ``timeout_s`` bounds each attempt as a whole (the SDKs' own timeout only bounds
each read, so an upstream trickling one byte a second could hold a call for ever), and the
run's deadline bounds all attempts together.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from cascade.config import CascadeConfig
from cascade.errors import ProviderError
from cascade.limits import Limits
from cascade.logs import get_logger
from cascade.providers.base import Provider
from cascade.retry import RetryPolicy
from cascade.types import Completion, Message

__all__ = ["Call", "Caller", "Outcome"]

log = get_logger()


@dataclass(frozen=True, slots=True)
class Call:
    """A request to call one ``models:`` key once (with its retries)."""

    model_key: str
    messages: tuple[Message, ...]
    params: Mapping[str, Any]
    query_id: str | None
    deadline: float | None = None  # time.monotonic() by which the run must end


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a call produced: an answer or the error that ended its retries."""

    completion: Completion | None
    error: ProviderError | None
    attempts: int
    latency_ms: float
    billed: tuple[Completion, ...] = ()  # usage of failed attempts that was billed anyway


class Caller:
    """Runs ``Call``s against the configured providers, sync or async."""

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
        if not getattr(provider, "transient_faults", True):
            # A recording never fails transiently, so replay skips the retry machinery.
            try:
                done = provider.complete(
                    op.messages, model=model.name, params=op.params, query_id=op.query_id
                )
            except ProviderError as exc:
                paid = (exc.billed,) if exc.billed is not None else ()
                return Outcome(None, exc, 1, _since(started), paid)
            return Outcome(done, None, 1, _since(started))
        slot = self.limits.sync_slot(model.provider)
        attempts = 0
        last: ProviderError | None = None
        billed: list[Completion] = []
        try:
            for attempt in self.retry.retrying(op.deadline):
                with attempt:
                    self._gate(model.provider, model.name)
                    timeout, cut_short = self._timeout(op, model.provider, model.name)
                    attempts += 1
                    try:
                        with slot or contextlib.nullcontext():
                            completion = _within(
                                timeout,
                                lambda: provider.complete(
                                    op.messages,
                                    model=model.name,
                                    params=op.params,
                                    query_id=op.query_id,
                                ),
                            )
                    except (TimeoutError, asyncio.TimeoutError):  # distinct on 3.10
                        last = _timed_out(model.provider, model.name, timeout, cut_short)
                        if not cut_short:
                            self._note(model.provider, last)
                        raise last from None
                    except ProviderError as exc:
                        last = exc
                        if exc.billed is not None:
                            billed.append(exc.billed)
                        self._note(model.provider, exc)
                        raise
                    self._note(model.provider, None)
        except ProviderError as exc:
            # When the circuit opened mid-step, the fault that opened it is the better story.
            return Outcome(None, last or exc, attempts, _since(started), tuple(billed))
        return Outcome(completion, None, attempts, _since(started), tuple(billed))

    async def acall(self, op: Call) -> Outcome:
        model = self.config.models[op.model_key]
        provider = self.providers[model.provider]
        slot = self.limits.async_slot(model.provider)
        attempts = 0
        last: ProviderError | None = None
        billed: list[Completion] = []
        started = time.perf_counter()
        try:
            async for attempt in self.retry.aretrying(op.deadline):
                with attempt:
                    self._gate(model.provider, model.name)
                    timeout, cut_short = self._timeout(op, model.provider, model.name)
                    attempts += 1
                    try:
                        async with slot or contextlib.nullcontext():
                            completion = await _awithin(
                                timeout,
                                provider.acomplete(
                                    op.messages,
                                    model=model.name,
                                    params=op.params,
                                    query_id=op.query_id,
                                ),
                            )
                    except (TimeoutError, asyncio.TimeoutError):  # distinct on 3.10
                        last = _timed_out(model.provider, model.name, timeout, cut_short)
                        if not cut_short:
                            self._note(model.provider, last)
                        raise last from None
                    except ProviderError as exc:
                        last = exc
                        if exc.billed is not None:
                            billed.append(exc.billed)
                        self._note(model.provider, exc)
                        raise
                    self._note(model.provider, None)
        except ProviderError as exc:
            # When the circuit opened mid-step, the fault that opened it is the better story.
            return Outcome(None, last or exc, attempts, _since(started), tuple(billed))
        return Outcome(completion, None, attempts, _since(started), tuple(billed))

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
    """Run a blocking call with a deadline for the whole of it.

    The SDKs' sync clients offer only per-read timeouts, so the call runs in a thread of its
    own and the caller stops waiting at the deadline. The abandoned thread ends at its next
    read timeout or byte; what it returns is dropped.

    Raises:
        TimeoutError: the call did not finish in ``timeout`` seconds.
    """
    box: dict[str, Any] = {}
    done = threading.Event()
    context = contextvars.copy_context()

    def work() -> None:
        try:
            box["value"] = context.run(call)
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="cascade-call", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    result: _T = box["value"]
    return result


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
    )


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
