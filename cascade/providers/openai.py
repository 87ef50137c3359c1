"""OpenAI chat completions, and any OpenAI-compatible server through ``base_url``."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import openai

from cascade.config import ProviderConfig
from cascade.errors import ProviderError
from cascade.providers.base import api_key, empty_answer, map_sdk_error, split_params
from cascade.types import Completion, Message

__all__ = ["OpenAIProvider"]


class OpenAIProvider:
    """Calls ``chat.completions.create`` through the official SDK.

    The SDK's own retries are off (``max_retries=0``): the engine's tenacity layer is the only
    one. Clients are created on first use, so a missing key only matters when a call needs it.

    Args:
        name: The ``providers:`` key.
        config: Its settings.
        client: An injected ``openai.OpenAI`` (tests, custom transports).
        async_client: An injected ``openai.AsyncOpenAI``.
    """

    supports_logprobs = True

    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        *,
        client: openai.OpenAI | None = None,
        async_client: openai.AsyncOpenAI | None = None,
    ):
        self.name = name
        self.config = config
        self._client = client
        self._async_client = async_client
        self._secret: str | None = None
        self._async_clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"OpenAIProvider(name={self.name!r}, base_url={self.config.base_url!r})"

    def _options(self) -> dict[str, Any]:
        self._secret = api_key(self.config, self.name)
        options: dict[str, Any] = {
            "api_key": self._secret,
            "max_retries": 0,
            "timeout": self.config.timeout_s,
        }
        if self.config.base_url:
            options["base_url"] = self.config.base_url
        return options

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            self._client = openai.OpenAI(**self._options())
        return self._client

    @property
    def async_client(self) -> openai.AsyncOpenAI:
        # An async client belongs to the event loop that first used it, so each loop gets its
        # own; a second asyncio.run() must not reuse connections of a closed loop.
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = self._async_client or openai.AsyncOpenAI(**self._options())
            self._async_client = None
            self._async_clients[loop] = client
        return client

    def close(self) -> None:
        """Close the sync client's connections."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """Close this event loop's async client (call before the loop ends)."""
        client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()

    def _error(self, exc: Exception, model: str) -> ProviderError:
        return map_sdk_error(
            exc,
            openai,
            provider=self.name,
            model=model,
            key_env=self.config.key_env(),
            secret=self._secret,
        )

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
        started = time.perf_counter()
        try:
            response = client.chat.completions.create(
                model=model,
                messages=list(messages),  # type: ignore[arg-type]  # OpenAI-style dicts
                **kwargs,
            )
        except (openai.OpenAIError, ValueError) as exc:  # ValueError: a 200 whose body is not JSON
            raise self._error(exc, model) from exc
        return self._parse(response, model, (time.perf_counter() - started) * 1000)

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
        started = time.perf_counter()
        try:
            response = await client.chat.completions.create(
                model=model,
                messages=list(messages),  # type: ignore[arg-type]  # OpenAI-style dicts
                **kwargs,
            )
        except (openai.OpenAIError, ValueError) as exc:  # ValueError: a 200 whose body is not JSON
            raise self._error(exc, model) from exc
        return self._parse(response, model, (time.perf_counter() - started) * 1000)

    def _parse(self, response: Any, model: str, latency_ms: float) -> Completion:
        # A 200 whose body is not a chat completion is a fault, not an empty answer.
        if isinstance(response, (str, bytes)) or not hasattr(response, "choices"):
            raise empty_answer(self.name, model, "a body that is not a chat completion")
        if not response.choices:
            raise empty_answer(self.name, model, "no choices")
        choice = response.choices[0]
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None)
        if not isinstance(text, str) or not text.strip():
            refusal = getattr(message, "refusal", None)
            raise empty_answer(
                self.name, model, f"a refusal: {refusal}" if refusal else "an empty message"
            )
        usage = getattr(response, "usage", None)
        details = getattr(usage, "prompt_tokens_details", None)
        logprobs = None
        content_lp = getattr(getattr(choice, "logprobs", None), "content", None)
        if content_lp:
            logprobs = tuple(float(t.logprob) for t in content_lp)
        return Completion(
            text=text,
            provider=self.name,
            input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            cached_input_tokens=int(getattr(details, "cached_tokens", 0) or 0),
            latency_ms=latency_ms,
            logprobs=logprobs,
            finish_reason=getattr(choice, "finish_reason", None),
        )
