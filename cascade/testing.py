"""Public test doubles: a scripted in-process provider and a loopback LLM server.

``MockLLMServer`` speaks the OpenAI chat-completions and Anthropic messages wire formats over
real HTTP on 127.0.0.1, so the official SDKs, their error mapping and the engine's retry layer
are exercised exactly as in production, with no network.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cascade.errors import ProviderError
from cascade.types import Completion, Message

__all__ = ["FakeProvider", "MockLLMServer", "Reply", "make_completion"]


def make_completion(text: str, **fields: Any) -> Completion:
    """A ``Completion`` with sensible usage defaults (10 input tokens, one per output word)."""
    fields.setdefault("input_tokens", 10)
    fields.setdefault("output_tokens", len(text.split()))
    return Completion(text=text, **fields)


class FakeProvider:
    """A provider that answers from a script, per model name, and records every call.

    Each script entry is answer text, a ``Completion``, or an exception to raise.
    The last entry repeats once the script runs out.

    Example::

        FakeProvider("fake", {"small": ["bad", ProviderError("boom", retryable=True)],
                              "large": ["good"]})
    """

    supports_logprobs = True

    def __init__(self, name: str = "fake", script: Mapping[str, Sequence[Any]] | None = None):
        self.name = name
        self._script = {k: deque(v) for k, v in (script or {}).items()}
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _next(self, model: str) -> Any:
        with self._lock:
            queue = self._script.get(model)
            if not queue:
                raise ProviderError(
                    f"{self.name}: no script for model {model!r}",
                    provider=self.name,
                    model=model,
                    status_code=404,
                )
            return queue.popleft() if len(queue) > 1 else queue[0]

    def complete(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        params: Mapping[str, Any],
        query_id: str | None = None,
    ) -> Completion:
        self.calls.append({"model": model, "messages": list(messages), "params": dict(params)})
        item = self._next(model)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Completion):
            return item
        return make_completion(str(item), provider=self.name)

    async def acomplete(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        params: Mapping[str, Any],
        query_id: str | None = None,
    ) -> Completion:
        return self.complete(messages, model=model, params=params, query_id=query_id)


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP reply of ``MockLLMServer``.

    Attributes:
        text: The answer text (ignored when ``body`` is given).
        status: HTTP status; non-200 replies send an error body in the provider's format.
        headers: Extra response headers (``Retry-After``...).
        body: A raw body to send instead of a well-formed one (malformed-response tests).
        input_tokens / output_tokens / cached_tokens: Reported usage.
        logprobs: Token log-probabilities to report when the request asks for them.
        delay_s: Time to wait before answering.
        message: The error message for non-200 replies.
        usage: Sent as the reply's ``usage`` object verbatim, instead of one built from the
            token counts (invalid-usage tests).
        omit_usage: Send no ``usage`` at all.
        trickle_s: Send the body one byte at a time, this many seconds apart (slow upstreams).
        tool_calls: Function calls to answer with, as ``{"id", "name", "arguments"}``
            (``arguments`` a JSON text); Anthropic replies carry them as ``tool_use`` blocks.
        finish_reason: OpenAI's finish reason to report (``length``, ``content_filter``...);
            by default ``tool_calls`` when there are calls, else ``stop``. Anthropic replies
            report the matching ``stop_reason``.
    """

    text: str = "ok"
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | bytes | None = None
    input_tokens: int = 10
    output_tokens: int | None = None
    cached_tokens: int = 0
    logprobs: Sequence[float] | None = None
    delay_s: float = 0.0
    message: str = "scripted error"
    usage: Mapping[str, Any] | None = None
    omit_usage: bool = False
    trickle_s: float = 0.0
    tool_calls: Sequence[Mapping[str, str]] = ()
    finish_reason: str | None = None

    @property
    def finish(self) -> str:
        return self.finish_reason or ("tool_calls" if self.tool_calls else "stop")


# OpenAI finish reasons as Anthropic stop reasons.
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


class MockLLMServer:
    """A loopback HTTP server speaking OpenAI and Anthropic formats, scripted per model name.

    Use as a context manager. ``openai_url`` is the ``base_url`` for an ``openai`` provider and
    ``anthropic_url`` for an ``anthropic`` one. ``requests`` lists what it received.
    """

    def __init__(
        self, responder: Callable[[str, dict[str, Any]], Reply | str] | None = None
    ) -> None:
        """Args:
        responder: Called as ``responder(model, request_body)`` for every request that has
            no scripted reply queued (fault injection, latency); default answers "ok".
        """
        self.responder = responder
        self._script: dict[str, deque[Reply]] = defaultdict(deque)
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.default = Reply()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the body waits ~40 ms
            # for the client's delayed ACK on every keep-alive request.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {}
                server._handle(self, body)

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        # A short poll interval: shutdown() waits for the loop to notice (default 0.5 s).
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, daemon=True, kwargs={"poll_interval": 0.05}
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_url(self) -> str:
        return self.url

    def __enter__(self) -> MockLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def script(self, model: str, replies: Iterable[Reply | str]) -> None:
        """Queue replies for ``model``; the last one repeats once the queue runs out."""
        with self._lock:
            self._script[model].extend(
                r if isinstance(r, Reply) else Reply(text=r) for r in replies
            )

    def calls(self, model: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.requests if model is None or r["body"].get("model") == model]

    def _next(self, model: str) -> Reply:
        with self._lock:
            queue = self._script.get(model)
            if queue:
                return queue.popleft() if len(queue) > 1 else queue[0]
        return self.default

    def _handle(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        anthropic = handler.path.rstrip("/").endswith("/messages")
        model = str(body.get("model", ""))
        with self._lock:
            self.requests.append(
                {"path": handler.path, "headers": dict(handler.headers), "body": body}
            )
        reply = self._next(model)
        if reply is self.default and self.responder is not None:
            chosen = self.responder(model, body)
            reply = chosen if isinstance(chosen, Reply) else Reply(text=chosen)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.body is not None:
            payload = reply.body.encode() if isinstance(reply.body, str) else reply.body
        elif reply.status != 200:
            payload = json.dumps(_error_body(reply, anthropic)).encode()
        else:
            limit = body.get("max_tokens", body.get("max_completion_tokens"))
            document = (
                _anthropic_body(reply, model, limit)
                if anthropic
                else _openai_body(reply, model, bool(body.get("logprobs")), limit)
            )
            if reply.omit_usage:
                document.pop("usage")
            elif reply.usage is not None:
                document["usage"] = dict(reply.usage)
            payload = json.dumps(document).encode()
        handler.send_response(reply.status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(payload)))
        for key, value in reply.headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        if not reply.trickle_s:
            handler.wfile.write(payload)
            return
        for i in range(len(payload)):
            handler.wfile.write(payload[i : i + 1])
            handler.wfile.flush()
            time.sleep(reply.trickle_s)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is part of the tests, not a server fault.
        pass

    # The default backlog of 5 makes hundreds of concurrent clients wait on SYN retransmits.
    request_queue_size = 1024
    daemon_threads = True


def _output_tokens(reply: Reply, limit: Any = None) -> int:
    """The scripted count, else one per word, held to the request's limit as a real server is."""
    if reply.output_tokens is not None:
        return reply.output_tokens
    words = len(reply.text.split())
    return min(words, limit) if isinstance(limit, int) and limit > 0 else words


def _openai_body(
    reply: Reply, model: str, want_logprobs: bool, limit: Any = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.tool_calls:
        message["content"] = reply.text or None
        message["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"]},
            }
            for c in reply.tool_calls
        ]
    choice: dict[str, Any] = {"index": 0, "finish_reason": reply.finish, "message": message}
    if want_logprobs and reply.logprobs is not None:
        choice["logprobs"] = {
            "content": [
                {"token": f"t{i}", "logprob": lp, "bytes": None, "top_logprobs": []}
                for i, lp in enumerate(reply.logprobs)
            ]
        }
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": _output_tokens(reply, limit),
            "total_tokens": reply.input_tokens + _output_tokens(reply, limit),
            "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
        },
    }


def _anthropic_body(reply: Reply, model: str, limit: Any = None) -> dict[str, Any]:
    return {
        "id": "msg_mock",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [
            *([{"type": "text", "text": reply.text}] if reply.text or not reply.tool_calls else []),
            *(
                {
                    "type": "tool_use",
                    "id": c["id"],
                    "name": c["name"],
                    "input": json.loads(c["arguments"]),
                }
                for c in reply.tool_calls
            ),
        ],
        "stop_reason": _STOP_REASONS.get(reply.finish, reply.finish),
        "stop_sequence": None,
        "usage": {
            "input_tokens": reply.input_tokens - reply.cached_tokens,
            "cache_read_input_tokens": reply.cached_tokens,
            "cache_creation_input_tokens": 0,
            "output_tokens": _output_tokens(reply, limit),
        },
    }


def _error_body(reply: Reply, anthropic: bool) -> dict[str, Any]:
    if anthropic:
        kind = {529: "overloaded_error", 429: "rate_limit_error"}.get(reply.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": reply.message}}
    return {"error": {"message": reply.message, "type": "error", "code": str(reply.status)}}
