"""The OpenAI-compatible gateway: any OpenAI SDK client, pointed here, runs through a cascade.

``create_app(engine)`` returns a Starlette (ASGI) app with these routes:

- ``POST /v1/chat/completions``: ``model`` names a task (``faq`` or ``cascade/faq``) or a
  ``models:`` key, called alone. The ladder runs to the end before the first byte is sent, so a
  stream carries only the answer that is returned, never one that was later rejected.
- ``GET /v1/models`` and ``GET /v1/models/{id}``: every task as ``cascade/<task>``, every model key.
- ``POST /v1/feedback``: a score for a run's answer (``cascade.server_feedback``).
- ``GET /healthz``: liveness, without auth. ``GET /metrics``: Prometheus text, with auth.

Each run is a task of its own that a disconnecting client does not cancel, so every step a
request paid for reaches the ledger. ``cascade serve`` lives in ``cascade.server_cli``.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cascade.config import RungConfig, ServerConfig, TaskConfig
from cascade.engine import Cascade
from cascade.errors import (
    BudgetExceeded,
    CascadeError,
    CascadeExhausted,
    ConfigError,
    EvaluatorError,
    LedgerError,
    ProviderError,
    RequestError,
)
from cascade.logs import get_logger
from cascade.providers.base import redact
from cascade.server_feedback import feedback, refresh_drift
from cascade.server_limits import AccessLog, BodyParser, BodyRefused, read_body
from cascade.server_metrics import CONTENT_TYPE_LATEST, GatewayMetrics
from cascade.server_openai import (
    ENGINE_KEYWORDS,
    cascade_headers,
    completion_body,
    error_body,
    sse_events,
)
from cascade.server_serve import bind, freeze_heap, running, url_of, uvicorn_server
from cascade.task_router import AUTO
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

log = get_logger()

# A bare model key runs this one-rung task, so the ledger and metrics show it as a normal run.
MODEL_TASK_PREFIX = "__model__"
# Tells OpenAI's SDKs not to resend: a rerun would pay for a whole ladder again.
_NO_RETRY = {"x-should-retry": "false"}
# The run ends by server.request_timeout_s on its own (it is the run's deadline); this grace
# lets it report how it ended before the gateway gives up waiting and answers 504.
_REQUEST_GRACE_S = 2.0


def read_api_keys(env: str | None) -> tuple[str, ...]:
    """The comma-separated bearer keys in the variable ``env`` (none when unset or empty)."""
    raw = os.environ.get(env, "") if env else ""
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def _direct_engine(engine: Cascade) -> Cascade:
    """An engine whose tasks are one rung per model key, sharing everything else with ``engine``.

    ``Cascade.with_tasks`` shares the providers and their connections, the ledger, budgets,
    breakers, concurrency slots and the retry policy. The user's config object is never changed.
    """
    tasks = {
        f"{MODEL_TASK_PREFIX}{key}": TaskConfig(ladder=[RungConfig(model=key)])
        for key in engine.config.models
    }
    return engine.with_tasks(tasks)


class Gateway:
    """The state behind the routes: engines, keys, metrics and the runs in flight.

    Args:
        engine: The cascade to serve; the gateway closes its async clients on shutdown.
        api_keys: Accepted bearer keys; empty means no auth.
        settings: The limits (``server:`` section); by default the engine config's.
    """

    def __init__(
        self,
        engine: Cascade,
        api_keys: Sequence[str] = (),
        settings: ServerConfig | None = None,
    ):
        self.engine = engine
        self.direct = _direct_engine(engine)
        self._keys = tuple(k.encode() for k in api_keys)
        self.metrics = GatewayMetrics()
        self.inflight: set[asyncio.Task[CascadeResult]] = set()
        configured = getattr(engine.config, "server", None)
        self.settings = settings or (
            configured if isinstance(configured, ServerConfig) else ServerConfig()
        )
        self.parser = BodyParser(self.settings.max_messages)

    def authorized(self, request: Request) -> bool:
        if not self._keys:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        # Compare against every key so the timing does not tell which one nearly matched.
        matches = [hmac.compare_digest(given, key) for key in self._keys]
        return scheme.lower() == "bearer" and any(matches)

    def resolve(self, name: str) -> tuple[Cascade, str] | None:
        """``cascade/X`` is always task X; a bare name is a task if one exists, else a model.

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
        if name in self.engine.config.models:
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
            asyncio.shield(job), self.settings.request_timeout_s + _REQUEST_GRACE_S
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
            status, steps = _failure(exc)
            self.metrics.run(task, status, time.perf_counter() - started, steps)
            self.metrics.error(type(exc).__name__)
            raise
        self.metrics.result(result, time.perf_counter() - started)
        return result

    async def drain(self, timeout_s: float) -> None:
        """Wait for runs whose clients left, so their last steps are recorded before exit."""
        if self.inflight:
            await asyncio.wait(set(self.inflight), timeout=timeout_s)


def _failure(exc: BaseException) -> tuple[str, Sequence[Any]]:
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


# -- responses ------------------------------------------------------------------------------------


def _error(
    status: int,
    message: str,
    kind: str,
    code: str | None,
    headers: Mapping[str, str] | None = None,
    *,
    scrub: bool = True,
) -> JSONResponse:
    text = redact(message) if scrub else message
    return JSONResponse(
        error_body(text, kind, code), status_code=status, headers=dict(headers or {})
    )


def _refuse(
    gateway: Gateway,
    kind: str,
    status: int,
    message: str,
    code: str,
    *,
    scrub: bool = True,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    gateway.metrics.error(kind)
    error_type = "authentication_error" if status == 401 else "invalid_request_error"
    return _error(status, message, error_type, code, headers, scrub=scrub)


def _unauthorized(gateway: Gateway) -> JSONResponse:
    # The gateway's own text, with no secret in it: scrubbing would garble "Bearer <key>".
    return _refuse(
        gateway,
        "Unauthorized",
        401,
        "invalid or missing API key: send 'Authorization: Bearer <key>' with one of "
        "the gateway's keys",
        "invalid_api_key",
        scrub=False,
    )


def _from_exception(exc: Exception) -> JSONResponse:
    """Map an engine error to its HTTP answer; messages are scrubbed of anything key-shaped.

    Every 5xx and the 429 say ``x-should-retry: false``: a retry would rerun a whole ladder.
    When the run got as far as a result, its cascade headers come along, so a client sees what
    the failed request cost.
    """
    headers = dict(_NO_RETRY)
    result = getattr(exc, "result", None)
    if isinstance(result, CascadeResult):
        headers.update(cascade_headers(result))
    if isinstance(exc, RequestError):
        return _error(
            400, f"invalid request body: {exc}", "invalid_request_error", "invalid_request"
        )
    if isinstance(exc, BudgetExceeded):
        return _error(429, str(exc), "budget_error", "budget_exceeded", headers)
    if isinstance(exc, (CascadeExhausted, ProviderError)):
        return _error(502, str(exc), "upstream_error", "cascade_exhausted", headers)
    if isinstance(exc, ConfigError):
        # A missing provider key and the like: the operator's mistake, not the client's.
        return _error(
            500, f"gateway configuration error: {exc}", "server_error", "config_error", headers
        )
    if isinstance(exc, EvaluatorError):
        return _error(500, str(exc), "server_error", "evaluator_error", headers)
    if isinstance(exc, LedgerError):
        # Fail closed: no model is called while the ledger cannot record the call. The client
        # is told what happened, not where the ledger lives; the operator's log says that.
        log.error("cascade.ledger_unavailable", error=str(exc))
        return _error(
            503,
            "ledger unavailable: the gateway cannot record spend, so no (further) model call "
            "was made for this request",
            "server_error",
            "ledger_unavailable",
            headers,
        )
    if isinstance(exc, CascadeError):
        return _error(500, str(exc), "server_error", "cascade_error", headers)
    log.error("cascade.gateway_error", error=redact(repr(exc)))
    return _error(
        500, f"internal error ({type(exc).__name__})", "server_error", "internal_error", headers
    )


async def _stream(result: CascadeResult, include_usage: bool) -> AsyncIterator[bytes]:
    for event in sse_events(result, include_usage=include_usage):
        yield event


# -- routes ---------------------------------------------------------------------------------------


_CLOSE = {"connection": "close"}


async def chat_completions(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    if not gateway.authorized(request):
        return _unauthorized(gateway)
    settings = gateway.settings
    try:
        raw = await read_body(
            request.receive, request.headers, settings.max_body_bytes, settings.client_timeout_s
        )
        body = await gateway.parser.parse(raw)
    except BodyRefused as exc:
        kind = {413: "BodyTooLarge", 408: "SlowClient"}.get(exc.status, "InvalidRequest")
        # The rest of a refused body is not read, so the connection cannot be reused.
        return _refuse(gateway, kind, exc.status, exc.message, "invalid_request", headers=_CLOSE)
    try:
        params = body.params(settings.allow_params)
    except ValueError as exc:
        return _refuse(gateway, "InvalidRequest", 400, str(exc), "invalid_request")
    reserved = sorted(ENGINE_KEYWORDS & params.keys())
    if reserved:
        return _refuse(
            gateway,
            "InvalidRequest",
            400,
            f"invalid request body: {', '.join(reserved)}: reserved by the gateway",
            "invalid_request",
        )
    target = gateway.resolve(body.model)
    if target is None:
        return _refuse(
            gateway,
            "UnknownModel",
            404,
            f"unknown task or model {body.model!r} (GET /v1/models lists them)",
            "model_not_found",
        )
    access = request.scope.setdefault("state", {}).setdefault("access", {})
    access["task"] = target[1]
    try:
        result = await gateway.run(*target, body.engine_messages(), params)
    except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
        gateway.metrics.error("Timeout")
        return _error(
            504,
            f"the run did not end within server.request_timeout_s "
            f"({settings.request_timeout_s:g}s); it is recorded when it does",
            "server_error",
            "timeout",
            _NO_RETRY,
        )
    except Exception as exc:
        failed = getattr(exc, "result", None)
        if isinstance(failed, CascadeResult):
            access.update(model=failed.model or None, cost_usd=failed.cost_usd)
            access["run_id"] = failed.run_id
        return _from_exception(exc)
    access.update(model=result.model, cost_usd=result.cost_usd, run_id=result.run_id)
    headers = cascade_headers(result)
    if body.stream:
        headers["cache-control"] = "no-cache"
        return StreamingResponse(
            _stream(result, body.include_usage), headers=headers, media_type="text/event-stream"
        )
    return JSONResponse(completion_body(result), headers=headers)


def _model_entries(gateway: Gateway) -> list[dict[str, Any]]:
    config = gateway.engine.config
    tasks = [
        {"id": f"cascade/{name}", "object": "model", "created": 0, "owned_by": "cascade"}
        for name in [*config.tasks, *([AUTO] if gateway.engine.task_router else [])]
    ]
    models = [
        {"id": key, "object": "model", "created": 0, "owned_by": model.provider}
        for key, model in config.models.items()
    ]
    return tasks + models


async def list_models(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    if not gateway.authorized(request):
        return _unauthorized(gateway)
    return JSONResponse({"object": "list", "data": _model_entries(gateway)})


async def get_model(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    if not gateway.authorized(request):
        return _unauthorized(gateway)
    name = request.path_params["name"]
    target = gateway.resolve(name)
    if target is None:
        return _refuse(
            gateway, "UnknownModel", 404, f"unknown task or model {name!r}", "model_not_found"
        )
    wanted = f"cascade/{target[1]}" if target[0] is gateway.engine else name
    entry = next(e for e in _model_entries(gateway) if e["id"] == wanted)
    return JSONResponse(entry)


async def _no_route(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer in OpenAI's error shape, which every client parses."""
    status = getattr(exc, "status_code", 404)
    if status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        return _error(405, message, "invalid_request_error", "method_not_allowed")
    message = (
        f"unknown route {request.method} {request.url.path} (the gateway serves "
        "POST /v1/chat/completions, GET /v1/models, GET /healthz and GET /metrics)"
    )
    return _error(404, message, "invalid_request_error", "unknown_route")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    if not gateway.authorized(request):
        return _unauthorized(gateway)
    await refresh_drift(gateway)
    return Response(gateway.metrics.render(), headers={"content-type": CONTENT_TYPE_LATEST})


def create_app(
    engine: Cascade,
    *,
    api_keys_env: str | None = None,
    api_keys: Sequence[str] | None = None,
    drain_s: float = 60.0,
    settings: ServerConfig | None = None,
    close_engine: bool = False,
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
        close_engine: Also close the engine (its ledger) on shutdown: for an app that owns
            its engine, as each worker of ``cascade serve --workers N`` does.

    Returns:
        A Starlette app; ``app.state.gateway`` is its ``Gateway``.

    Raises:
        ConfigError: the config cannot be served (a bad evaluator setting, say).
    """
    if api_keys is None:
        env = api_keys_env or getattr(getattr(engine.config, "server", None), "api_keys_env", None)
        api_keys = read_api_keys(env)
    gateway = Gateway(engine, api_keys, settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await gateway.drain(drain_s)
        await engine.shadows.drain(drain_s)
        await engine.aclose()
        gateway.parser.close()
        if close_engine:
            engine.close()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/feedback", feedback, methods=["POST"]),
            Route("/v1/models/{name:path}", get_model, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
        middleware=[Middleware(AccessLog)],
        exception_handlers={404: _no_route, 405: _no_route},
    )
    app.state.gateway = gateway
    return app
