"""Serving a changed config without a restart: ``SIGHUP`` and ``POST /admin/reload``.

A reload reads the config file again, validates it and builds a new engine, off the event loop.
When any of that fails, the gateway keeps the config it serves, logs ``cascade.reload_failed``
and the endpoint answers with the error (``ConfigError``'s file and key path). Otherwise every
request that arrives from then on gets the new engine; runs already in flight finish on the one
they started on, which is closed once they and their shadow calls are done.

What a reload changes: everything the engine is built from (providers, models and their prices,
tasks, evaluators, retries, budgets, the cache, the task router, and the ledger: a new path is
opened and the old ledger closed after the drain), and the ``server:`` settings read per request
(``allow_params``, ``direct_models``, ``direct_max_cost_usd``, ``max_body_bytes``,
``max_messages``, ``request_timeout_s``, ``feedback_any_run``, ``feedback_rpm``,
``metrics_refresh_s``). API and admin keys are read again from the variables the new config
names; keys, variable or settings given to ``create_app`` explicitly stay as given. A reload
that would leave a gateway that has keys without any is refused. State the engine keeps in
memory (circuit breakers, concurrency slots, shadow skip counts) starts afresh; budgets live in
the ledger and carry over.

What it does not change: ``server.host``, ``server.port``, ``server.client_timeout_s`` and
``server.max_connections`` belong to the listening socket and uvicorn's protocol class. A new
value is reported (``restart_required``, and the warning ``cascade.reload_restart_required``)
and the running one stays until a restart.

With ``cascade serve --workers N`` each worker reloads itself: the supervisor passes ``SIGHUP``
on to every worker, and a worker that reloaded through the endpoint sends ``SIGHUP`` to the
supervisor (``Reloader.fan_out``), so every worker, itself included, reads the file again.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cascade.config import ServerConfig, load_config
from cascade.engine import Cascade
from cascade.errors import CascadeError, ConfigError
from cascade.gateway.drift import DriftGauges
from cascade.gateway.errors import WireJSON, error_response, unauthorized
from cascade.gateway.state import Denied, Gateway, direct_engine, read_api_keys
from cascade.logs import get_logger
from cascade.providers.base import redact
from cascade.providers.sdk import SDKProvider

__all__ = ["RESTART_ONLY", "ReloadOutcome", "Reloader", "admin_reload", "load_sdks"]

log = get_logger()

# server: settings that live in the listening socket or uvicorn's protocol class.
RESTART_ONLY = ("host", "port", "client_timeout_s", "max_connections")


def load_sdks(engine: Cascade) -> None:
    """Import the providers' SDKs now, not on the event loop when the first request comes."""
    for provider in engine.providers.values():
        if isinstance(provider, SDKProvider):
            provider.load_sdk()


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What a reload did: the body of ``POST /admin/reload``'s answer.

    Attributes:
        reloaded: Whether the new config is served now.
        config: The config file read (absolute), or None when the gateway has none.
        generation: Reloads done by this process so far (0: the config it started with).
        error: Why the config was refused (file and key path), when it was.
        restart_required: ``server.*`` keys whose new value waits for a restart.
        workers_signalled: The other ``--workers`` processes were told to reload too.
    """

    reloaded: bool
    config: str | None
    generation: int
    error: str | None = None
    restart_required: tuple[str, ...] = ()
    workers_signalled: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "object": "config.reload",
            "reloaded": self.reloaded,
            "config": self.config,
            "generation": self.generation,
            "error": self.error,
            "restart_required": list(self.restart_required),
            "workers_signalled": self.workers_signalled,
        }


@dataclass(frozen=True, slots=True)
class _Fresh:
    engine: Cascade
    direct: Cascade | None
    settings: ServerConfig
    api_keys: Sequence[str]
    admin_keys: Sequence[str]


class Reloader:
    """Reloads a gateway's config file and retires the engines it replaces.

    Args:
        gateway: The gateway whose engine, settings and keys a reload replaces.
        drift: Its drift gauges (their refresh interval is a setting).
        path: The config file; None when the engine was not built from one (nothing to reload).
        drain_s: At shutdown, how long runs on replaced engines may take before those close.
        owns_first: Close the engine the gateway started with once it is replaced (engines
            a reload builds are always closed by the reloader).
        api_keys, api_keys_env, admin_keys, settings: What ``create_app`` was given
            explicitly: it stays as given; what is None is read from the new config.

    ``fan_out`` is called after a reload through the endpoint succeeded (``--workers``: tell
    the supervisor, so the other workers reload too).
    """

    def __init__(
        self,
        gateway: Gateway,
        drift: DriftGauges,
        *,
        path: str | None,
        drain_s: float,
        owns_first: bool,
        api_keys: Sequence[str] | None = None,
        api_keys_env: str | None = None,
        admin_keys: Sequence[str] | None = None,
        settings: ServerConfig | None = None,
    ):
        self.gateway = gateway
        self.drift = drift
        self.path = os.path.abspath(path) if path else None
        self.drain_s = drain_s
        self.generation = 0
        self.fan_out: Callable[[], None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # set while serving
        self._first = gateway.engine
        self._owns_first = owns_first
        self._given = (api_keys, api_keys_env, admin_keys, settings)
        self._lock = asyncio.Lock()
        self._pending = False
        self._closing = False
        self._background: set[asyncio.Task[ReloadOutcome]] = set()
        self._retiring: set[asyncio.Task[None]] = set()

    def owns(self, engine: Cascade) -> bool:
        """Whether this gateway closes ``engine`` (its ledger too) when done with it."""
        return engine is not self._first or self._owns_first

    def start(self) -> None:
        """Serving begins (the app's start-up): a ``SIGHUP`` that came before is acted on now."""
        self.loop = asyncio.get_running_loop()
        log.info(
            "cascade.serving",
            config=self.path,
            pid=os.getpid(),
            tasks=list(self.gateway.engine.tasks),
        )
        if self._pending:
            self._pending = False
            self._spawn("hangup")

    def hangup(self) -> None:
        """Reload in the background (``SIGHUP``); safe in a signal handler or another thread."""
        loop = self.loop
        if loop is None:
            self._pending = True
            return
        with suppress(RuntimeError):  # the loop closed meanwhile: the gateway is stopping
            loop.call_soon_threadsafe(self._spawn, "hangup")

    def _spawn(self, trigger: str) -> None:
        if self._closing:
            return
        task = asyncio.ensure_future(self.reload(trigger))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def reload(self, trigger: str = "endpoint") -> ReloadOutcome:
        """Read the config file again and serve it, or keep the current one and say why.

        Reloads run one at a time; each reads the file as it is when its turn comes.
        """
        async with self._lock:
            outcome = await self._reload(trigger)
        self.gateway.metrics.reloads.labels("reloaded" if outcome.reloaded else "refused").inc()
        return outcome

    async def _reload(self, trigger: str) -> ReloadOutcome:
        path = self.path
        if path is None:
            return self._refused(trigger, "the gateway was not started from a config file")
        if self._closing:
            return self._refused(trigger, "the gateway is shutting down")
        try:
            fresh = await asyncio.to_thread(self._build, path)
        except CascadeError as exc:
            return self._refused(trigger, str(exc))
        except Exception as exc:  # a bug in building must not stop the gateway serving
            return self._refused(trigger, f"{path}: {type(exc).__name__}: {exc}")
        if self._closing:
            await self._close(fresh.engine)
            return self._refused(trigger, "the gateway is shutting down")
        current = self.gateway.settings
        restart = tuple(
            f"server.{name}"
            for name in RESTART_ONLY
            if getattr(fresh.settings, name) != getattr(current, name)
        )
        settings = fresh.settings.model_copy(
            update={name: getattr(current, name) for name in RESTART_ONLY}
        )
        old = self.gateway.engine
        running = self.gateway.use(
            fresh.engine, fresh.direct, settings, fresh.api_keys, fresh.admin_keys
        )
        self.drift.every_s = settings.metrics_refresh_s
        self.generation += 1
        retiring = asyncio.ensure_future(self._retire(old, running))
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)
        log.info(
            "cascade.reloaded",
            config=path,
            trigger=trigger,
            generation=self.generation,
            pid=os.getpid(),
            tasks=list(fresh.engine.tasks),
            in_flight=len(running),
        )
        if restart:
            log.warning(
                "cascade.reload_restart_required",
                config=path,
                keys=list(restart),
                message="these keep their running values until cascade serve restarts",
            )
        return ReloadOutcome(True, path, self.generation, restart_required=restart)

    def _refused(self, trigger: str, error: str) -> ReloadOutcome:
        error = redact(error)
        log.error(
            "cascade.reload_failed", config=self.path, trigger=trigger, pid=os.getpid(), error=error
        )
        return ReloadOutcome(False, self.path, self.generation, error=error)

    def _build(self, path: str) -> _Fresh:
        """Everything a reload needs, built off the event loop; nothing is served yet."""
        api_keys, api_keys_env, admin_keys, settings = self._given
        config = load_config(path)
        settings = settings or config.server
        if api_keys is None:
            api_keys = read_api_keys(api_keys_env or settings.api_keys_env)
        if admin_keys is None:
            admin_keys = read_api_keys(settings.admin_keys_env)
        if self.gateway.has_keys and not (api_keys or admin_keys or settings.ledger_keys):
            raise ConfigError(
                "no API keys: the variable is unset or empty, or none is named; a gateway "
                "serving with keys keeps them (restart it to serve without)",
                path=path,
                location="server.api_keys_env",
            )
        engine = Cascade(config, path=path)
        try:
            direct = direct_engine(engine, settings)
            load_sdks(engine)
        except BaseException:
            engine.close()
            raise
        return _Fresh(engine, direct, settings, api_keys, admin_keys)

    async def _retire(self, old: Cascade, running: set[asyncio.Task[Any]]) -> None:
        """Close ``old`` once the runs that started on it, and their shadow calls, are done."""
        try:
            if running:
                await asyncio.wait(running)
            await old.shadows.drain(self.drain_s)
        finally:  # also when shutdown stops waiting: the engine is closed, not leaked
            await self._close(old)

    async def _close(self, engine: Cascade) -> None:
        await engine.aclose()
        if self.owns(engine):
            await asyncio.to_thread(engine.close)  # joins the ledger's threads

    async def settled(self) -> None:
        """Wait until every engine a reload replaced is closed (shutdown, tests)."""
        while self._retiring:
            await asyncio.wait(set(self._retiring))

    async def close(self, timeout_s: float) -> None:
        """Refuse reloads from now on, and close the engines replaced so far: their runs get
        ``timeout_s`` to finish (the app's shutdown)."""
        self._closing = True
        self.loop = None
        if self._background:
            await asyncio.wait(set(self._background))
        async with self._lock:  # a reload through the endpoint finishes (refused)
            pass
        if self._retiring:
            _, late = await asyncio.wait(set(self._retiring), timeout=timeout_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)


async def admin_reload(request: Request) -> Response:
    """``POST /admin/reload``: admin keys only (``server.admin_keys_env``); 200 when the new
    config is served, 422 with the reason when it was refused."""
    gateway: Gateway = request.app.state.gateway
    client = await gateway.client(request)
    if isinstance(client, Denied):
        return unauthorized(gateway, client)
    if not client.admin:
        gateway.metrics.error("Forbidden")
        return error_response(
            403,
            "POST /admin/reload needs an admin key (one of the keys in the variable "
            "server.admin_keys_env names)",
            "permission_error",
            "admin_key_required",
            scrub=False,
        )
    reloader: Reloader = request.app.state.reloader
    outcome = await reloader.reload("endpoint")
    if outcome.reloaded and reloader.fan_out is not None:
        reloader.fan_out()
        outcome = replace(outcome, workers_signalled=True)
    return WireJSON(outcome.as_json(), status_code=200 if outcome.reloaded else 422)
