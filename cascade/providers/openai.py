"""OpenAI chat completions, and any OpenAI-compatible server through ``base_url``."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import ModuleType
from typing import Any, ClassVar

import openai

from cascade.providers.base import empty_answer, split_params, untransformed, validate_usage
from cascade.providers.sdk import SDKProvider
from cascade.tokens import estimate_input_tokens, estimate_output_tokens
from cascade.types import Completion, Message, ToolCall

__all__ = ["OpenAIProvider"]


class OpenAIProvider(SDKProvider[openai.OpenAI, openai.AsyncOpenAI]):
    """Calls ``chat.completions.create`` through the official SDK.

    The SDK's own retries are off (``max_retries=0``): the engine's tenacity layer is the only
    one. Clients are created on first use, so a missing key only matters when a call needs it.

    Args:
        name: The ``providers:`` key.
        config: Its settings.
        client: An injected ``openai.OpenAI`` (tests, custom transports).
        async_client: An injected ``openai.AsyncOpenAI``.
    """

    sdk: ClassVar[ModuleType] = openai
    client_class = openai.OpenAI
    async_client_class = openai.AsyncOpenAI
    supports_logprobs: ClassVar[bool] = True

    def complete(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        params: Mapping[str, Any],
        query_id: str | None = None,
    ) -> Completion:
        client = self.client
        kwargs = split_params(client.chat.completions.create, params)
        untransformed(kwargs, "messages", messages)
        started = time.perf_counter()
        try:
            response = client.chat.completions.create(model=model, **kwargs)
        except (openai.OpenAIError, ValueError) as exc:  # ValueError: a 200 whose body is not JSON
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
        kwargs = split_params(client.chat.completions.create, params)
        untransformed(kwargs, "messages", messages)
        started = time.perf_counter()
        try:
            response = await client.chat.completions.create(model=model, **kwargs)
        except (openai.OpenAIError, ValueError) as exc:  # ValueError: a 200 whose body is not JSON
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
        # A 200 whose body is not a chat completion is a fault, not an empty answer.
        if isinstance(response, (str, bytes)) or not hasattr(response, "choices"):
            raise empty_answer(self.name, model, "a body that is not a chat completion")
        if not response.choices:
            raise empty_answer(self.name, model, "no choices")
        choice = response.choices[0]
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None)
        usage = getattr(response, "usage", None)
        details = getattr(usage, "prompt_tokens_details", None)
        counts = validate_usage(
            self.name,
            model,
            {
                "prompt_tokens": getattr(usage, "prompt_tokens", None),
                "completion_tokens": getattr(usage, "completion_tokens", None),
                "cached_tokens": getattr(details, "cached_tokens", None),
            },
            output="completion_tokens",
            messages=messages,
            params=params,
        )
        prompt, answer = counts["prompt_tokens"], counts["completion_tokens"]
        calls = _tool_calls(getattr(message, "tool_calls", None))
        # A reply without usage is billed at our (high) estimate, and says so.
        billed = Completion(
            text="",
            provider=self.name,
            input_tokens=estimate_input_tokens(messages, params) if prompt is None else prompt,
            output_tokens=(
                estimate_output_tokens(text if isinstance(text, str) else "", calls)
                if answer is None
                else answer
            ),
            cached_input_tokens=counts["cached_tokens"] or 0,
            latency_ms=latency_ms,
            finish_reason=getattr(choice, "finish_reason", None),
            usage_estimated=prompt is None or answer is None,
        )
        # A reply that asks for a function call is an answer, even with no text at all.
        if not calls and (not isinstance(text, str) or not text.strip()):
            refusal = getattr(message, "refusal", None)
            what = f"a refusal: {refusal}" if refusal else "an empty message"
            raise empty_answer(self.name, model, what, billed)
        logprobs = None
        entries = None
        content_lp = getattr(getattr(choice, "logprobs", None), "content", None)
        if content_lp:
            logprobs = tuple(float(t.logprob) for t in content_lp)
            entries = tuple(
                t.model_dump() if hasattr(t, "model_dump") else dict(t) for t in content_lp
            )
        return replace(
            billed,
            text=text if isinstance(text, str) else "",
            logprobs=logprobs,
            token_logprobs=entries,
            tool_calls=calls,
        )


def _tool_calls(raw: Any) -> tuple[ToolCall, ...]:
    """The message's function calls; other call types (custom tools) keep their name and input."""
    calls = []
    for item in raw or ():
        function = getattr(item, "function", None)
        if function is not None:
            name, arguments = getattr(function, "name", ""), getattr(function, "arguments", "")
        else:  # a custom tool call: {"custom": {"name", "input"}}
            custom = getattr(item, "custom", None)
            name, arguments = getattr(custom, "name", ""), getattr(custom, "input", "")
        calls.append(
            ToolCall(id=str(getattr(item, "id", "")), name=str(name), arguments=str(arguments))
        )
    return tuple(calls)
