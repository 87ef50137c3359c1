"""What keeps one gateway client from starving the others: connection, time and size limits.

- ``guarded_protocol``: uvicorn's HTTP protocol with a deadline for a request's headers
  (``server.client_timeout_s``) and a cap on open connections (``server.max_connections``).
  uvicorn calls the app only once the headers are in, so a client that sends them a byte a
  second never reaches it; the cut has to happen here. A connection over the cap gets a 503
  (``/healthz`` still answers) and is closed.
- ``read_body``: the body, cut off at ``server.max_body_bytes`` (413) or when it is not all in
  after ``server.client_timeout_s`` (408), never read whole before it is measured.
- ``BodyParser``: validates the JSON. Parsing holds the GIL, so a thread would not keep the
  event loop free: a body over ``INLINE_PARSE_BYTES`` is parsed in a worker process, and only a
  body within the limits (message count, JSON values) comes back. That process exits when the
  gateway process that started it dies, however it dies.
- ``TokenBuckets``: a request rate per key (``POST /v1/feedback``, ``server.feedback_rpm``).
- ``AccessLog``: one ``cascade.access`` line per request.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pydantic_core
from pydantic import ValidationError

from cascade.gateway.wire import ChatRequest, describe_validation, error_body
from cascade.logs import get_logger

__all__ = [
    "INLINE_PARSE_BYTES",
    "MAX_JSON_VALUES",
    "AccessLog",
    "BodyParser",
    "BodyRefused",
    "TokenBuckets",
    "guarded_protocol",
    "parse_json",
    "read_body",
]

log = get_logger()

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Bodies up to this size are parsed on the event loop: a few milliseconds at worst.
INLINE_PARSE_BYTES = 64 * 1024
# The most JSON values (strings, numbers, objects...) a body may hold: it bounds the work every
# later stage does (the engine, the SDK's request building), whatever the byte count.
MAX_JSON_VALUES = 50_000
# How often the body parser's process checks that the gateway process that started it lives.
PARENT_CHECK_S = 0.5
# How long a connection over the cap may take to say it wants /healthz before it is closed.
_OVER_CAP_GRACE_S = 1.0


class BodyRefused(Exception):
    """A request body the gateway will not take: the HTTP status and the message."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message)  # both in args, so it survives the worker's pickling
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message


# -- the body -------------------------------------------------------------------------------------


async def read_body(receive: Receive, headers: Any, limit: int, timeout_s: float) -> bytes:
    """Read a request body of at most ``limit`` bytes within ``timeout_s``.

    Raises:
        BodyRefused: 413 when it is larger (by its Content-Length or as it arrives), 408 when
            the client is too slow to send it.
    """
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyRefused(413, _too_large(limit))

    async def collect() -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BodyRefused(400, "the client disconnected while sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyRefused(413, _too_large(limit))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    try:
        if sys.version_info >= (3, 11):  # no task of its own, unlike wait_for
            async with asyncio.timeout(timeout_s):
                return await collect()
        return await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError:
        raise BodyRefused(408, f"the request body was not received within {timeout_s:g}s") from None


def _too_large(limit: int) -> str:
    return f"request body is larger than {limit:,} bytes (server.max_body_bytes)"


def parse_json(raw: bytes) -> Any:
    """A small JSON body (``POST /v1/feedback``), parsed as the chat body is: by pydantic's
    parser, which stops at a nesting depth (``json.loads`` recurses until a ``RecursionError``)
    and refuses a lone surrogate (text no backend can store or UTF-8 carry).

    Raises:
        BodyRefused: 400, saying where the text stops being JSON.
    """
    try:
        return pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise BodyRefused(400, f"request body is not valid JSON ({exc})") from None


def _count_values(value: Any) -> int:
    """The number of JSON values in a parsed document, containers included."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        total += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


def parse_chat_request(raw: bytes, max_messages: int) -> ChatRequest | BodyRefused:
    """Validate a body and check its size in messages and JSON values (runs in a worker too)."""
    try:
        body = ChatRequest.model_validate_json(raw)
    except ValidationError as exc:
        return BodyRefused(400, describe_validation(exc))
    if len(body.messages) > max_messages:
        return BodyRefused(
            400,
            f"invalid request body: messages: {len(body.messages):,} messages, more than "
            f"{max_messages:,} (server.max_messages)",
        )
    if len(raw) <= MAX_JSON_VALUES:
        # Every JSON value takes at least one byte of the text, so a body this short cannot
        # hold too many; counting them would cost the hot path a full dump of the body.
        return body
    values = _count_values(body.model_dump(mode="python", exclude_unset=True))
    if values > MAX_JSON_VALUES:
        return BodyRefused(
            400,
            f"invalid request body: {values:,} JSON values, more than {MAX_JSON_VALUES:,}",
        )
    return body


def _parser_process_start(parent: int) -> None:
    """The parser process's set-up: Ctrl-C reaches the whole process group, and the server
    shuts this process down itself; and this process dies with the gateway process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(
        target=_exit_with_parent, args=(parent,), daemon=True, name="cascade-parent-watch"
    ).start()


def _exit_with_parent(parent: int) -> None:
    """Exit once the process that started this one is gone.

    A gateway process killed with SIGKILL cannot shut its pool down, and this process holds
    its own end of the pool's pipes, so it would wait for work for ever, keeping
    multiprocessing's resource tracker (which waits for every holder of its pipe) alive with
    it. A watch on the parent's pid, rather than ``PR_SET_PDEATHSIG``: that signal fires when
    the *thread* that started the process ends, and Linux has it only.
    """
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


class BodyParser:
    """Parses chat requests without holding the event loop for more than a few milliseconds."""

    def __init__(self, max_messages: int):
        self.max_messages = max_messages
        self._pool: ProcessPoolExecutor | None = None

    async def parse(self, raw: bytes) -> ChatRequest:
        """Raises: BodyRefused (400) for an invalid or oversized request."""
        if len(raw) <= INLINE_PARSE_BYTES:
            outcome = parse_chat_request(raw, self.max_messages)
        else:
            loop = asyncio.get_running_loop()
            outcome = await loop.run_in_executor(
                self._executor(), parse_chat_request, raw, self.max_messages
            )
        if isinstance(outcome, BodyRefused):
            raise outcome
        return outcome

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: forking a process that runs threads (uvicorn, the SDKs) is unsafe.
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_parser_process_start,
                initargs=(os.getpid(),),
            )
        return self._pool

    def start(self) -> None:
        """Start the worker process and its imports now, blocking until it is ready.

        ``cascade serve`` calls this before it listens: the worker's start-up takes a core for
        about a second, which the first large body would otherwise compete with.
        """
        self._executor().submit(parse_chat_request, b"{}", 1).result()

    def close(self) -> None:
        if self._pool is not None:
            # Wait for the worker to exit: shutdown(wait=False) leaves concurrent.futures' exit
            # hook writing to a closed pipe ("Exception ignored ... Bad file descriptor").
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# -- request rates --------------------------------------------------------------------------------


class TokenBuckets:
    """A token bucket per key: ``per_minute`` requests a minute, at most ``per_minute`` at once.

    Used on the event loop only, so it needs no lock; it holds one entry per key that was
    authorized, so its size is bounded by the gateway's keys.

    Args:
        per_minute: The rate, and the burst.
        clock: Seconds, monotonic (injected by tests).
    """

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: dict[str | None, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str | None) -> float:
        """Take a token for ``key``: 0.0 when there was one, else the seconds until there is."""
        now, full = self.clock(), float(self.per_minute)
        tokens, when = self._buckets.get(key, (full, now))
        tokens = min(full, tokens + (now - when) * full / 60)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) * 60 / full


# -- connections ----------------------------------------------------------------------------------


async def _over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    import json

    body = json.dumps(
        error_body(
            "too many connections (server.max_connections); try again shortly",
            "server_error",
            "overloaded",
        )
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                (b"retry-after", b"1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def guarded_protocol(base: type[Any], client_timeout_s: float, max_connections: int) -> type[Any]:
    """A subclass of a uvicorn HTTP protocol class with header deadlines and a connection cap.

    A connection gets ``client_timeout_s`` to deliver each request's headers (from its first
    byte, or from the connection's start); idle keep-alive connections are uvicorn's
    ``timeout_keep_alive``. Relies on two attributes both uvicorn protocols have: ``cycle``
    (the request in progress, set once its headers are in) and ``app``.
    """

    class Guarded(base):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._cascade_seen: Any = None
            self._cascade_timer: asyncio.TimerHandle | None = None
            wait = client_timeout_s
            if len(self.server_state.connections) > max_connections:
                app: ASGIApp = self.app  # type: ignore[has-type]

                async def only_healthz(scope: Scope, receive: Receive, send: Send) -> None:
                    if scope.get("path") == "/healthz":
                        await app(scope, receive, send)
                    else:
                        await _over_capacity(scope, receive, send)

                self.app = only_healthz
                wait = min(wait, _OVER_CAP_GRACE_S)
                log.warning("cascade.over_capacity", max_connections=max_connections)
            self._cascade_wait = wait
            self._cascade_arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            cycle = self.cycle
            if cycle is not None and cycle is not self._cascade_seen:
                # This request's headers are in: the body has its own deadline (read_body).
                self._cascade_seen = cycle
                self._cascade_disarm()
            elif cycle is None or cycle.response_complete:
                self._cascade_arm()  # the first bytes of another request on this connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._cascade_disarm()
            super().connection_lost(exc)

        def _cascade_arm(self) -> None:
            if self._cascade_timer is None:
                loop = asyncio.get_running_loop()
                self._cascade_timer = loop.call_later(self._cascade_wait, self._cascade_cut)

        def _cascade_disarm(self) -> None:
            if self._cascade_timer is not None:
                self._cascade_timer.cancel()
                self._cascade_timer = None

        def _cascade_cut(self) -> None:
            self._cascade_timer = None
            cycle = self.cycle
            if cycle is None or (cycle is self._cascade_seen and cycle.response_complete):
                log.warning("cascade.slow_client", client_timeout_s=client_timeout_s)
                self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


def protocol_classes() -> list[type[Any]]:
    """uvicorn's HTTP protocol classes, httptools first when it is installed."""
    classes: list[type[Any]] = []
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        classes.append(HttpToolsProtocol)
    except ImportError:  # pragma: no cover  (uvicorn without [standard])
        pass
    from uvicorn.protocols.http.h11_impl import H11Protocol

    classes.append(H11Protocol)
    return classes


# -- access log -----------------------------------------------------------------------------------


class AccessLog:
    """One ``cascade.access`` event per request: info below 400, warning from 400 on.

    Routes add the run's task, answering model, cost and run id to ``scope["state"]["access"]``.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        status = 500

        async def sending(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            extra = state.get("access") or {}
            fields = {
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status,
                "task": extra.get("task"),
                "model": extra.get("model"),
                "cost_usd": extra.get("cost_usd"),
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                "run_id": extra.get("run_id"),
            }
            if extra.get("key") is not None:  # a named key's name, never the key
                fields["key"] = extra["key"]
            if status >= 400:
                log.warning("cascade.access", **fields)
            else:
                log.info("cascade.access", **fields)
