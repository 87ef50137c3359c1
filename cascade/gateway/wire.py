"""The OpenAI wire format of the gateway: the request body, completions, SSE chunks, errors.

Pure functions over pydantic and the engine's records, with no web framework, so that the
format can be tested on its own and the app module stays about routing.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Collection, Iterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from cascade.config import format_location
from cascade.config.params import check_call_params, check_one_answer
from cascade.errors import RequestError
from cascade.types import CascadeResult

__all__ = [
    "ENGINE_KEYWORDS",
    "ChatRequest",
    "cascade_headers",
    "completion_body",
    "describe_validation",
    "error_body",
    "finish_reason",
    "format_cost",
    "json_bytes",
    "sse_events",
]

# Names that ``Cascade.acomplete`` takes itself; a body field with one of them would not reach the
# provider but change what the engine does (or collide with its positional arguments).
ENGINE_KEYWORDS = frozenset(
    {"task", "prompt", "query_id", "max_cost_usd", "log_content", "deadline_s", "key_id",
     "key_name"}
)
# Fields the gateway consumes; every other declared field is a provider parameter.
_GATEWAY_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "n"})
# A hostile body can be wrong in thousands of places; the answer names this many.
_MAX_PROBLEMS = 20
# Words per streamed chunk: enough chunks to look like a stream, few enough to stay cheap.
_WORDS_PER_CHUNK = 4


class ChatMessage(BaseModel):
    """One message; extra fields (``name``, ``tool_calls``...) are passed on untouched."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool = False


Number = float | int
Json = dict[str, Any]


class ChatRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``: the OpenAI chat parameters, types checked.

    Every parameter the gateway forwards is declared here (``config.params.CHAT_PARAMS`` names
    the same set). Other fields are kept aside and refused by ``params`` unless the operator
    allows them under ``server.allow_params``.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None  # must be 1 (_one_answer)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: Number | None = Field(default=None, ge=0, le=2)
    top_p: Number | None = Field(default=None, ge=0, le=1)
    presence_penalty: Number | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: Number | None = Field(default=None, ge=-2, le=2)
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, Number] | None = None
    response_format: Json | None = None
    tools: list[Json] | None = None
    tool_choice: str | Json | None = None
    parallel_tool_calls: bool | None = None
    functions: list[Json] | None = None
    function_call: str | Json | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    modalities: list[str] | None = None
    audio: Json | None = None
    prediction: Json | None = None
    web_search_options: Json | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    @field_validator("n", mode="before")
    @classmethod
    def _one_answer(cls, value: Any) -> Any:
        # The library's own check, run as the field's validator so that the 400 names n among
        # every other field at fault.
        try:
            check_one_answer(value)
        except RequestError as exc:
            raise PydanticCustomError("one_answer", exc.message) from exc
        return value

    def engine_messages(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]

    def params(self, allow: Collection[str] = ()) -> dict[str, Any]:
        """Provider parameters, with nulls dropped (null means the default).

        The parameters pass the library's own ``check_call_params``: a price-changing
        parameter needs ``allow``, ``extra_body`` may not carry a chat parameter.

        Raises:
            ValueError: a field that is neither a chat parameter nor in ``allow``, or a value
                ``check_call_params`` refuses; the message names it.
        """
        extra = self.model_extra or {}
        unknown = sorted(k for k in extra if k not in allow)
        if unknown:
            raise ValueError(
                f"invalid request body: {', '.join(unknown)}: unknown parameter (the gateway "
                "forwards the OpenAI chat parameters only; an operator can allow others under "
                "server.allow_params)"
            )
        declared = {
            name: getattr(self, name)
            for name in self.model_fields_set
            if name not in _GATEWAY_FIELDS and name in type(self).model_fields
        }
        merged = {**declared, **extra}
        params = {k: v for k, v in merged.items() if v is not None}
        try:
            check_call_params(params, allow)
        except RequestError as exc:
            raise ValueError(f"invalid request body: {exc}") from exc
        return params

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def describe_validation(exc: ValidationError) -> str:
    """The first problem of an invalid body, as ``key.path: what is wrong``."""
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return f"request body is not valid JSON ({first['msg'].removeprefix('Invalid JSON: ')})"
    problems: dict[str, str] = {}
    for error in exc.errors():  # one line per field: a union reports each member's complaint
        where = format_location(tuple(p for p in error["loc"] if not _union_tag(p))) or "body"
        problems.setdefault(where, error["msg"])
    shown = list(problems.items())[:_MAX_PROBLEMS]
    listed = "; ".join(f"{where}: {msg}" for where, msg in shown)
    left = len(problems) - len(shown)
    return f"invalid request body: {listed}" + (f"; {left} more fields" if left else "")


def _union_tag(part: int | str) -> bool:
    """Union members name themselves in pydantic's error locations; users never wrote those."""
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool", "none") or "[" in part or part[:1].isupper()
    )


def format_cost(usd: float) -> str:
    """A plain decimal with 12 places, trailing zeros dropped: never exponent notation."""
    text = f"{usd:.12f}".rstrip("0").rstrip(".")
    return text or "0"


def cascade_headers(result: CascadeResult) -> dict[str, str]:
    """``x-cascade-*``; ``x-cascade-model`` is left out when no model answered."""
    headers = {
        "x-cascade-run-id": result.run_id,
        "x-cascade-accepted": "true" if result.accepted else "false",
        "x-cascade-cost-usd": format_cost(result.cost_usd),
        "x-cascade-steps": str(len(result.steps)),
    }
    if result.model:
        headers["x-cascade-model"] = result.model
    if result.task and not result.task.startswith("__model__"):
        headers["x-cascade-task"] = result.task
    if result.task_probability is not None:
        headers["x-cascade-task-probability"] = f"{result.task_probability:.4f}"
    if result.warnings:
        # Our own text (config key paths, model names), never the upstream's message.
        headers["x-cascade-warnings"] = "; ".join(
            w.message.encode("ascii", "replace").decode() for w in result.warnings
        )
    return headers


def _usage(result: CascadeResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.input_tokens,
        "completion_tokens": result.output_tokens,
        "total_tokens": result.input_tokens + result.output_tokens,
    }


def finish_reason(result: CascadeResult) -> str:
    """The returned answer's own finish reason (``length``, ``tool_calls``...), else ``stop``."""
    if result.tool_calls:
        return "tool_calls"
    return result.finish_reason or "stop"


def _logprobs(result: CascadeResult) -> dict[str, Any] | None:
    return None if result.logprobs is None else {"content": [dict(t) for t in result.logprobs]}


def completion_body(result: CascadeResult, *, created: int | None = None) -> dict[str, Any]:
    """A ``chat.completion``: ``model`` is the answering models: key, usage sums every step.

    An answer that calls tools carries ``tool_calls`` (and ``content: null`` when it has no
    text), as OpenAI sends it.
    """
    message: dict[str, Any] = {"role": "assistant", "content": result.text}
    if result.tool_calls:
        message["content"] = result.text or None
        message["tool_calls"] = [c.as_openai() for c in result.tool_calls]
    return {
        "id": f"chatcmpl-{result.run_id}",
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": result.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": _logprobs(result),
                "finish_reason": finish_reason(result),
            }
        ],
        "usage": _usage(result),
        "system_fingerprint": None,
    }


def json_bytes(body: Any) -> bytes:
    """``body`` as compact UTF-8 JSON, the way ``sse_events`` sends it when UTF-8 cannot.

    A model's answer may hold a lone surrogate (an upstream's JSON escape decodes to one),
    which UTF-8 cannot encode: the body is then sent with every non-ASCII character escaped, as
    the stream always is, rather than failing after the call was paid for.
    """
    try:
        return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()


def split_text(text: str, words: int = _WORDS_PER_CHUNK) -> list[str]:
    """Pieces of a few words each that join back to exactly ``text``."""
    tokens = re.findall(r"\s*\S+|\s+$", text)
    return ["".join(tokens[i : i + words]) for i in range(0, len(tokens), words)] or [text]


def _event(data: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def sse_events(
    result: CascadeResult, *, include_usage: bool, created: int | None = None
) -> Iterator[bytes]:
    """The returned answer as OpenAI ``chat.completion.chunk`` events, ending with ``[DONE]``."""
    base = {
        "id": f"chatcmpl-{result.run_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()) if created is None else created,
        "model": result.model,
        "system_fingerprint": None,
    }
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        return _event(
            {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
                ],
            }
        )

    yield chunk({"role": "assistant", "content": ""})
    if result.text or not result.tool_calls:
        # The answer's token logprobs ride on its first piece: clients concatenate them.
        logprobs = _logprobs(result)
        for piece in split_text(result.text):
            yield chunk({"content": piece}, logprobs=logprobs)
            logprobs = None
    for index, call in enumerate(result.tool_calls):
        # As OpenAI streams a call: id, type and name first, then the arguments text.
        head = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        yield chunk({"tool_calls": [{"index": index, **head}]})
        for piece in split_text(call.arguments):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, finish_reason(result))
    if include_usage:
        yield _event({**base, "choices": [], "usage": _usage(result)})
    yield b"data: [DONE]\n\n"


def error_body(message: str, kind: str, code: str | None) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
