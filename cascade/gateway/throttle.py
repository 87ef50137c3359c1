"""The gateway's rate limits per request: which scopes it touches, what it reserves, the 429.

A chat request, once authorized and routed to its task, is held to up to four scopes at once:
its key's ``rpm`` and ``tpm`` (when the key has a name and sets them) and its task's
(``limits.tasks.<task>``). One ``RateLimiter.take`` takes them all or none
(``cascade.gateway.ratelimit``).

Tokens per minute reserve the run's worst case before it starts (``worst_case_tokens``) and
settle to what its steps used when it ends, whether it was answered, failed or timed out.

When the limiter's Redis cannot be reached, ``limits.redis.on_error`` decides: ``closed``
answers 503 ``rate_limiter_unavailable`` (the next request tries Redis again, so service comes
back with Redis, without a restart), ``open`` serves the request unlimited. Either way the
failure is counted (``cascade_rate_limiter_errors_total``) and logged at most every ten seconds.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from cascade.config import LimitsConfig, RedisLimiterConfig, TaskLimitsConfig
from cascade.engine import Cascade
from cascade.engine.ladder import Ladder
from cascade.engine.redis_client import Throttled
from cascade.errors import RateLimiterUnavailable
from cascade.gateway.errors import error_response
from cascade.gateway.metrics import GatewayMetrics
from cascade.gateway.ratelimit import (
    Admission,
    LocalLimiter,
    RateLimiter,
    RedisLimiter,
    Scope,
)
from cascade.gateway.state import Client
from cascade.ledger.money import DEFAULT_MAX_TOKENS
from cascade.tokens import estimate_input_tokens, max_output_tokens
from cascade.types import Message, StepRecord

__all__ = ["RateLimits", "Ticket", "worst_case_tokens"]


def worst_case_tokens(
    engine: Cascade, task: str, messages: Sequence[Message], params: Mapping[str, Any]
) -> int:
    """The most tokens (input + output) a run of ``task`` can use: what tpm reserves.

    Every rung may be called (escalation, hedging), each once plus its evaluators'
    ``repair_attempts``; a call counts the prompt (counted high, as the cost reservation
    does) and the rung's output limit, and each repair also resends the answer before it.
    Transport retries are not counted: a call that failed before an answer used no tokens.
    Judge calls that evaluators make are settled afterwards, not reserved.

    Raises:
        RequestError: the caller asks for more output than some rung allows.
    """
    ladder = engine.tasks[task]
    total = 0
    for rung, bounded in zip(ladder.rungs, Ladder.bounded(ladder, params), strict=True):
        calls = 1 + sum(int(getattr(s.evaluator, "repair_attempts", 0)) for s in rung.slots)
        prompt = estimate_input_tokens(messages, bounded)
        out = max_output_tokens(bounded) or DEFAULT_MAX_TOKENS
        # Call j (0-based) sends the prompt plus j earlier answers and writes one more.
        total += calls * (prompt + out) + out * calls * (calls - 1) // 2
    return total


def used_tokens(steps: Iterable[StepRecord]) -> int:
    """The tokens a run's steps used (cache hits and skipped rungs: none)."""
    return sum(step.input_tokens + step.output_tokens for step in steps)


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted request: the token scopes to settle once the run ends, and the
    ``x-ratelimit-*`` headers of the answer."""

    tokens: tuple[Scope, ...]
    reserved: int
    headers: dict[str, str]


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


def _headers(scopes: Sequence[Scope], admission: Admission, window_s: float) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers: for requests and for tokens, the scope with the least
    room left (the one that will refuse first)."""
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        indexed = [(i, s) for i, s in enumerate(scopes) if s.kind == kind]
        if not indexed:
            continue
        i, scope = min(indexed, key=lambda p: admission.remaining(p[1], p[0], window_s))
        headers[f"x-ratelimit-limit-{kind}"] = str(scope.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(admission.remaining(scope, i, window_s))
        headers[f"x-ratelimit-reset-{kind}"] = _duration(admission.ahead_s[i])
    return headers


def task_limits(limits: LimitsConfig | None) -> Mapping[str, TaskLimitsConfig]:
    return limits.tasks if limits is not None else {}


class RateLimits:
    """The gateway's limiter, and how a request is held to it.

    The task limits are read from the config served at each request, so a reload changes
    them; the limiter (``limits.redis``, or this process) is chosen when the gateway starts.

    Args:
        redis: ``limits.redis`` (None: the limits hold per process).
        metrics: Where refusals and limiter failures are counted.
        path: The config file, for error messages.
        limiter: A limiter to use instead of the one ``redis`` describes (tests, benchmarks).

    Raises:
        ConfigError: ``limits.redis.url_env`` names an unset variable, or redis is missing.
    """

    def __init__(
        self,
        redis: RedisLimiterConfig | None,
        metrics: GatewayMetrics,
        *,
        path: str | None = None,
        limiter: RateLimiter | None = None,
    ):
        self.metrics = metrics
        self.on_error = redis.on_error if redis is not None else "closed"
        if limiter is None:
            limiter = RedisLimiter(redis, path=path) if redis is not None else LocalLimiter()
        self.limiter = limiter
        self.failures = Throttled("cascade.rate_limiter_unavailable")

    @staticmethod
    def active(client: Client, limits: LimitsConfig | None) -> bool:
        """Whether any limit can apply to this client's requests (else nothing is checked)."""
        named = client.name is not None and (client.rpm is not None or client.tpm is not None)
        return named or bool(task_limits(limits))

    @staticmethod
    def scopes(
        client: Client, task: str, tokens: int, limits: LimitsConfig | None = None
    ) -> list[Scope]:
        """The scopes a request of ``client`` to ``task`` touches, with their costs."""
        found: list[Scope] = []
        if client.name is not None:
            who = f"key {client.name!r}"
            if client.rpm is not None:
                found.append(
                    Scope(
                        f"key:{client.name}:rpm",
                        client.rpm,
                        1,
                        f"{who} rpm {client.rpm}",
                        "requests",
                    )
                )
            if client.tpm is not None:
                found.append(
                    Scope(
                        f"key:{client.name}:tpm",
                        client.tpm,
                        tokens,
                        f"{who} tpm {client.tpm}",
                        "tokens",
                    )
                )
        own = task_limits(limits).get(task)
        if own is not None:
            if own.rpm is not None:
                found.append(
                    Scope(
                        f"task:{task}:rpm", own.rpm, 1, f"task {task!r} rpm {own.rpm}", "requests"
                    )
                )
            if own.tpm is not None:
                found.append(
                    Scope(
                        f"task:{task}:tpm",
                        own.tpm,
                        tokens,
                        f"task {task!r} tpm {own.tpm}",
                        "tokens",
                    )
                )
        return found

    async def admit(
        self, client: Client, task: str, tokens: int, limits: LimitsConfig | None = None
    ) -> Ticket | Response:
        """Take the request's scopes (the key's, and ``limits.tasks.<task>``'s): its
        ``Ticket``, or the answer that refuses it (429, or 503 when the limiter is down and
        ``on_error`` is ``closed``)."""
        scopes = self.scopes(client, task, tokens, limits)
        if not scopes:
            return Ticket((), 0, {})
        too_big = [s for s in scopes if s.cost > s.limit]
        if too_big:
            # It would never fit, however long the client waits: not worth a retry.
            self._refused(too_big)
            return error_response(
                429,
                f"rate limit: this request may use up to {tokens} tokens (its worst case), "
                f"more than {too_big[0].label} allows in a minute",
                "tokens",
                "rate_limit_exceeded",
                {"x-should-retry": "false"},
                scrub=False,
            )
        try:
            admission = await self.limiter.take(scopes)
        except RateLimiterUnavailable as exc:
            return self._unavailable(exc)
        window = self.limiter.window_s
        headers = _headers(scopes, admission, window)
        if admission.admitted:
            taken = tuple(s for s in scopes if s.kind == "tokens")
            return Ticket(taken, tokens, headers)
        refusing = [
            s
            for i, s in enumerate(scopes)
            if admission.ahead_s[i] + s.cost * window / s.limit > window
        ] or scopes
        self._refused(refusing)
        wait = max(admission.retry_after_s, 0.001)
        headers["retry-after"] = str(math.ceil(wait))
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        kind = refusing[0].kind
        return error_response(
            429,
            f"rate limit reached for {', '.join(s.label for s in refusing)}: "
            f"retry after {wait:.3g}s",
            kind,
            "rate_limit_exceeded",
            headers,
            scrub=False,
        )

    async def settle(self, ticket: Ticket, steps: Iterable[StepRecord]) -> None:
        """Correct a ticket's token scopes from the worst case to what the run used."""
        if not ticket.tokens:
            return
        delta = used_tokens(steps) - ticket.reserved
        if delta == 0:
            return
        scopes = [Scope(s.key, s.limit, delta, s.label, s.kind) for s in ticket.tokens]
        try:
            await self.limiter.settle(scopes)
        except RateLimiterUnavailable as exc:
            self.metrics.limiter_errors.labels("settle").inc()
            self.failures.failed(exc, op="settle")

    def settler(self, ticket: Ticket) -> Callable[[Sequence[StepRecord]], Awaitable[None]] | None:
        """What settles ``ticket`` once its run ends (None: it took no tokens)."""
        if not ticket.tokens:
            return None

        async def settle(steps: Sequence[StepRecord]) -> None:
            await self.settle(ticket, steps)

        return settle

    def _refused(self, scopes: Sequence[Scope]) -> None:
        self.metrics.error("RateLimited")
        for scope in scopes:
            owner, _, _ = scope.key.partition(":")
            unit = "rpm" if scope.kind == "requests" else "tpm"
            self.metrics.rate_limited.labels(f"{owner}_{unit}").inc()

    def _unavailable(self, exc: RateLimiterUnavailable) -> Ticket | Response:
        outcome = "served" if self.on_error == "open" else "refused"
        self.metrics.limiter_errors.labels(outcome).inc()
        self.failures.failed(exc, on_error=self.on_error)
        if self.on_error == "open":
            return Ticket((), 0, {})
        self.metrics.error("RateLimiterUnavailable")
        return error_response(
            503,
            "rate limiter unavailable: the gateway cannot check this request's rate limits "
            "(limits.redis.on_error: closed)",
            "server_error",
            "rate_limiter_unavailable",
            {"retry-after": "1"},
            scrub=False,
        )

    async def aclose(self) -> None:
        await self.limiter.aclose()
