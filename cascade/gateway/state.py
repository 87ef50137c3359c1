"""The state behind the gateway's routes: the engines it serves, keys, metrics, runs in flight."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from cascade.config import RungConfig, ServerConfig, TaskConfig
from cascade.engine import Cascade
from cascade.engine.savings import always_top
from cascade.errors import (
    BudgetExceeded,
    CascadeExhausted,
    ConfigError,
    LedgerError,
    ProviderError,
    TaskNotAllowed,
)
from cascade.gateway.keys import Denied, LedgerKeys
from cascade.gateway.limits import BodyParser, TokenBuckets
from cascade.gateway.metrics import GatewayMetrics
from cascade.ledger.keys import PREFIX, KeyScope
from cascade.models.task_router import AUTO
from cascade.types import CascadeResult, StepRecord

__all__ = [
    "MODEL_TASK_PREFIX",
    "Client",
    "Denied",
    "Gateway",
    "OnEnd",
    "direct_engine",
    "failure",
    "key_id",
    "read_api_keys",
]

# What the gateway runs when a run ends, with its steps (rate limits settle tokens).
OnEnd = Callable[[Sequence[StepRecord]], Awaitable[None]]
# A bare model key runs this one-rung task, so the ledger and metrics show it as a normal run.
MODEL_TASK_PREFIX = "__model__"
# The run ends by server.request_timeout_s on its own (it is the run's deadline); this grace
# lets it report how it ended before the gateway gives up waiting and answers 504.
REQUEST_GRACE_S = 2.0
# Above this many ledger keys at startup, /metrics series carry no key label by default.
MAX_KEY_LABELS = 100


def read_api_keys(env: str | None) -> tuple[str, ...]:
    """The comma-separated bearer keys in the variable ``env`` (none when unset or empty)."""
    raw = os.environ.get(env, "") if env else ""
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def key_id(key: bytes) -> str:
    """The opaque id of a bearer key, stored on the runs it makes (``runs.key_id``).

    The first 16 hex digits of SHA-256 over a fixed label and the key: the same key has the same
    id in every worker and after a restart, and the id does not give the key back. A guessable
    key could be confirmed by hashing guesses, as with any hash; gateway keys should be random.
    """
    return hashlib.sha256(b"cascade-ladder gateway key id\0" + key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Client:
    """Who sent an authorized request: its key's id (None when the gateway has no keys),
    whether that key is an admin key (``server.admin_keys_env``), and for a named ledger key
    (``cascade keys``) its name, tasks (None: all), requests and tokens per minute, and what
    the engine holds the run to (``scope``: name, tasks, budgets)."""

    key_id: str | None
    admin: bool = False
    name: str | None = None
    tasks: frozenset[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    scope: KeyScope | None = None


def direct_engine(engine: Cascade, settings: ServerConfig) -> Cascade | None:
    """An engine whose tasks are one rung per model key that ``server.direct_models`` allows,
    each capped at ``server.direct_max_cost_usd``; None when it allows none.

    ``Cascade.with_tasks`` shares the providers and their connections, the ledger, global
    budgets, breakers, concurrency slots and the retry policy. The user's config object is never
    changed.
    """
    keys = settings.direct_keys(engine.config.models)
    if not keys:
        return None
    tasks = {
        f"{MODEL_TASK_PREFIX}{key}": TaskConfig(
            ladder=[RungConfig(model=key)], max_cost_usd=settings.direct_max_cost_usd
        )
        for key in keys
    }
    return engine.with_tasks(tasks)


class Gateway:
    """The state behind the routes: engines, keys, metrics and the runs in flight.

    Args:
        engine: The cascade to serve; the gateway closes its async clients on shutdown.
        api_keys: Accepted bearer keys; empty (with no admin keys) means no auth.
        settings: The limits (``server:`` section); by default the engine config's.
        admin_keys: Keys that are accepted too and may score any run; by default those in
            the variable ``settings.admin_keys_env`` names.
        key_clock: Monotonic seconds for the named keys' cache (tests).

    Raises:
        ConfigError: ``server.ledger_keys`` is on and the engine has no ledger.
    """

    def __init__(
        self,
        engine: Cascade,
        api_keys: Sequence[str] = (),
        settings: ServerConfig | None = None,
        admin_keys: Sequence[str] | None = None,
        key_clock: Callable[[], float] = time.monotonic,
    ):
        configured = getattr(engine.config, "server", None)
        settings = settings or (
            configured if isinstance(configured, ServerConfig) else ServerConfig()
        )
        if admin_keys is None:
            admin_keys = read_api_keys(settings.admin_keys_env)
        self.key_clock = key_clock
        self.ledger_keys: LedgerKeys | None = None
        self.use_keys(engine, settings)
        labels = settings.metrics_key_labels
        if labels is None:
            labels = (self.ledger_keys is not None
                      and self.ledger_keys.count() < MAX_KEY_LABELS)
        self.metrics = GatewayMetrics(key_labels=labels)
        # Read at each scrape from the engine served then (a reload replaces it).
        self.metrics.count_shadow_skips(lambda: dict(self.engine.shadows.skipped))
        self.metrics.count_breakers(
            lambda: {name: b.open_for() for name, b in self.engine.limits.breakers.items()}
        )
        self.inflight: set[asyncio.Task[CascadeResult]] = set()
        self.parser = BodyParser(settings.max_messages)
        self.feedback_limit = TokenBuckets(settings.feedback_rpm)
        self.use(engine, direct_engine(engine, settings), settings, api_keys, admin_keys)

    def use(
        self,
        engine: Cascade,
        direct: Cascade | None,
        settings: ServerConfig,
        api_keys: Sequence[str],
        admin_keys: Sequence[str],
    ) -> set[asyncio.Task[CascadeResult]]:
        """Serve ``engine`` (``direct``: its ``direct_engine``) under ``settings`` and these
        keys from now on: requests that arrive later see them (``cascade.gateway.reload``).

        Returns:
            The runs in flight now: they go on with the engine they started on.
        """
        running = set(self.inflight)
        self.use_keys(engine, settings)
        self.engine = engine
        self.direct = direct
        self.settings = settings
        self._admin = tuple(k.encode() for k in admin_keys)
        self._keys = tuple(k.encode() for k in api_keys) + self._admin
        self.parser.max_messages = settings.max_messages
        if self.feedback_limit.per_minute != settings.feedback_rpm:
            self.feedback_limit = TokenBuckets(settings.feedback_rpm)
        return running

    def use_keys(self, engine: Cascade, settings: ServerConfig) -> None:
        """Look named keys up in ``engine``'s ledger when ``server.ledger_keys`` is on."""
        if not settings.ledger_keys:
            self.ledger_keys = None
            return
        if engine.ledger is None:
            raise ConfigError(
                "named keys live in the ledger; set ledger.path or ledger.url_env, or turn "
                "server.ledger_keys off",
                path=engine.path,
                location="server.ledger_keys",
            )
        if self.ledger_keys is None or self.ledger_keys.ledger is not engine.ledger:
            self.ledger_keys = LedgerKeys(engine.ledger, clock=self.key_clock)
        self.ledger_keys.ttl_s = settings.key_cache_s

    @property
    def has_keys(self) -> bool:
        """Whether requests need a key (with none, the gateway serves loopback only)."""
        return bool(self._keys) or self.ledger_keys is not None

    async def client(self, request: Request) -> Client | Denied:
        """The request's sender, or why its bearer key is refused (missing, wrong, revoked,
        expired): ``server.api_keys_env`` and admin keys first, then the ledger's named keys.

        Raises:
            LedgerError: a named key's row could not be read.
        """
        if not self.has_keys:
            return Client(None)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Denied("missing")
        given = token.strip().encode()
        # Compare against every key so the timing does not tell which one nearly matched.
        matches = [hmac.compare_digest(given, key) for key in self._keys]
        if any(matches):
            admin = [hmac.compare_digest(given, key) for key in self._admin]
            return Client(key_id(given), any(admin))
        if self.ledger_keys is None or not token.strip().startswith(PREFIX):
            return Denied("unknown")
        found = await self.ledger_keys.lookup(token.strip())
        if found.name is not None:  # the access log names the key (never shows it)
            request.scope.setdefault("state", {}).setdefault("access", {})["key"] = found.name
        if isinstance(found, Denied):
            return found
        return Client(key_id(given), False, found.name, found.tasks, found.rpm, found.tpm,
                      found.scope)

    def is_admin(self, given: bytes) -> bool:
        """Whether ``given`` is one of the admin keys (compared with every one of them)."""
        matches = [hmac.compare_digest(given, key) for key in self._admin]
        return bool(given) and any(matches)

    def resolve(self, name: str) -> tuple[Cascade, str] | None:
        """``cascade/X`` is always task X; a bare name is a task if one exists, else a model
        that ``server.direct_models`` allows (any other model key is unknown, as on the list).

        ``auto`` (or ``cascade/auto``) lets the task router pick the task, when one is fitted.
        """
        if (name in (AUTO, f"cascade/{AUTO}") and AUTO not in self.engine.tasks
                and self.engine.task_router is not None):
            return self.engine, AUTO
        if name.startswith("cascade/"):
            task = name.removeprefix("cascade/")
            return (self.engine, task) if task in self.engine.tasks else None
        if name in self.engine.tasks:
            return self.engine, name
        if self.direct is not None and MODEL_TASK_PREFIX + name in self.direct.tasks:
            return self.direct, MODEL_TASK_PREFIX + name
        return None

    async def run(
        self,
        engine: Cascade,
        task: str,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        on_end: OnEnd | None = None,
    ) -> CascadeResult:
        """Run the cascade in a task of its own, so a cancelled request does not cut it short.

        The run's deadline is ``server.request_timeout_s``. ``on_end`` gets the run's steps
        when it ends, however it ends, even after the client left (rate limits settle then).

        Raises:
            TimeoutError: the run had not ended shortly after that; it goes on in the background.
        """
        job = asyncio.ensure_future(
            self._run(
                engine, task, messages, {**params, "deadline_s": self.settings.request_timeout_s},
                on_end,
            )
        )
        self.inflight.add(job)
        job.add_done_callback(self._done)
        return await asyncio.wait_for(
            asyncio.shield(job), self.settings.request_timeout_s + REQUEST_GRACE_S
        )

    def _done(self, job: asyncio.Task[CascadeResult]) -> None:
        self.inflight.discard(job)
        if not job.cancelled():
            job.exception()  # retrieved, so an abandoned failure is not reported as lost

    async def _run(
        self,
        engine: Cascade,
        task: str,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        on_end: OnEnd | None = None,
    ) -> CascadeResult:
        started = time.perf_counter()
        scope = params.get("key")
        key = scope.name if isinstance(scope, KeyScope) else ""
        try:
            result = await engine.acomplete(task, messages, **params)
        except Exception as exc:
            status, steps = failure(exc)
            self.metrics.run(task, status, time.perf_counter() - started, steps, key)
            for warning in getattr(getattr(exc, "result", None), "warnings", ()):
                self.metrics.misconfigured.labels(warning.model).inc()
            self.metrics.error(type(exc).__name__)
            if on_end is not None:
                await on_end(steps)
            raise
        self.metrics.result(
            result, time.perf_counter() - started, key, always_top(engine.config, result)
        )
        if on_end is not None:  # a cancelled run (shutdown) keeps its reservation
            await on_end(result.steps)
        return result

    async def drain(self, timeout_s: float) -> None:
        """Wait for runs whose clients left, so their last steps are recorded before exit."""
        if self.inflight:
            await asyncio.wait(set(self.inflight), timeout=timeout_s)


def failure(exc: BaseException) -> tuple[str, Sequence[Any]]:
    result = getattr(exc, "result", None)
    steps = result.steps if result is not None else ()
    if isinstance(exc, BudgetExceeded):
        return "budget_exceeded", steps
    if isinstance(exc, CascadeExhausted):
        return "exhausted", steps
    if isinstance(exc, ProviderError):
        return "no_answer", steps
    if isinstance(exc, LedgerError):
        return "ledger_unavailable", steps
    if isinstance(exc, TaskNotAllowed):
        return "task_not_allowed", steps
    return "error", steps
