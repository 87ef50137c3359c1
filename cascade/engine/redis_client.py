"""Redis connections for the parts replicas share: the response cache and the rate limiter.

redis-py (the ``[redis]`` extra) speaks the protocol; this module only builds its clients the
same way for both users:

- the URL comes from the variable a ``RedisConfig`` names, read when the engine or gateway
  starts (an unset variable is a ``ConfigError`` naming it), never from the file;
- each command has a short connect and read timeout (``timeout_s``), and redis-py's own retry
  loop (ten tries with backoff by default) is cut to one immediate retry after a connection
  error, and none after a timeout: a Redis that is down must cost a request milliseconds, and
  a hung one at most one ``timeout_s``, not one per try. The retry is what reconnects a pooled
  connection that a restarted Redis closed, so recovery needs no restart of ours;
- after a failure, Redis is skipped for a second (``Outage``), by every user of that URL in
  this process (the limiter and the cache, through ``shared_outage``): each of a request's
  commands (take, cache get and put, settle) would otherwise pay ``timeout_s`` to a hung
  Redis. A skipped command fails at once, as Redis failing would; the first one after the
  second tries Redis again;
- an async client belongs to the event loop that first used it (``PerLoop``), as the SDK
  providers' do.

``Throttled`` logs a failure at most once per interval with the count of those it held back, so
a Redis outage under load does not write a line per request.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from cascade.config import RedisConfig
from cascade.errors import ConfigError
from cascade.formatting import install_hint
from cascade.logs import get_logger
from cascade.providers.base import redact

__all__ = [
    "OUTAGES",
    "Outage",
    "Outages",
    "PerLoop",
    "Throttled",
    "async_redis",
    "redis_errors",
    "redis_url",
    "shared_outage",
    "sync_redis",
]

log = get_logger()

T = TypeVar("T")


def redis_url(config: RedisConfig, location: str, path: str | None = None) -> str:
    """The URL in the variable ``config.url_env`` names.

    Raises:
        ConfigError: the variable is unset or empty (naming it and ``location``, the key path).
    """
    url = os.environ.get(config.url_env, "").strip()
    if not url:
        raise ConfigError(
            f"environment variable {config.url_env} (the Redis URL) is not set",
            path=path,
            location=f"{location}.url_env",
        )
    return url


def _redis_module(location: str, path: str | None) -> Any:
    try:
        import redis
    except ImportError as exc:  # the [redis] extra is optional
        raise ConfigError(
            f"redis is not installed: {install_hint('redis')}", path=path, location=location
        ) from exc
    return redis


def sync_redis(config: RedisConfig, location: str, path: str | None = None) -> Any:
    """A sync ``redis.Redis`` for ``config`` (no connection is made until its first command).

    Raises:
        ConfigError: the URL variable is unset, or redis-py is not installed.
    """
    url = redis_url(config, location, path)
    redis = _redis_module(location, path)
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_timeout=config.timeout_s,
        socket_connect_timeout=config.timeout_s,
        # Not redis-py's default errors, which include timeouts: a hung Redis would cost twice.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        retry_on_timeout=False,
    )


def async_redis(config: RedisConfig, location: str, path: str | None = None) -> Callable[[], Any]:
    """A factory of ``redis.asyncio.Redis`` clients for ``config``, one per event loop (see
    ``PerLoop``); the URL and the extra are checked now.

    Raises:
        ConfigError: the URL variable is unset, or redis-py is not installed.
    """
    url = redis_url(config, location, path)
    _redis_module(location, path)
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    def build() -> Any:
        return Redis.from_url(
            url,
            socket_timeout=config.timeout_s,
            socket_connect_timeout=config.timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            retry_on_timeout=False,
        )

    return build


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis command raises when Redis is down, slow or refuses: caught, never passed on."""
    from redis.exceptions import RedisError

    return (RedisError, OSError, asyncio.TimeoutError)


class Outage:
    """Whether to skip a Redis that failed less than ``window_s`` ago.

    Users call ``skipped`` before a command (a failure back: fail at once with it, without
    trying Redis), then ``failed`` or ``succeeded`` after it. Thread-safe: the sync and the
    async clients of one URL share it.

    Args:
        window_s: How long after a failure Redis is skipped.
        clock: Seconds (``time.monotonic`` by default; tests inject one).
    """

    def __init__(self, window_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self._clock = clock
        self._until: float | None = None
        self._last: BaseException | None = None
        self._lock = threading.Lock()

    def skipped(self) -> BaseException | None:
        """The failure Redis is skipped for, or None when it is to be tried."""
        with self._lock:
            if self._until is None or self._clock() >= self._until:
                return None
            return self._last

    def failed(self, exc: BaseException) -> None:
        """Skip Redis for ``window_s`` from now."""
        with self._lock:
            self._until, self._last = self._clock() + self.window_s, exc

    def succeeded(self) -> None:
        with self._lock:
            self._until = self._last = None


class Outages:
    """One ``Outage`` per Redis URL, shared by the users alive in this process.

    Args:
        window_s: Each ``Outage``'s window.
        clock: Each ``Outage``'s clock (read when it is made).
    """

    def __init__(self, window_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self.clock = clock
        self._by_url: weakref.WeakValueDictionary[str, Outage] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def get(self, url: str) -> Outage:
        with self._lock:
            outage = self._by_url.get(url)
            if outage is None:
                outage = self._by_url[url] = Outage(self.window_s, self.clock)
            return outage


OUTAGES = Outages()


def shared_outage(url: str) -> Outage:
    """The ``Outage`` of ``url``, which every user of that Redis in this process shares."""
    return OUTAGES.get(url)


class PerLoop(Generic[T]):
    """One object per running event loop, built on first use there (``get``); ``pop`` takes
    this loop's out, for closing before the loop ends."""

    def __init__(self, build: Callable[[], T]):
        self._build = build
        self._made: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        made = self._made.get(loop)
        if made is None:
            made = self._made[loop] = self._build()
        return made

    def pop(self) -> T | None:
        return self._made.pop(asyncio.get_running_loop(), None)


class Throttled:
    """A warning logged at most once per ``every_s`` (with how many were held back), and a
    count of every failure (``count``), which metrics read."""

    def __init__(
        self, event: str, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ):
        self.event = event
        self.every_s = every_s
        self.count = 0
        self._clock = clock
        self._last: float | None = None
        self._held = 0
        self._lock = threading.Lock()

    def failed(self, exc: BaseException, **fields: Any) -> None:
        """Count a failure and log it, unless one was logged less than ``every_s`` ago."""
        with self._lock:
            self.count += 1
            now = self._clock()
            if self._last is not None and now - self._last < self.every_s:
                self._held += 1
                return
            held, self._held, self._last = self._held, 0, now
        log.warning(
            self.event, error=redact(f"{type(exc).__name__}: {exc}"), held_back=held, **fields
        )
