"""A circuit breaker per provider: after N faults in a row, skip it for a cool-down; and each
model's observed output speed, which tells a slow provider from a request too large for its
deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cascade.types import Completion

__all__ = ["CircuitBreaker", "OutputSpeed"]


class CircuitBreaker:
    """Counts consecutive failed attempts; opens at ``failures`` and stays open ``cooldown_s``.

    Once the cool-down has passed, calls are let through again; the first failure after that
    reopens it at once (half-open), the first success closes it.
    """

    def __init__(
        self, failures: int, cooldown_s: float, *, clock: Callable[[], float] = time.monotonic
    ):
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._lock = threading.Lock()
        self._streak = 0
        self._open_until: float | None = None

    def open_for(self) -> float | None:
        """Seconds left while open, else None (calls may go through)."""
        with self._lock:
            if self._open_until is None:
                return None
            left = self._open_until - self.clock()
            return left if left > 0 else None

    def success(self) -> None:
        with self._lock:
            self._streak = 0
            self._open_until = None

    def failure(self) -> bool:
        """Record a fault; return True when this fault opened the circuit."""
        with self._lock:
            half_open = self._open_until is not None
            self._streak += 1
            if half_open or self._streak >= self.failures:
                self._open_until = self.clock() + self.cooldown_s
                self._streak = 0
                return True
            return False


class OutputSpeed:
    """Each model's observed output speed, in tokens per second, from the calls that answered.

    Two exponentially weighted averages per model, of the output tokens and of the seconds of
    an answer; the speed is their ratio, so one answer of a few tokens (nearly all latency)
    moves the estimate by its weight rather than setting it to its own ratio.

    Args:
        weight: The weight of the newest answer in each average.
    """

    def __init__(self, weight: float = 0.2):
        self.weight = weight
        self._lock = threading.Lock()
        self._averages: dict[str, tuple[float, float]] = {}  # model key -> (tokens, seconds)

    def observe(self, model: str, completion: Completion) -> None:
        """Learn from an answer; one without real usage or time says nothing and is skipped."""
        tokens, seconds = completion.output_tokens, completion.latency_ms / 1000
        if completion.usage_estimated or tokens <= 0 or seconds <= 0:
            return
        with self._lock:
            last = self._averages.get(model)
            if last is None:
                self._averages[model] = (tokens, seconds)
            else:
                w = self.weight
                self._averages[model] = (
                    (1 - w) * last[0] + w * tokens, (1 - w) * last[1] + w * seconds
                )

    def tokens_per_s(self, model: str) -> float | None:
        """The model's observed speed, or None before it has answered once."""
        with self._lock:
            averages = self._averages.get(model)
        return None if averages is None else averages[0] / averages[1]

    def explains(self, model: str, max_tokens: int | None, timeout_s: float) -> bool:
        """Whether a timeout is the request's own doing: at the model's observed speed,
        ``max_tokens`` take longer than ``timeout_s``.

        Without an observation (the model has not answered yet in this process) or an output
        limit, the answer is False: the timeout counts as a provider fault, as a provider that
        has never answered may well be down, and the breaker exists to find that out.
        """
        speed = self.tokens_per_s(model)
        if speed is None or max_tokens is None:
            return False
        return max_tokens / speed > timeout_s
