"""A circuit breaker per provider: after N faults in a row, skip it for a cool-down."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["CircuitBreaker"]


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
