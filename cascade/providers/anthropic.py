"""Anthropic messages, through the official SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from cascade.errors import RequestError
from cascade.providers.base import empty_answer, validate_usage
from cascade.providers.sdk import SDKProvider, field, request_body
from cascade.tokens import estimate_input_tokens, estimate_output_tokens
from cascade.types import Completion, Message, ToolCall

if TYPE_CHECKING:
    import anthropic  # noqa: F401  (named in the string subscript of the base class)

__all__ = ["AnthropicProvider", "to_anthropic", "tool_choice_to_anthropic", "tools_to_anthropic"]

# The Messages API requires max_tokens; this is used only when neither config nor call sets it.
DEFAULT_MAX_TOKENS = 1024
# OpenAI-style names a caller may use, and what Anthropic calls them.
_RENAMED = {"stop": "stop_sequences", "max_completion_tokens": "max_tokens"}
# Parameters that only make sense for OpenAI and would be rejected here.
_OPENAI_ONLY = frozenset(
    {
        "logprobs",
        "top_logprobs",
        "n",
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "response_format",
        "logit_bias",
        "functions",
        "function_call",
    }
)


# Anthropic's stop reasons in OpenAI's words, so finish_reason means one thing everywhere.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def to_anthropic(messages: Sequence[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    """Split OpenAI-style messages into Anthropic's ``system`` string and turn list.

    An assistant message's ``tool_calls`` become ``tool_use`` blocks, and ``tool`` messages
    become ``tool_result`` blocks of one user turn (Anthropic wants every result of a turn's
    calls together, right after it).
    """
    system = [
        str(m.get("content", "")) for m in messages if m.get("role") in ("system", "developer")
    ]
    turns: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": str(m.get("tool_call_id", "")),
                "content": _text_of(m.get("content")),
            }
            last = turns[-1] if turns else None
            if last and last["role"] == "user" and _is_results(last["content"]):
                last["content"].append(block)
            else:
                turns.append({"role": "user", "content": [block]})
        elif role == "assistant" and m.get("tool_calls"):
            blocks: list[dict[str, Any]] = []
            if m.get("content"):
                blocks.append({"type": "text", "text": _text_of(m.get("content"))})
            for call in m["tool_calls"]:
                function = call.get("function", {})
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id", ""),
                        "name": function.get("name", ""),
                        "input": _arguments(function.get("arguments")),
                    }
                )
            turns.append({"role": "assistant", "content": blocks})
        elif role in ("user", "assistant"):
            turns.append({"role": role, "content": m.get("content", "")})
    return ("\n\n".join(system) if system else None), turns


def tools_to_anthropic(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI ``tools`` (``{"type": "function", "function": {...}}``) as Anthropic tools."""
    out = []
    for tool in tools:
        function = tool.get("function", tool)
        entry = {
            "name": function.get("name", ""),
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            entry["description"] = function["description"]
        out.append(entry)
    return out


def tool_choice_to_anthropic(choice: Any, parallel: bool | None) -> dict[str, Any] | None:
    """``auto``/``required``/``none``/``{"function": {"name"}}`` in Anthropic's terms."""
    mapped: dict[str, Any] | None
    if choice is None:
        mapped = {"type": "auto"} if parallel is False else None
    elif choice == "auto":
        mapped = {"type": "auto"}
    elif choice == "required":
        mapped = {"type": "any"}
    elif choice == "none":
        mapped = {"type": "none"}
    elif isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        mapped = {"type": "tool", "name": name} if name else dict(choice)
    else:
        mapped = None
    if mapped is not None and parallel is False and mapped["type"] != "none":
        mapped["disable_parallel_tool_use"] = True
    return mapped


def _text_of(content: Any) -> Any:
    if content is None:
        return ""
    return content


def _is_results(content: Any) -> bool:
    return isinstance(content, list) and all(
        isinstance(b, Mapping) and b.get("type") == "tool_result" for b in content
    )


def _arguments(raw: Any) -> Any:
    """A tool call's JSON arguments as the object Anthropic wants (text that is not JSON stays)."""
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        parsed = json.loads(raw or "{}")
    except (TypeError, ValueError):
        return {"arguments": raw}
    return parsed if isinstance(parsed, dict) else {"arguments": parsed}


class AnthropicProvider(SDKProvider["anthropic.Anthropic", "anthropic.AsyncAnthropic"]):
    """Calls the Messages endpoint through the official SDK's client, reading the reply's JSON once.

    SDK retries are off: the engine's tenacity layer is the only one. The SDK sends the request
    (auth, ``anthropic-version``, base_url, its error classes); the typed response models are
    skipped (see ``SDKProvider._post``).

    Args:
        name: The ``providers:`` key.
        config: Its settings.
        client: An injected ``anthropic.Anthropic``.
        async_client: An injected ``anthropic.AsyncAnthropic``.
    """

    sdk_module: ClassVar[str] = "anthropic"
    client_name: ClassVar[str] = "Anthropic"
    async_client_name: ClassVar[str] = "AsyncAnthropic"
    supports_logprobs: ClassVar[bool] = False

    def _body(
        self, messages: Sequence[Message], model: str, params: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        system, turns = to_anthropic(messages)
        renamed = {_RENAMED.get(k, k): v for k, v in params.items() if k not in _OPENAI_ONLY}
        renamed.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
        if renamed.get("tools") is not None:
            renamed["tools"] = tools_to_anthropic(renamed["tools"])
        choice = tool_choice_to_anthropic(
            renamed.pop("tool_choice", None), renamed.pop("parallel_tool_calls", None)
        )
        if choice is not None and renamed.get("tools"):
            renamed["tool_choice"] = choice
        fields: dict[str, Any] = {"model": model, "messages": turns}
        if system is not None:
            fields["system"] = system
        return request_body(renamed, **fields)

    def complete(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        params: Mapping[str, Any],
        query_id: str | None = None,
    ) -> Completion:
        body, options = self._body(messages, model, params)
        started = time.perf_counter()
        try:
            reply = self._post("/v1/messages", body, options)
        except RequestError:
            raise  # built by us and refused before sending (RequestError is a ValueError)
        except (self.sdk.AnthropicError, ValueError) as exc:  # ValueError: a 200 not JSON
            raise self._error(exc, model) from exc
        return self._parse(reply, model, (time.perf_counter() - started) * 1000, messages, params)

    async def acomplete(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        params: Mapping[str, Any],
        query_id: str | None = None,
    ) -> Completion:
        body, options = self._body(messages, model, params)
        started = time.perf_counter()
        try:
            reply = await self._apost("/v1/messages", body, options)
        except RequestError:
            raise  # built by us and refused before sending (RequestError is a ValueError)
        except (self.sdk.AnthropicError, ValueError) as exc:  # ValueError: a 200 not JSON
            raise self._error(exc, model) from exc
        return self._parse(reply, model, (time.perf_counter() - started) * 1000, messages, params)

    def _parse(
        self,
        reply: Any,
        model: str,
        latency_ms: float,
        messages: Sequence[Message],
        params: Mapping[str, Any],
    ) -> Completion:
        """Read the message's JSON (a dict, as ``json.loads`` gave it) into a Completion."""
        blocks = field(reply, "content")
        if not isinstance(blocks, list):
            raise empty_answer(self.name, model, "a body that is not a message")
        text = "".join(
            str(field(b, "text") or "") for b in blocks if field(b, "type") == "text"
        )
        calls = tuple(
            ToolCall(
                id=str(field(b, "id") or ""),
                name=str(field(b, "name") or ""),
                arguments=json.dumps(field(b, "input") or {}, ensure_ascii=False),
            )
            for b in blocks
            if field(b, "type") == "tool_use"
        )
        usage = field(reply, "usage")
        counts = validate_usage(
            self.name,
            model,
            {
                "input_tokens": field(usage, "input_tokens"),
                "cache_read_input_tokens": field(usage, "cache_read_input_tokens"),
                "cache_creation_input_tokens": field(usage, "cache_creation_input_tokens"),
                "output_tokens": field(usage, "output_tokens"),
            },
            output="output_tokens",
            messages=messages,
            params=params,
        )
        fresh, answer = counts["input_tokens"], counts["output_tokens"]
        read = counts["cache_read_input_tokens"] or 0
        written = counts["cache_creation_input_tokens"] or 0
        # Anthropic reports cache reads apart from input_tokens; fold them in so that
        # input_tokens means the same thing for every provider. A reply without usage is
        # billed at our (high) estimate, and says so.
        done = Completion(
            text=text,
            provider=self.name,
            input_tokens=(
                estimate_input_tokens(messages, params) if fresh is None else fresh + read + written
            ),
            output_tokens=estimate_output_tokens(text, calls) if answer is None else answer,
            cached_input_tokens=read,
            latency_ms=latency_ms,
            finish_reason=_finish_reason(field(reply, "stop_reason")),
            usage_estimated=fresh is None or answer is None,
            tool_calls=calls,
        )
        if not text.strip() and not calls:
            raise empty_answer(self.name, model, "no text content", done)
        return done


def _finish_reason(stop_reason: Any) -> str | None:
    if stop_reason is None:
        return None
    return FINISH_REASONS.get(str(stop_reason), str(stop_reason))
