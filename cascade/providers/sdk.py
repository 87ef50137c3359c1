"""The client lifecycle shared by the providers that wrap an official SDK."""

from __future__ import annotations

import asyncio
import weakref
from types import ModuleType
from typing import Any, ClassVar, Generic, TypeVar

from cascade.config import ProviderConfig
from cascade.errors import ProviderError
from cascade.providers.base import api_key, map_sdk_error

__all__ = ["SDKProvider"]

SyncClient = TypeVar("SyncClient")
AsyncClient = TypeVar("AsyncClient")


class SDKProvider(Generic[SyncClient, AsyncClient]):
    """Lazily built SDK clients with the SDK's own retries off (tenacity is the only layer).

    Clients are created on first use, so a missing key only matters when a call needs it. An
    async client belongs to the event loop that first used it, so each loop gets its own: a
    second ``asyncio.run()`` must not reuse connections of a closed loop.

    Args:
        name: The ``providers:`` key.
        config: Its settings.
        client: An injected sync client (tests, custom transports).
        async_client: An injected async client, used by the first event loop that calls.
    """

    sdk: ClassVar[ModuleType]
    client_class: ClassVar[type[Any]]
    async_client_class: ClassVar[type[Any]]
    supports_logprobs: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        *,
        client: SyncClient | None = None,
        async_client: AsyncClient | None = None,
    ):
        self.name = name
        self.config = config
        self._client = client
        self._async_client = async_client
        self._secret: str | None = None
        self._async_clients: weakref.WeakKeyDictionary[Any, AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.config.base_url!r})"

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
    def client(self) -> SyncClient:
        if self._client is None:
            self._client = self.client_class(**self._options())
        return self._client

    @property
    def async_client(self) -> AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = self._async_client or self.async_client_class(**self._options())
            self._async_client = None
            self._async_clients[loop] = client
        return client

    def close(self) -> None:
        """Close the sync client's connections."""
        if self._client is not None:
            self._client.close()  # type: ignore[attr-defined]
            self._client = None

    async def aclose(self) -> None:
        """Close this event loop's async client (call before the loop ends)."""
        client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()  # type: ignore[attr-defined]

    def _error(self, exc: Exception, model: str) -> ProviderError:
        return map_sdk_error(
            exc,
            self.sdk,
            provider=self.name,
            model=model,
            key_env=self.config.key_env(),
            secret=self._secret,
            base_url=self.config.base_url,
        )
