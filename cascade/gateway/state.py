"""The state behind the gateway's routes: the engines it serves, keys, metrics, runs in flight."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from cascade.config import RungConfig, ServerConfig, TaskConfig
from cascade.engine import Cascade
from cascade.errors import BudgetExceeded, CascadeExhausted, LedgerError, ProviderError
from cascade.gateway.limits import BodyParser, TokenBuckets
from cascade.gateway.metrics import GatewayMetrics
from cascade.models.task_router import AUTO
from cascade.types import CascadeResult

__all__ = [
    "MODEL_TASK_PREFIX",
    "Client",
    "Gateway",
    "direct_engine",
    "failure",
    "key_id",
    "read_api_keys",
]

# A bare model key runs this one-rung task, so the ledger and metrics show it as a normal run.
MODEL_TASK_PREFIX = "__model__"
# The run ends by server.request_timeout_s on its own (it is the run's deadline); this grace
# lets it report how it ended before the gateway gives up waiting and answers 504.
REQUEST_GRACE_S = 2.0


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
    """Who sent an authorized request: its key's id (None when the gateway has no keys) and
    whether that key is an admin key (``server.admin_keys_env``)."""

    key_id: str | None
    admin: bool = False


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
    """

    def __init__(
        self,
        engine: Cascade,
        api_keys: Sequence[str] = (),
        settings: ServerConfig | None = None,
        admin_keys: Sequence[str] | None = None,
    ):
        configured = getattr(engine.config, "server", None)
        settings = settings or (
            configured if isinstance(configured, ServerConfig) else ServerConfig()
        )
        if admin_keys is None:
            admin_keys = read_api_keys(settings.admin_keys_env)
        self.metrics = GatewayMetrics()
        # Read at each scrape from the engine served then (a reload replaces it).
        self.metrics.count_shadow_skips(lambda: dict(self.engine.shadows.skipped))
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
        self.engine = engine
        self.direct = direct
        self.settings = settings
        self._admin = tuple(k.encode() for k in admin_keys)
        self._keys = tuple(k.encode() for k in api_keys) + self._admin
        self.parser.max_messages = settings.max_messages
        if self.feedback_limit.per_minute != settings.feedback_rpm:
            self.feedback_limit = TokenBuckets(settings.feedback_rpm)
        return running

    @property
    def has_keys(self) -> bool:
        """Whether requests need a key (with none, the gateway serves loopback only)."""
        return bool(self._keys)

    def client(self, request: Request) -> Client | None:
        """The request's sender, or None when its bearer key is missing or wrong."""
        if not self._keys:
            return Client(None)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        # Compare against every key so the timing does not tell which one nearly matched.
        matches = [hmac.compare_digest(given, key) for key in self._keys]
        if scheme.lower() != "bearer" or not any(matches):
            return None
        admin = [hmac.compare_digest(given, key) for key in self._admin]
        return Client(key_id(given), any(admin))

    def is_admin(self, given: bytes) -> bool:
        """Whether ``given`` is one of the admin keys (compared with every one of them)."""
        matches = [hmac.compare_digest(given, key) for key in self._admin]
        return bool(given) and any(matches)

    def authorized(self, request: Request) -> bool:
        return self.client(request) is not None

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
        self, engine: Cascade, task: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> CascadeResult:
        """Run the cascade in a task of its own, so a cancelled request does not cut it short.

        The run's deadline is ``server.request_timeout_s``.

        Raises:
            TimeoutError: the run had not ended shortly after that; it goes on in the background.
        """
        job = asyncio.ensure_future(
            self._run(
                engine, task, messages, {**params, "deadline_s": self.settings.request_timeout_s}
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
        self, engine: Cascade, task: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> CascadeResult:
        started = time.perf_counter()
        try:
            result = await engine.acomplete(task, messages, **params)
        except Exception as exc:
            status, steps = failure(exc)
            self.metrics.run(task, status, time.perf_counter() - started, steps)
            for warning in getattr(getattr(exc, "result", None), "warnings", ()):
                self.metrics.misconfigured.labels(warning.model).inc()
            self.metrics.error(type(exc).__name__)
            raise
        self.metrics.result(result, time.perf_counter() - started)
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
    return "error", steps
