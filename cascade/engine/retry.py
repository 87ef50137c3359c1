"""The one retry layer: tenacity, driven by ``ProviderError.retryable`` and ``Retry-After``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base

from cascade.config import RetryConfig
from cascade.errors import ProviderError
from cascade.logs import get_logger

__all__ = ["RetryPolicy"]

log = get_logger()


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.retryable


class _WaitRetryAfterOrBackoff:
    """Wait as long as the server asked (bounded by ``max_wait_s``), else back off with jitter."""

    def __init__(self, config: RetryConfig):
        self.max_wait_s = config.max_wait_s
        self.backoff = wait_exponential(
            multiplier=config.initial_wait_s, max=config.max_wait_s
        ) + wait_random(0, config.initial_wait_s)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = getattr(exc, "retry_after_s", None)
        if asked is not None:
            return float(min(asked, self.max_wait_s))
        return float(min(self.backoff(state), self.max_wait_s))


class _MalformedTwice(stop_base):
    """A 200 without a usable answer is retried once, then the rung fails over."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return retry_state.attempt_number >= 2 and bool(getattr(exc, "malformed", False))


class _PastDeadline(stop_base):
    """Stop when the next try could not start before the run's deadline."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        # tenacity computes the wait before it asks the stop condition.
        return time.monotonic() + retry_state.upcoming_sleep >= self.deadline


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "cascade.retry",
        attempt=state.attempt_number,
        wait_s=round(state.upcoming_sleep, 3),
        provider=getattr(exc, "provider", None),
        model=getattr(exc, "model", None),
        status_code=getattr(exc, "status_code", None),
        error=str(exc),
    )


class RetryPolicy:
    """Builds tenacity retryers from the config. ``sleep``/``asleep`` are injectable for tests."""

    def __init__(
        self,
        config: RetryConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        asleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.config = config
        self.sleep = sleep
        self.asleep = asleep

    def _common(self, deadline: float | None) -> dict[str, Any]:
        stops: list[stop_base] = [stop_after_attempt(self.config.attempts), _MalformedTwice()]
        if deadline is not None:
            stops.append(_PastDeadline(deadline))
        return {
            "stop": stop_any(*stops),
            "wait": _WaitRetryAfterOrBackoff(self.config),
            "retry": retry_if_exception(_retryable),
            "before_sleep": _log_retry,
            "reraise": True,
        }

    def retrying(self, deadline: float | None = None) -> Retrying:
        """A sync retryer; ``deadline`` (``time.monotonic()``) stops retries that would pass it."""
        return Retrying(sleep=self.sleep, **self._common(deadline))

    def aretrying(self, deadline: float | None = None) -> AsyncRetrying:
        """The async twin of ``retrying``."""
        return AsyncRetrying(sleep=self.asleep, **self._common(deadline))
