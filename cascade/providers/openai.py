"""OpenAI chat completions, and any OpenAI-compatible server through ``base_url``."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from cascade.errors import RequestError
from cascade.providers.base import empty_answer, validate_usage
from cascade.providers.sdk import SDKProvider, field, request_body
from cascade.tokens import estimate_input_tokens, estimate_output_tokens
from cascade.types import Completion, Message, ToolCall

if TYPE_CHECKING:
    import openai  # noqa: F401  (named in the string subscript of the base class)

__all__ = ["OpenAIProvider"]


class OpenAIProvider(SDKProvider["openai.OpenAI", "openai.AsyncOpenAI"]):
    """Calls the chat completions endpoint through the official SDK's client.

    The SDK sends the request (auth, base_url, transport, its error classes); the reply is read
    from its JSON once, without the SDK's typed response models (see ``SDKProvider._post``).

    The SDK's own retries are off (``max_retries=0``): the engine's tenacity layer is the only
    one. Clients are created on first use, so a missing key only matters when a call needs it.

    Args:
        name: The ``providers:`` key.
        config: Its settings.
        client: An injected ``openai.OpenAI`` (tests, custom transports).
        async_client: An injected ``openai.AsyncOpenAI``.
    """

    sdk_module: ClassVar[str] = "openai"
    client_name: ClassVar[str] = "OpenAI"
    async_client_name: ClassVar[str] = "AsyncOpenAI"
    supports_logprobs: ClassVar[bool] = True

    def complete(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        params: Mapping[str, Any],
        query_id: str | None = None,
    ) -> Completion:
        body, options = request_body(params, model=model, messages=list(messages))
        started = time.perf_counter()
        try:
            reply = self._post("/chat/completions", body, options)
        except RequestError:
            raise  # built by us and refused before sending (RequestError is a ValueError)
        except (self.sdk.OpenAIError, ValueError) as exc:  # ValueError: a 200 not JSON
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
        body, options = request_body(params, model=model, messages=list(messages))
        started = time.perf_counter()
        try:
            reply = await self._apost("/chat/completions", body, options)
        except RequestError:
            raise  # built by us and refused before sending (RequestError is a ValueError)
        except (self.sdk.OpenAIError, ValueError) as exc:  # ValueError: a 200 not JSON
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
        """Read the chat completion's JSON (a dict, as ``json.loads`` gave it) into a Completion."""
        # A 200 whose body is not a chat completion is a fault, not an empty answer.
        if not isinstance(reply, dict) or "choices" not in reply:
            raise empty_answer(self.name, model, "a body that is not a chat completion")
        choices = reply["choices"]
        if not choices or not isinstance(choices, list):
            raise empty_answer(self.name, model, "no choices")
        choice = choices[0]
        message = field(choice, "message")
        text = field(message, "content")
        usage = field(reply, "usage")
        details = field(usage, "prompt_tokens_details")
        counts = validate_usage(
            self.name,
            model,
            {
                "prompt_tokens": field(usage, "prompt_tokens"),
                "completion_tokens": field(usage, "completion_tokens"),
                "cached_tokens": field(details, "cached_tokens"),
            },
            output="completion_tokens",
            messages=messages,
            params=params,
        )
        prompt, answer = counts["prompt_tokens"], counts["completion_tokens"]
        calls = _tool_calls(field(message, "tool_calls"))
        finish = field(choice, "finish_reason")
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
            finish_reason=finish if isinstance(finish, str) else None,
            usage_estimated=prompt is None or answer is None,
        )
        # A reply that asks for a function call is an answer, even with no text at all.
        if not calls and (not isinstance(text, str) or not text.strip()):
            refusal = field(message, "refusal")
            what = f"a refusal: {refusal}" if refusal else "an empty message"
            raise empty_answer(self.name, model, what, billed)
        logprobs = None
        entries = None
        content_lp = field(field(choice, "logprobs"), "content")
        if content_lp and isinstance(content_lp, list):
            try:
                logprobs = tuple(float(t["logprob"]) for t in content_lp)
            except (TypeError, KeyError, ValueError):
                raise empty_answer(self.name, model, "malformed logprobs", billed) from None
            entries = tuple(dict(t) for t in content_lp)
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
    for item in raw if isinstance(raw, list) else ():
        function = field(item, "function")
        if function is not None:
            name, arguments = field(function, "name"), field(function, "arguments")
        else:  # a custom tool call: {"custom": {"name", "input"}}
            custom = field(item, "custom")
            name, arguments = field(custom, "name"), field(custom, "input")
        calls.append(
            ToolCall(
                id=str(field(item, "id") or ""),
                name=str(name or ""),
                arguments=str(arguments or ""),
            )
        )
    return tuple(calls)
