"""Anthropic messages, through the official SDK."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, ClassVar

import anthropic

from cascade.providers.base import empty_answer, split_params, untransformed, validate_usage
from cascade.providers.sdk import SDKProvider
from cascade.tokens import estimate_input_tokens, estimate_output_tokens
from cascade.types import Completion, Message

__all__ = ["AnthropicProvider", "to_anthropic"]

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
    }
)


def to_anthropic(messages: Sequence[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    """Split OpenAI-style messages into Anthropic's ``system`` string and turn list."""
    system = [
        str(m.get("content", "")) for m in messages if m.get("role") in ("system", "developer")
    ]
    turns = [
        {"role": m["role"], "content": m.get("content", "")}
        for m in messages
        if m.get("role") in ("user", "assistant")
    ]
    return ("\n\n".join(system) if system else None), turns


class AnthropicProvider(SDKProvider[anthropic.Anthropic, anthropic.AsyncAnthropic]):
    """Calls ``messages.create``; SDK retries are off: the engine's tenacity layer is the only one.

    Args:
        name: The ``providers:`` key.
        config: Its settings.
        client: An injected ``anthropic.Anthropic``.
        async_client: An injected ``anthropic.AsyncAnthropic``.
    """

    sdk: ClassVar[ModuleType] = anthropic
    client_class = anthropic.Anthropic
    async_client_class = anthropic.AsyncAnthropic
    supports_logprobs: ClassVar[bool] = False

    def _kwargs(
        self, method: Any, messages: Sequence[Message], model: str, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        system, turns = to_anthropic(messages)
        renamed = {_RENAMED.get(k, k): v for k, v in params.items() if k not in _OPENAI_ONLY}
        renamed.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
        kwargs = split_params(method, renamed)
        kwargs["model"] = model
        untransformed(kwargs, "messages", turns)
        if system is not None:
            kwargs["system"] = system
        return kwargs

    def complete(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        params: Mapping[str, Any],
        query_id: str | None = None,
    ) -> Completion:
        client = self.client
        kwargs = self._kwargs(client.messages.create, messages, model, params)
        started = time.perf_counter()
        try:
            response = client.messages.create(**kwargs)
        except (
            anthropic.AnthropicError,
            ValueError,
        ) as exc:  # ValueError: a 200 whose body is not JSON
            raise self._error(exc, model) from exc
        return self._parse(
            response, model, (time.perf_counter() - started) * 1000, messages, params
        )

    async def acomplete(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        params: Mapping[str, Any],
        query_id: str | None = None,
    ) -> Completion:
        client = self.async_client
        kwargs = self._kwargs(client.messages.create, messages, model, params)
        started = time.perf_counter()
        try:
            response = await client.messages.create(**kwargs)
        except (
            anthropic.AnthropicError,
            ValueError,
        ) as exc:  # ValueError: a 200 whose body is not JSON
            raise self._error(exc, model) from exc
        return self._parse(
            response, model, (time.perf_counter() - started) * 1000, messages, params
        )

    def _parse(
        self,
        response: Any,
        model: str,
        latency_ms: float,
        messages: Sequence[Message],
        params: Mapping[str, Any],
    ) -> Completion:
        blocks = getattr(response, "content", None)
        if isinstance(response, (str, bytes)) or blocks is None:
            raise empty_answer(self.name, model, "a body that is not a message")
        text = "".join(
            getattr(b, "text", "") or "" for b in blocks if getattr(b, "type", None) == "text"
        )
        usage = getattr(response, "usage", None)
        counts = validate_usage(
            self.name,
            model,
            {
                "input_tokens": getattr(usage, "input_tokens", None),
                "cache_read_input_tokens": getattr(usage, "cache_read_input_tokens", None),
                "cache_creation_input_tokens": getattr(usage, "cache_creation_input_tokens", None),
                "output_tokens": getattr(usage, "output_tokens", None),
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
            output_tokens=estimate_output_tokens(text) if answer is None else answer,
            cached_input_tokens=read,
            latency_ms=latency_ms,
            finish_reason=getattr(response, "stop_reason", None),
            usage_estimated=fresh is None or answer is None,
        )
        if not text.strip():
            raise empty_answer(self.name, model, "no text content", done)
        return done
