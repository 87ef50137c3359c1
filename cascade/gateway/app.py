"""The OpenAI-compatible gateway: any OpenAI SDK client, pointed here, runs through a cascade.

``create_app(engine)`` returns a Starlette (ASGI) app with these routes:

- ``POST /v1/chat/completions``: ``model`` names a task (``faq`` or ``cascade/faq``) or, when
  ``server.direct_models`` allows it, a ``models:`` key, called alone. The ladder runs to the
  end before the first byte is sent, so a stream carries only the answer that is returned,
  never one that was later rejected.
- ``GET /v1/models`` and ``GET /v1/models/{id}``: every task as ``cascade/<task>``, and the model
  keys that ``server.direct_models`` lets a client call directly.
- ``POST /v1/feedback``: a score for a run's answer (``cascade.gateway.feedback``).
- ``POST /admin/reload``: read the config file again and serve it, admin keys only
  (``cascade.gateway.reload``, which ``SIGHUP`` to ``cascade serve`` runs too).
- ``GET /dashboard``: the HTML page of ``cascade report --html``, live, admin keys only
  (``cascade.gateway.dashboard``), with ``GET /dashboard/plotly.js``, the library it draws with.
- ``GET /healthz``: liveness, without auth. ``GET /metrics``: Prometheus text, with auth; its
  drift gauges are refreshed in the background, at most every ``server.metrics_refresh_s``
  (``cascade.gateway.drift``).

Each run is a task of its own that a disconnecting client does not cancel, so every step a
request paid for reaches the ledger. ``cascade serve`` lives in ``cascade.cli.serve``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cascade.config import ServerConfig
from cascade.engine import Cascade
from cascade.errors import CascadeError, LedgerError, TaskNotAllowed
from cascade.gateway.dashboard import PLOTLY_PATH, Dashboard, dashboard, plotly_js
from cascade.gateway.drift import DriftGauges
from cascade.gateway.errors import (
    NO_RETRY,
    WireJSON,
    error_response,
    from_exception,
    internal_error,
    refuse,
    unauthorized,
)
from cascade.gateway.feedback import feedback
from cascade.gateway.limits import AccessLog, BodyRefused, read_body
from cascade.gateway.metrics import CONTENT_TYPE_LATEST
from cascade.gateway.reload import Reloader, admin_reload, load_sdks
from cascade.gateway.serve import bind, freeze_heap, running, url_of, uvicorn_server
from cascade.gateway.state import MODEL_TASK_PREFIX, Client, Denied, Gateway, read_api_keys
from cascade.gateway.throttle import RateLimits, Ticket, worst_case_tokens
from cascade.gateway.wire import ENGINE_KEYWORDS, cascade_headers, completion_body, sse_events
from cascade.models.task_router import AUTO, pick_task
from cascade.types import CascadeResult

__all__ = [
    "MODEL_TASK_PREFIX",
    "Gateway",
    "bind",
    "create_app",
    "freeze_heap",
    "read_api_keys",
    "running",
    "url_of",
    "uvicorn_server",
]


async def _stream(result: CascadeResult, include_usage: bool) -> AsyncIterator[bytes]:
    for event in sse_events(result, include_usage=include_usage):
        yield event


# -- routes ---------------------------------------------------------------------------------------


_CLOSE = {"connection": "close"}


async def _admit(
    gateway: Gateway,
    limits: RateLimits,
    client: Client,
    engine: Cascade,
    task: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
) -> Ticket | Response | None:
    """Hold the request to its rate limits: its ticket, the answer refusing it, or None when
    no limit applies. ``auto`` is routed here to learn the task; the run routes again (the
    same prompt, the same choice).

    A key limited to some tasks is refused here for any other (a direct model call included)
    before a limit is taken: else its refused requests would use up the rate of tasks it may
    not use, and deny them to the keys that may. The engine checks again after its routing.
    """
    if not limits.active(client, engine.config.limits):
        return None
    try:
        if task == AUTO:
            task, _ = pick_task(task, messages, engine.task_router, engine.tasks, engine.path)
        if client.tasks is not None and task not in client.tasks:
            name = client.name or "?"
            gateway.metrics.run(task, "task_not_allowed", 0.0, (), name)
            return from_exception(TaskNotAllowed(name, task, client.tasks))
        tokens = worst_case_tokens(engine, task, messages, params)
    except CascadeError:
        return None  # the run fails the same way, and says so
    return await limits.admit(client, task, tokens, engine.config.limits)


async def chat_completions(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    client = await gateway.client(request)
    if isinstance(client, Denied):
        return unauthorized(gateway, client)
    settings = gateway.settings
    try:
        raw = await read_body(
            request.receive, request.headers, settings.max_body_bytes, settings.client_timeout_s
        )
        body = await gateway.parser.parse(raw)
    except BodyRefused as exc:
        kind = {413: "BodyTooLarge", 408: "SlowClient"}.get(exc.status, "InvalidRequest")
        # The rest of a refused body is not read, so the connection cannot be reused.
        return refuse(gateway, kind, exc.status, exc.message, "invalid_request", headers=_CLOSE)
    try:
        params = body.params(settings.allow_params)
    except ValueError as exc:
        return refuse(gateway, "InvalidRequest", 400, str(exc), "invalid_request")
    reserved = sorted(ENGINE_KEYWORDS & params.keys())
    if reserved:
        return refuse(
            gateway,
            "InvalidRequest",
            400,
            f"invalid request body: {', '.join(reserved)}: reserved by the gateway",
            "invalid_request",
        )
    target = gateway.resolve(body.model)
    if target is None:
        return refuse(
            gateway,
            "UnknownModel",
            404,
            f"unknown task or model {body.model!r} (GET /v1/models lists them; a models: key "
            "is called directly only when server.direct_models allows it)",
            "model_not_found",
        )
    access = request.scope.setdefault("state", {}).setdefault("access", {})
    access["task"] = target[1]
    messages = body.engine_messages()
    limits: RateLimits = request.app.state.rate_limits
    ticket = await _admit(gateway, limits, client, *target, messages, params)
    if isinstance(ticket, Response):
        return ticket
    settle = limits.settler(ticket) if ticket is not None else None
    try:
        # The run's row names the key that made it: feedback lets a key score only its own.
        # A named key's scope (tasks, budgets) is checked by the engine, after routing.
        params["key_id"] = client.key_id
        if client.scope is not None:
            params["key"] = client.scope
        result = await gateway.run(*target, messages, params, settle)
    except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
        gateway.metrics.error("Timeout")
        return error_response(
            504,
            f"the run did not end within server.request_timeout_s "
            f"({settings.request_timeout_s:g}s); it is recorded when it does",
            "server_error",
            "timeout",
            NO_RETRY,
        )
    except Exception as exc:
        failed = getattr(exc, "result", None)
        if isinstance(failed, CascadeResult):
            access.update(model=failed.model or None, cost_usd=failed.cost_usd)
            access["run_id"] = failed.run_id
        return from_exception(exc)
    access.update(model=result.model, cost_usd=result.cost_usd, run_id=result.run_id)
    headers = cascade_headers(result)
    if ticket is not None:
        headers.update(ticket.headers)
    if body.stream:
        headers["cache-control"] = "no-cache"
        return StreamingResponse(
            _stream(result, body.include_usage), headers=headers, media_type="text/event-stream"
        )
    return WireJSON(completion_body(result), headers=headers)


def _model_entries(gateway: Gateway, client: Client | None = None) -> list[dict[str, Any]]:
    """What the client may call: a key limited to some tasks sees those (and ``auto``, which
    runs only when it picks one of them), and no direct model call (it has no task)."""
    config = gateway.engine.config
    allowed = client.tasks if client is not None else None
    tasks = [
        {"id": f"cascade/{name}", "object": "model", "created": 0, "owned_by": "cascade"}
        for name in [*config.tasks, *([AUTO] if gateway.engine.task_router else [])]
        if allowed is None or name in allowed or name == AUTO
    ]
    models = [
        {"id": key, "object": "model", "created": 0, "owned_by": config.models[key].provider}
        for key in gateway.settings.direct_keys(config.models)
        if allowed is None
    ]
    return tasks + models


async def list_models(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    client = await gateway.client(request)
    if isinstance(client, Denied):
        return unauthorized(gateway, client)
    return JSONResponse({"object": "list", "data": _model_entries(gateway, client)})


async def get_model(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    client = await gateway.client(request)
    if isinstance(client, Denied):
        return unauthorized(gateway, client)
    name = request.path_params["name"]
    target = gateway.resolve(name)
    if target is None:
        return refuse(
            gateway, "UnknownModel", 404, f"unknown task or model {name!r}", "model_not_found"
        )
    wanted = f"cascade/{target[1]}" if target[0] is gateway.engine else name
    entry = next((e for e in _model_entries(gateway, client) if e["id"] == wanted), None)
    if entry is None:  # a task or model this key may not use: as unknown as on the list
        return refuse(
            gateway, "UnknownModel", 404, f"unknown task or model {name!r}", "model_not_found"
        )
    return JSONResponse(entry)


async def _no_route(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer in OpenAI's error shape, which every client parses."""
    status = getattr(exc, "status_code", 404)
    if status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(405, message, "invalid_request_error", "method_not_allowed")
    message = (
        f"unknown route {request.method} {request.url.path} (the gateway serves "
        "POST /v1/chat/completions, GET /v1/models, GET /healthz, GET /metrics and GET /dashboard)"
    )
    return error_response(404, message, "invalid_request_error", "unknown_route")


async def _ledger_down(request: Request, exc: Exception) -> Response:
    """A named key's row could not be read (``Gateway.client``): fail closed, as a refused
    reservation does (503 ``ledger_unavailable``), not as a crash."""
    return from_exception(exc)


async def _crashed(request: Request, exc: Exception) -> Response:
    """A bug's answer is OpenAI-shaped too (Starlette's would be plain text); Starlette then
    re-raises the error, so the server log keeps its traceback."""
    return internal_error(exc)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    client = await gateway.client(request)
    if isinstance(client, Denied):
        return unauthorized(gateway, client)
    if gateway.ledger_keys is not None and not client.admin:
        # With named keys the series carry every key's name, spend and budget: one tenant's
        # key must not read the others'. Scrapers use an admin key (server.admin_keys_env).
        return refuse(
            gateway, "Forbidden", 403,
            "GET /metrics needs an admin key (server.admin_keys_env) when server.ledger_keys "
            "is on: the series name every key and its spend", "admin_key_required",
        )
    request.app.state.drift.poke()  # a refresh, if due, runs behind this answer
    return Response(gateway.metrics.render(), headers={"content-type": CONTENT_TYPE_LATEST})


def create_app(
    engine: Cascade,
    *,
    api_keys_env: str | None = None,
    api_keys: Sequence[str] | None = None,
    drain_s: float = 60.0,
    settings: ServerConfig | None = None,
    close_engine: bool = False,
    admin_keys: Sequence[str] | None = None,
) -> Starlette:
    """Build the gateway app around an engine.

    Args:
        engine: The cascade to serve. The app closes its async clients on shutdown; closing
            the ledger stays with whoever built the engine.
        api_keys_env: The variable holding comma-separated bearer keys; by default the
            config's ``server.api_keys_env``.
        api_keys: The keys themselves, instead of a variable (tests, embedding).
        drain_s: How long shutdown waits for runs whose clients disconnected.
        settings: The gateway's limits; by default the config's ``server:`` section.
        close_engine: Also close the engine (its ledger) on shutdown, or when a reload
            replaces it: for an app that owns its engine, as ``cascade serve`` does.
        admin_keys: Keys that may score any run through ``POST /v1/feedback`` and reload
            the config (``POST /admin/reload``), and are accepted everywhere; by default
            those in ``server.admin_keys_env``'s variable.

    A reload reads ``engine.path`` again (``cascade.gateway.reload``); what is given here
    explicitly (keys, their variable, settings) stays as given across reloads. Engines a
    reload builds belong to the app, which closes them.

    Returns:
        A Starlette app; ``app.state.gateway`` is its ``Gateway``, ``app.state.reloader``
        its ``Reloader`` and ``app.state.rate_limits`` its ``RateLimits``.

    Raises:
        ConfigError: the config cannot be served (a bad evaluator setting, say).
    """
    keys = api_keys
    if keys is None:
        env = api_keys_env or getattr(getattr(engine.config, "server", None), "api_keys_env", None)
        keys = read_api_keys(env)
    gateway = Gateway(engine, keys, settings, admin_keys)
    limits = engine.config.limits
    rate_limits = RateLimits(
        limits.redis if limits is not None else None, gateway.metrics, path=engine.path
    )
    # Read at each scrape from the engine served then (a reload replaces it).
    gateway.metrics.count_cache_errors(
        lambda: gateway.engine.cache.errors if gateway.engine.cache is not None else 0
    )
    load_sdks(engine)
    drift = DriftGauges(gateway, every_s=gateway.settings.metrics_refresh_s)
    reloader = Reloader(
        gateway,
        drift,
        path=engine.path,
        drain_s=drain_s,
        owns_first=close_engine,
        api_keys=api_keys,
        api_keys_env=api_keys_env,
        admin_keys=admin_keys,
        settings=settings,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await drift.start()
        reloader.start()
        yield
        await drift.close()
        await asyncio.to_thread(app.state.dashboard.close)
        await reloader.close(drain_s)  # engines a reload replaced
        last = gateway.engine  # the one served last
        await gateway.drain(drain_s)
        await last.shadows.drain(drain_s)
        await last.aclose()
        gateway.parser.close()
        await app.state.rate_limits.aclose()  # the one served last
        if reloader.owns(last):
            last.close()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/feedback", feedback, methods=["POST"]),
            Route("/v1/models/{name:path}", get_model, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/admin/reload", admin_reload, methods=["POST"]),
            Route("/dashboard", dashboard, methods=["GET"]),
            Route(PLOTLY_PATH, plotly_js, methods=["GET"]),
        ],
        lifespan=lifespan,
        middleware=[Middleware(AccessLog)],
        exception_handlers={
            404: _no_route, 405: _no_route, LedgerError: _ledger_down, Exception: _crashed,
        },
    )
    app.state.gateway = gateway
    app.state.rate_limits = rate_limits
    app.state.drift = drift
    app.state.reloader = reloader
    app.state.dashboard = Dashboard(gateway)
    return app
