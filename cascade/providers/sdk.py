"""The client lifecycle shared by the providers that wrap an official SDK."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import weakref
from collections.abc import Mapping
from types import ModuleType
from typing import Any, ClassVar, Generic, TypeVar

from cascade.config import ProviderConfig
from cascade.config.params import TRANSPORT_OPTIONS
from cascade.errors import ConfigError, ProviderError, RequestError
from cascade.formatting import install_hint
from cascade.providers.base import api_key, map_sdk_error

__all__ = ["SDKProvider", "field", "request_body"]

# The SDK's request options our transport options map to (the names of ``make_request_options``).
_OPTION_NAMES = {"extra_headers": "headers", "extra_query": "params", "timeout": "timeout"}


def request_body(params: Mapping[str, Any], **fields: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON body and the SDK request options for one call, as ``create()`` would send them.

    ``extra_body`` is merged last, as the SDKs merge it; ``fields`` (model, messages...) are set
    by the provider and win. Transport options become the SDK's request options.
    """
    body: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in params.items():
        if key in TRANSPORT_OPTIONS:
            options[_OPTION_NAMES[key]] = value
        elif key != "extra_body":
            body[key] = value
    extra = params.get("extra_body")
    if extra:
        body.update(extra)
    body.update(fields)
    return body, options


def _with_timeout(options: dict[str, Any], client: Any) -> dict[str, Any]:
    """The request options with the client's timeout made explicit.

    ``create()`` always passes one; through the low-level ``post`` the Anthropic SDK would
    otherwise send the header ``x-stainless-timeout: NOT_GIVEN``.
    """
    if "timeout" in options:
        return options
    return {**options, "timeout": client.timeout}


def _unbuildable(provider: str, body: Mapping[str, Any], exc: TypeError) -> RequestError:
    """The SDK encodes the body before anything is sent, so a value JSON cannot carry (a
    parameter set to an object) fails here with nothing sent: a request error, not a fault."""
    param = "body"
    for key, value in body.items():  # only on this error path: find the parameter at fault
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            param = key
            break
    return RequestError(f"cannot be sent to provider {provider!r}: {exc}", param=param)


def _wants_aiohttp(setting: str, provider: str) -> bool:
    """Whether the async clients send through the SDKs' aiohttp transport.

    Raises:
        ConfigError: ``aiohttp`` was asked for and is not installed.
    """
    if setting == "httpx":
        return False
    installed = importlib.util.find_spec("aiohttp") is not None
    if setting == "aiohttp" and not installed:
        raise ConfigError(
            f"aiohttp is not installed: {install_hint('aiohttp')}, or set httpx",
            location=f"providers.{provider}.async_http",
        )
    return installed


def field(obj: Any, key: str) -> Any:
    """``obj[key]`` when obj is a JSON object, else None (a malformed reply is checked later)."""
    return obj.get(key) if isinstance(obj, dict) else None


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

    # The SDK and its client classes by name: importing openai or anthropic takes 0.5-1 s, so
    # it waits for the first call (``load_sdk``) instead of slowing every config load, such as
    # ``cascade validate``, which builds the providers and calls none.
    sdk_module: ClassVar[str]
    client_name: ClassVar[str]
    async_client_name: ClassVar[str]
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
        self._sdk: ModuleType | None = None
        self._async_clients: weakref.WeakKeyDictionary[Any, AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._aiohttp = _wants_aiohttp(config.async_http, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.config.base_url!r})"

    @property
    def sdk(self) -> ModuleType:
        """The SDK module (imported on first use)."""
        return self.load_sdk()

    def load_sdk(self) -> ModuleType:
        """Import the SDK now if it is not yet, and return it.

        The engine calls this before an attempt's timeout starts and the gateway at start-up,
        so that the import is neither counted against ``timeout_s`` nor run on a serving event
        loop; afterwards it is an attribute read.
        """
        if self._sdk is None:
            self._sdk = importlib.import_module(self.sdk_module)
        return self._sdk

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
            self._client = getattr(self.sdk, self.client_name)(**self._options())
        return self._client

    @property
    def async_client(self) -> AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = self._async_client or self._new_async_client()
            self._async_client = None
            self._async_clients[loop] = client
        return client

    def _new_async_client(self) -> AsyncClient:
        options = self._options()
        if self._aiohttp:
            # The SDK's own aiohttp transport (its [aiohttp] extra): the same client, auth and
            # error classes, about a third less CPU per call than httpx2's default transport
            # (benchmarks/RESULTS.md, "Engine vs bare SDK"), which is the gateway's budget.
            options["http_client"] = self.sdk.DefaultAioHttpClient(timeout=options["timeout"])
        client: AsyncClient = getattr(self.sdk, self.async_client_name)(**options)
        return client

    # The fast path: the SDK's client sends the request (auth, base_url, transport, its error
    # classes for non-2xx and connection faults), but the reply is read as raw JSON once instead
    # of being built into the SDK's typed response models, which cost more than the HTTP round
    # trip to a fast upstream (benchmarks/RESULTS.md, "Engine vs bare SDK").
    def _post(self, path: str, body: dict[str, Any], options: dict[str, Any]) -> Any:
        import httpx2  # imported by the SDK already: a lookup in sys.modules

        client = self.client
        try:
            response = client.post(  # type: ignore[attr-defined]
                path, body=body, options=_with_timeout(options, client), cast_to=httpx2.Response
            )
        except TypeError as exc:
            raise _unbuildable(self.name, body, exc) from exc
        return json.loads(response.content)

    async def _apost(self, path: str, body: dict[str, Any], options: dict[str, Any]) -> Any:
        import httpx2  # imported by the SDK already: a lookup in sys.modules

        client = self.async_client
        try:
            response = await client.post(  # type: ignore[attr-defined]
                path, body=body, options=_with_timeout(options, client), cast_to=httpx2.Response
            )
        except TypeError as exc:
            raise _unbuildable(self.name, body, exc) from exc
        return json.loads(response.content)

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
