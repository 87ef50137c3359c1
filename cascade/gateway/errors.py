"""The gateway's error answers, in OpenAI's error shape: shared by every endpoint.

Messages are scrubbed of anything key-shaped unless the text is the gateway's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from cascade.errors import (
    BudgetExceeded,
    CascadeError,
    CascadeExhausted,
    ConfigError,
    EvaluatorError,
    LedgerError,
    ProviderError,
    RequestError,
)
from cascade.gateway.state import Gateway
from cascade.gateway.wire import cascade_headers, error_body, json_bytes
from cascade.logs import get_logger
from cascade.providers.base import redact
from cascade.types import CascadeResult

__all__ = [
    "NO_RETRY",
    "WireJSON",
    "error_response",
    "from_exception",
    "internal_error",
    "refuse",
    "unauthorized",
]

log = get_logger()

# Tells OpenAI's SDKs not to resend: a rerun would pay for a whole ladder again.
NO_RETRY = {"x-should-retry": "false"}


class WireJSON(JSONResponse):
    """A JSON answer that any text can go into (``wire.json_bytes``): every route's body."""

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


def error_response(
    status: int,
    message: str,
    kind: str,
    code: str | None,
    headers: Mapping[str, str] | None = None,
    *,
    scrub: bool = True,
) -> WireJSON:
    text = redact(message) if scrub else message
    return WireJSON(
        error_body(text, kind, code), status_code=status, headers=dict(headers or {})
    )


def refuse(
    gateway: Gateway,
    kind: str,
    status: int,
    message: str,
    code: str,
    *,
    scrub: bool = True,
    headers: Mapping[str, str] | None = None,
) -> WireJSON:
    gateway.metrics.error(kind)
    error_type = "authentication_error" if status == 401 else "invalid_request_error"
    return error_response(status, message, error_type, code, headers, scrub=scrub)


def unauthorized(gateway: Gateway) -> WireJSON:
    # The gateway's own text, with no secret in it: scrubbing would garble "Bearer <key>".
    return refuse(
        gateway,
        "Unauthorized",
        401,
        "invalid or missing API key: send 'Authorization: Bearer <key>' with one of "
        "the gateway's keys",
        "invalid_api_key",
        scrub=False,
    )


def from_exception(exc: Exception) -> WireJSON:
    """Map an engine error to its HTTP answer; messages are scrubbed of anything key-shaped.

    Every 5xx and the 429 say ``x-should-retry: false``: a retry would rerun a whole ladder.
    When the run got as far as a result, its cascade headers come along, so a client sees what
    the failed request cost.
    """
    headers = dict(NO_RETRY)
    result = getattr(exc, "result", None)
    if isinstance(result, CascadeResult):
        headers.update(cascade_headers(result))
    if isinstance(exc, RequestError):
        return error_response(
            400, f"invalid request body: {exc}", "invalid_request_error", "invalid_request"
        )
    if isinstance(exc, BudgetExceeded):
        return error_response(429, str(exc), "budget_error", "budget_exceeded", headers)
    if isinstance(exc, (CascadeExhausted, ProviderError)):
        return error_response(502, str(exc), "upstream_error", "cascade_exhausted", headers)
    if isinstance(exc, ConfigError):
        # A missing provider key and the like: the operator's mistake, not the client's.
        return error_response(
            500, f"gateway configuration error: {exc}", "server_error", "config_error", headers
        )
    if isinstance(exc, EvaluatorError):
        return error_response(500, str(exc), "server_error", "evaluator_error", headers)
    if isinstance(exc, LedgerError):
        # Fail closed: no model is called while the ledger cannot record the call. The client
        # is told what happened, not where the ledger lives; the operator's log says that.
        log.error("cascade.ledger_unavailable", error=str(exc))
        return error_response(
            503,
            "ledger unavailable: the gateway cannot record spend, so no (further) model call "
            "was made for this request",
            "server_error",
            "ledger_unavailable",
            headers,
        )
    if isinstance(exc, CascadeError):
        return error_response(500, str(exc), "server_error", "cascade_error", headers)
    return internal_error(exc, headers)


def internal_error(exc: BaseException, headers: Mapping[str, str] = NO_RETRY) -> WireJSON:
    """The answer to an error no route expected: OpenAI-shaped and without detail (the
    exception's class only); the detail goes to the server log."""
    log.error("cascade.gateway_error", error=redact(repr(exc)))
    return error_response(
        500, f"internal error ({type(exc).__name__})", "server_error", "internal_error", headers
    )
