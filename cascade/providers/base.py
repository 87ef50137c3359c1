"""The provider protocol and the SDK-neutral helpers every provider shares."""

from __future__ import annotations

import email.utils
import os
import re
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from cascade.config import DEFAULT_MAX_OUTPUT_TOKENS, ProviderConfig
from cascade.errors import ConfigError, InvalidUsage, ProviderError, caused_by
from cascade.tokens import estimate_input_tokens, max_output_tokens
from cascade.types import Completion, Message

__all__ = [
    "Provider",
    "api_key",
    "is_retryable_status",
    "parse_retry_after",
    "validate_usage",
    "worst_case_completion",
]

# No single call is billed for more tokens than this; a larger count is a broken reply.
MAX_USAGE_TOKENS = 10_000_000

# Every key this process has read, so that no error text can carry any of them.
_SECRETS: set[str] = set()
# Key-shaped strings a server may echo back even when they are not ours.
_KEY_SHAPES = re.compile(r"(sk-(?:ant-)?[A-Za-z0-9_\-]{6})[A-Za-z0-9_\-]+|(Bearer\s+)\S+")

# 408 timeout, 409 conflict/lock, 429 rate limit, 5xx server faults, 529 Anthropic overloaded.
_RETRYABLE = frozenset({408, 409, 429})


@runtime_checkable
class Provider(Protocol):
    """One configured provider. ``name`` is its ``providers:`` key."""

    name: str
    supports_logprobs: bool

    def complete(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        params: Mapping[str, Any],
        query_id: str | None = None,
    ) -> Completion: ...

    async def acomplete(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        params: Mapping[str, Any],
        query_id: str | None = None,
    ) -> Completion: ...


def is_retryable_status(status: int) -> bool:
    return status in _RETRYABLE or status >= 500


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """Seconds the server asked to wait: ``retry-after-ms``, then ``retry-after`` (secs or date)."""
    if not headers:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(float(raw_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw) if raw.strip() else None
        if parsed is None:
            return None
        return max(parsed.timestamp() - (time.time() if now is None else now), 0.0)


def api_key(config: ProviderConfig, provider: str) -> str:
    """Read the provider's key from the environment; a missing key is a config mistake.

    Raises:
        ConfigError: naming the environment variable (never a value).
    """
    env = config.key_env()
    if env is None:
        return "unused"  # a keyless local server
    value = os.environ.get(env)
    if value:
        _SECRETS.add(value)
    if not value:
        raise ConfigError(
            f"environment variable {env} is not set (API key of provider {provider!r})",
            location=f"providers.{provider}.api_key_env",
        )
    return value


def empty_answer(
    provider: str, model: str, what: str, billed: Completion | None = None
) -> ProviderError:
    """A 200 that carries no answer is a fault, never an empty string handed to the user.

    Its usage, when the reply reported any, is still billed and goes with the error.
    """
    return ProviderError(
        f"{provider}: {model} returned {what}",
        provider=provider,
        model=model,
        retryable=True,
        malformed=True,
        billed=billed,
    )


def worst_case_completion(
    provider: str, messages: Sequence[Message], params: Mapping[str, Any]
) -> Completion:
    """Usage that costs exactly the worst case the budget reserved for this call."""
    return Completion(
        text="",
        provider=provider,
        input_tokens=estimate_input_tokens(messages, params),
        output_tokens=max_output_tokens(params) or DEFAULT_MAX_OUTPUT_TOKENS,
    )


def validate_usage(
    provider: str,
    model: str,
    counts: Mapping[str, Any],
    *,
    output: str,
    messages: Sequence[Message],
    params: Mapping[str, Any],
) -> dict[str, int | None]:
    """The reply's token counts as integers, None where the reply left one out.

    A count must be an integer from 0 to ``MAX_USAGE_TOKENS``, and the ``output`` count no more
    than the output limit sent. Anything else means the bill cannot be trusted: negative counts
    would lower the day's spend, a string or a 2**64 would fail far from here.

    Raises:
        InvalidUsage: not retryable (the next reply would be billed too), counted by the
            breaker as a provider fault, and ``billed`` at the reserved worst case.
    """
    checked: dict[str, int | None] = {}
    bad: list[str] = []
    limit = max_output_tokens(params)
    for name, value in counts.items():
        if value is None:
            checked[name] = None
        elif (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not 0 <= value <= MAX_USAGE_TOKENS
            or (name == output and limit is not None and value > limit)
        ):
            shown = repr(value[:24]) if isinstance(value, str) else str(value)[:24]
            bad.append(f"{name}={shown}")
        else:
            checked[name] = value
    if bad:
        raise InvalidUsage(
            f"{provider}: {model} reported invalid usage ({', '.join(bad)}); billed at the "
            "reserved worst case",
            provider=provider,
            model=model,
            billed=worst_case_completion(provider, messages, params),
        )
    return checked


def _refused(exc: BaseException) -> bool:
    """A connection that was refused, whatever the transport made of it: the SDKs' aiohttp
    transport reports aiohttp's connector errors (refused, DNS, certificate) as timeouts."""
    return caused_by(exc, lambda e: isinstance(e, ConnectionRefusedError) or any(
        cls.__name__ == "ClientConnectorError" for cls in type(e).__mro__
    ))


def _unsent(exc: BaseException) -> bool:
    """A timeout before the request went out: no connection in time (httpx's connect or pool
    timeout, aiohttp's connection timeout), so nothing can be billed."""
    names = {"ConnectTimeout", "PoolTimeout", "ConnectionTimeoutError"}
    return caused_by(exc, lambda e: any(cls.__name__ in names for cls in type(e).__mro__))


def map_sdk_error(
    exc: Exception,
    sdk: Any,
    *,
    provider: str,
    model: str,
    key_env: str | None,
    secret: str | None,
    base_url: str | None = None,
) -> ProviderError:
    """Translate an official SDK's exception into a ``ProviderError`` with a clear message.

    Both SDKs share the same exception names, so one mapping serves them. The message never
    contains the key: whatever the server echoed back is scrubbed of it.
    """

    def scrub(text: str) -> str:
        return redact(text, secret)[:300]

    if isinstance(exc, sdk.APITimeoutError) and not _refused(exc):
        return ProviderError(
            f"{provider}: request to {model} timed out",
            provider=provider,
            model=model,
            retryable=True,
            timed_out=not _unsent(exc),
        )
    if isinstance(exc, sdk.APIConnectionError):
        return ProviderError(
            f"{provider}: cannot connect to {_where(exc, base_url)} ({scrub(str(exc))})",
            provider=provider,
            model=model,
            retryable=True,
        )
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        detail = scrub(_server_message(exc))
        if status in (401, 403):
            hint = f"; check the key in ${key_env}" if key_env else ""
            message = f"{provider}: authentication failed (HTTP {status}){hint}: {detail}"
        elif status == 404:
            message = f"{provider}: model {model!r} not found (HTTP 404): {detail}"
            if _lacks_v1(sdk, base_url):
                message += (
                    f"; base_url {_safe_url(base_url or '')} has no /v1 (OpenAI-compatible "
                    "servers usually serve under /v1, e.g. http://host:port/v1)"
                )
        else:
            message = f"{provider}: HTTP {status} from {model}: {detail}"
        headers = getattr(exc.response, "headers", None)
        return ProviderError(
            message,
            provider=provider,
            model=model,
            status_code=status,
            retryable=is_retryable_status(status),
            retry_after_s=parse_retry_after(headers),
        )
    if isinstance(exc, (sdk.APIResponseValidationError, ValueError)):
        return ProviderError(
            f"{provider}: malformed response body from {model}",
            provider=provider,
            model=model,
            retryable=True,
            malformed=True,
        )
    return ProviderError(
        f"{provider}: {type(exc).__name__}: {scrub(str(exc))}",
        provider=provider,
        model=model,
        retryable=False,
    )


def _safe_url(url: str) -> str:
    """A URL without user info or query string, which may hold credentials."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _where(exc: Exception, base_url: str | None) -> str:
    request = getattr(exc, "request", None)
    url = getattr(request, "url", None)
    return _safe_url(str(url)) if url is not None else _safe_url(base_url or "the provider")


def _lacks_v1(sdk: Any, base_url: str | None) -> bool:
    """An OpenAI-compatible base_url whose path has no /v1 segment (a 404 on every call)."""
    if not base_url or getattr(sdk, "__name__", "") != "openai":
        return False
    return "v1" not in urllib.parse.urlsplit(base_url).path.split("/")


def redact(text: str, *extra: str | None) -> str:
    """Remove every known key, and anything shaped like one, from text meant for people."""
    # Shapes first, then the known keys longest first: a known key that is the start of
    # another (``sk-test`` in ``sk-test-SECRET-...``) must not cut the longer one in two,
    # leaving its rest no longer key-shaped and in plain sight.
    text = _KEY_SHAPES.sub(lambda m: (m.group(1) or m.group(2)) + "***", text)
    for secret in sorted({s for s in (*_SECRETS, *extra) if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(exc, "message", "")) or type(exc).__name__
