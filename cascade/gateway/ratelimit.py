"""Requests and tokens per minute, across every replica (Redis) or in one process.

The algorithm is GCRA (the generic cell rate algorithm: a token bucket kept as one timestamp).
A scope (key 'a' rpm, task 'faq' tpm...) allows ``limit`` units per window (a minute); each unit
moves the scope's *theoretical arrival time* (TAT) ``window / limit`` later. A request is
admitted when, for every scope it touches, ``max(TAT, now) + cost * step`` is at most one
window ahead of now; then every scope moves, else none does. So a full bucket holds ``limit``
units and refills at ``limit`` per window: over any span of ``t`` seconds a scope admits at most
``limit * (1 + t / window)`` units (the burst of a full bucket plus the refill). That is the
"one window of slack" the docs state; with a frozen clock it is exactly ``limit``.

Settling moves a TAT by a signed number of units: a refund of an over-reservation (never back
before now, so a refund cannot go below an empty bucket), or a charge of usage above it.

- ``RedisLimiter``: one Lua script (``SCRIPT``) does the check and the take of every scope in one
  atomic call, on Redis's clock (``TIME``), so replicas on different hosts agree; redis-py's
  ``register_script`` sends it by EVALSHA (loaded again by itself after a Redis restart).
- ``LocalLimiter``: the same arithmetic (``gcra``) in this process, with an injectable clock.

Both raise nothing but ``RateLimiterUnavailable`` (Redis down or slow); what to do then is the
caller's choice (``limits.redis.on_error``). After a Redis failure, ``RedisLimiter`` raises it at
once for a second, without trying Redis (``redis_client.Outage``, shared with the cache on the
same URL), so a hung Redis costs one ``timeout_s`` a second, not one per command.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from cascade.config import RedisLimiterConfig
from cascade.engine.redis_client import (
    Outage,
    PerLoop,
    async_redis,
    redis_errors,
    redis_url,
    shared_outage,
)
from cascade.errors import RateLimiterUnavailable

__all__ = [
    "SCRIPT",
    "WINDOW_S",
    "Admission",
    "LocalLimiter",
    "RateLimiter",
    "RedisLimiter",
    "Scope",
    "gcra",
]

WINDOW_S = 60.0  # rpm and tpm: per minute
_US = 1_000_000

Kind = Literal["requests", "tokens"]


@dataclass(frozen=True, slots=True)
class Scope:
    """One limit a request is held to, and what it takes from it.

    Attributes:
        key: The scope's storage key (``key:<name>:rpm``, ``task:<task>:tpm``).
        limit: Units per window.
        cost: Units this request takes (when settling: the signed correction).
        label: How messages name it: ``key 'alice' rpm 60``.
        kind: ``requests`` or ``tokens`` (which ``x-ratelimit-*`` headers it feeds).
    """

    key: str
    limit: int
    cost: int
    label: str
    kind: Kind


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer for a request: admitted or not, and each scope's state afterwards.

    Attributes:
        admitted: Every scope had room, and each was taken from.
        retry_after_s: When refused, how long until every scope would have room (else 0).
        ahead_s: Per scope, how far its TAT is ahead of now: the time until its bucket is
            full again (OpenAI's ``x-ratelimit-reset-*``).
    """

    admitted: bool
    retry_after_s: float
    ahead_s: tuple[float, ...]

    def remaining(self, scope: Scope, index: int, window_s: float = WINDOW_S) -> int:
        """Units ``scope`` (at ``index``) could still take now."""
        used = self.ahead_s[index] / window_s * scope.limit
        return max(0, math.floor(scope.limit - used + 1e-9))


def gcra(
    tats: Sequence[float | int | None],
    scopes: Sequence[Scope],
    now: float,
    window: float,
    *,
    settle: bool = False,
) -> tuple[bool, float, list[float]]:
    """The arithmetic both limiters share (the Lua script mirrors it line for line).

    Args:
        tats: Each scope's stored TAT (None: never used, or expired).
        scopes: The scopes, with their costs.
        now: The clock, in the same unit as ``window``.
        window: The window length.
        settle: Move every TAT by its cost (a refund stops at now) instead of checking.

    Returns:
        (admitted, wait until admitted, the TATs to store: the new ones when admitted or
        settling, else the old ones).
    """
    old = [max(t if t is not None else now, now) for t in tats]
    new: list[float] = []
    admitted, wait = True, 0.0
    for tat, scope in zip(old, scopes, strict=True):
        moved = tat + scope.cost * (window / scope.limit)
        if settle:
            moved = max(moved, now)
        elif moved - now > window:
            admitted = False
            wait = max(wait, moved - now - window)
        new.append(moved)
    return admitted, wait, new if admitted or settle else old


class RateLimiter(Protocol):
    """Takes and settles scopes; ``RedisLimiter`` and ``LocalLimiter`` are the two there are."""

    window_s: float

    async def take(self, scopes: Sequence[Scope]) -> Admission:
        """Admit a request against every scope at once, or none.

        Raises:
            RateLimiterUnavailable: the limiter's store cannot be reached.
        """
        ...

    async def settle(self, scopes: Sequence[Scope]) -> None:
        """Move each scope by its (signed) cost, without a check.

        Raises:
            RateLimiterUnavailable: the limiter's store cannot be reached.
        """
        ...

    async def aclose(self) -> None: ...


class LocalLimiter:
    """GCRA in this process: what ``limits:`` without ``redis`` gives (per process).

    Args:
        clock: Seconds (``time.monotonic`` by default; tests inject one).
        window_s: The window (a minute; tests shorten it).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = WINDOW_S):
        self.clock = clock
        self.window_s = window_s
        self._tats: dict[str, int] = {}
        self._lock = threading.Lock()

    async def take(self, scopes: Sequence[Scope]) -> Admission:
        return self._apply(scopes, settle=False)

    async def settle(self, scopes: Sequence[Scope]) -> None:
        self._apply(scopes, settle=True)

    def _apply(self, scopes: Sequence[Scope], *, settle: bool) -> Admission:
        # In whole microseconds, stored rounded, reported rounded up: as the script does, so
        # the two agree to the microsecond (and sums of steps do not drift past a window).
        with self._lock:
            now = round(self.clock() * _US)
            tats = [self._tats.get(s.key) for s in scopes]
            admitted, wait, new = gcra(tats, scopes, now, self.window_s * _US, settle=settle)
            for scope, tat in zip(scopes, new, strict=True):
                if tat > now:
                    self._tats[scope.key] = round(tat)
                else:  # an empty bucket: nothing to keep (bounds the dict)
                    self._tats.pop(scope.key, None)
        ahead = tuple(math.ceil(t - now) / _US for t in new)
        return Admission(admitted, math.ceil(wait) / _US, ahead)

    async def aclose(self) -> None:
        """Nothing to close."""


# The Lua twin of ``gcra``, in microseconds (integers in a double: exact to 2^53). KEYS are the
# scopes' keys; ARGV: now ("" for the server's TIME), the window, "take" or "settle", then a
# limit and a cost per scope. Returns {admitted, wait, ahead_1, ..., ahead_n}, rounded up.
SCRIPT = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local window = tonumber(ARGV[2])
local settle = ARGV[3] == 'settle'
local old, new = {}, {}
local admitted, wait = 1, 0
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local moved = tat + tonumber(ARGV[3 + 2 * i]) * (window / tonumber(ARGV[2 + 2 * i]))
  if settle then
    if moved < now then moved = now end
  elseif moved - now > window then
    admitted = 0
    if moved - now - window > wait then wait = moved - now - window end
  end
  old[i], new[i] = tat, moved
end
local out = {admitted, math.ceil(wait)}
for i = 1, #KEYS do
  local tat = old[i]
  if admitted == 1 or settle then
    tat = new[i]
    if tat > now then
      redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX',
                 math.ceil((tat - now) / 1000) + 1)
    else
      redis.call('DEL', KEYS[i])
    end
  end
  out[#out + 1] = math.ceil(tat - now)
end
return out
"""


class RedisLimiter:
    """GCRA on Redis: one script call per request takes every scope across every replica.

    Args:
        config: ``limits.redis``.
        clock: Seconds; None (the default) uses Redis's own clock, which every replica shares.
        window_s: The window (a minute; tests shorten it).
        path: The config file, for error messages.
        outage: When to skip Redis after a failure (default: the one shared by every user of
            the URL in this process).

    Raises:
        ConfigError: ``limits.redis.url_env`` is unset, or redis is not installed. No
            connection is made here.
    """

    def __init__(
        self,
        config: RedisLimiterConfig,
        *,
        clock: Callable[[], float] | None = None,
        window_s: float = WINDOW_S,
        path: str | None = None,
        outage: Outage | None = None,
    ):
        self.config = config
        self.clock = clock
        self.window_s = window_s
        build = async_redis(config, "limits.redis", path)
        self._clients: PerLoop[tuple[Any, Any]] = PerLoop(lambda: _with_script(build()))
        self._errors = redis_errors()
        self.outage = outage or shared_outage(redis_url(config, "limits.redis", path))

    def __repr__(self) -> str:
        return f"RedisLimiter(url_env={self.config.url_env!r})"

    async def take(self, scopes: Sequence[Scope]) -> Admission:
        return await self._call(scopes, "take")

    async def settle(self, scopes: Sequence[Scope]) -> None:
        await self._call(scopes, "settle")

    async def _call(self, scopes: Sequence[Scope], op: str) -> Admission:
        now = "" if self.clock is None else str(round(self.clock() * _US))
        args: list[Any] = [now, round(self.window_s * _US), op]
        for scope in scopes:
            args += [scope.limit, scope.cost]
        keys = [f"{self.config.prefix}rl:{scope.key}" for scope in scopes]
        last = self.outage.skipped()
        if last is not None:
            raise RateLimiterUnavailable(
                f"rate limiter unavailable: Redis ({self.config.url_env}) failed less than "
                f"{self.outage.window_s:g}s ago ({type(last).__name__}); not tried"
            ) from last
        _, script = self._clients.get()
        try:
            reply = await script(keys=keys, args=args)
        except self._errors as exc:
            self.outage.failed(exc)
            raise RateLimiterUnavailable(
                f"rate limiter unavailable: {type(exc).__name__} from Redis ({self.config.url_env})"
            ) from exc
        self.outage.succeeded()
        return Admission(
            bool(reply[0]), int(reply[1]) / _US, tuple(int(a) / _US for a in reply[2:])
        )

    async def aclose(self) -> None:
        """Close this event loop's connections (call before the loop ends)."""
        made = self._clients.pop()
        if made is not None:
            await made[0].aclose()


def _with_script(client: Any) -> tuple[Any, Any]:
    return client, client.register_script(SCRIPT)
