"""The gateway's error answers, in OpenAI's error shape: shared by every endpoint.

Messages are scrubbed of anything key-shaped unless the text is the gateway's own, and an
engine error's text of where things are (``public_text``): a client gets a stable code and a
short reason, the server log the detail.
"""

from __future__ import annotations

import re
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
    TaskNotAllowed,
)
from cascade.gateway.keys import Denied
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
    "public_text",
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


def unauthorized(gateway: Gateway, denied: Denied | None = None) -> WireJSON:
    """401: the key is missing or unknown, or (a named key) revoked or expired; the message
    says which of the last two, and never repeats the key."""
    denied = denied or Denied("unknown")
    code = {"revoked": "api_key_revoked", "expired": "api_key_expired"}.get(
        denied.reason, "invalid_api_key"
    )
    # The gateway's own text, with no secret in it: scrubbing would garble "Bearer <key>".
    return refuse(gateway, "Unauthorized", 401, denied.message, code, scrub=False)


def from_exception(exc: Exception) -> WireJSON:
    """Map an engine error to its HTTP answer: a stable code and a short reason.

    The reason is scrubbed of anything key-shaped and of where things are (``public_text``);
    what was hidden goes to the server log. Every 5xx and the 429 say ``x-should-retry:
    false``: a retry would rerun a whole ladder. When the run got as far as a result, its
    cascade headers come along, so a client sees what the failed request cost.
    """
    headers = dict(NO_RETRY)
    result = getattr(exc, "result", None)
    if isinstance(result, CascadeResult):
        headers.update(cascade_headers(result))
    if isinstance(exc, RequestError):
        text = public_text(str(exc), "invalid_request")
        return error_response(
            400, f"invalid request body: {text}", "invalid_request_error", "invalid_request"
        )
    if isinstance(exc, TaskNotAllowed):
        return error_response(
            403, str(exc), "permission_error", "task_not_allowed", headers, scrub=False
        )
    if isinstance(exc, BudgetExceeded):
        text = public_text(str(exc), "budget_exceeded")
        return error_response(429, text, "budget_error", "budget_exceeded", headers)
    if isinstance(exc, (CascadeExhausted, ProviderError)):
        text = public_text(str(exc), "cascade_exhausted")
        return error_response(502, text, "upstream_error", "cascade_exhausted", headers)
    if isinstance(exc, ConfigError):
        # A missing provider key and the like: the operator's mistake, not the client's. The
        # key path and the reason say what to fix; the config file's path stays in the log.
        said = f"{exc.location}: {exc.message}" if exc.location else exc.message
        text = public_text(said, "config_error", detail=str(exc))
        return error_response(
            500, f"gateway configuration error: {text}", "server_error", "config_error", headers
        )
    if isinstance(exc, EvaluatorError):
        text = public_text(str(exc), "evaluator_error")
        return error_response(500, text, "server_error", "evaluator_error", headers)
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
        text = public_text(str(exc), "cascade_error")
        return error_response(500, text, "server_error", "cascade_error", headers)
    return internal_error(exc, headers)


# Where things are, in an engine error's text: a URL (a PostgreSQL ledger, an upstream), an
# absolute or home-relative file path (the ledger, the config, a model file). A path starts
# after a space, a quote or a bracket, so "a/b", "1/2" and key paths are left alone.
_STOP = r"\s'\"<>()\[\]{},;"  # what ends a location in running text (and never a trailing : or .)
_LOCATIONS = re.compile(
    rf"(?P<url>[A-Za-z][A-Za-z0-9+.-]*://[^{_STOP}]*[^{_STOP}:.])"
    rf"|(?P<path>(?<![\w.~/-])~?/[^{_STOP}:]*[^{_STOP}:.]|\b[A-Za-z]:\\[^{_STOP}:]*[^{_STOP}:.])"
)


def public_text(text: str, code: str, *, detail: str | None = None) -> str:
    """``text`` as a client may read it: without keys, URLs or file paths.

    When something was hidden, the whole ``detail`` (by default ``text``, key-scrubbed) goes to
    the server log as ``cascade.error_detail`` with the answer's ``code``, so the operator can
    still find which ledger, config or upstream it was.
    """
    shown = _LOCATIONS.sub(lambda m: "<url>" if m.group("url") else "<path>", redact(text))
    full = redact(text if detail is None else detail)
    if shown != full:
        log.warning("cascade.error_detail", code=code, error=full)
    return shown


def internal_error(exc: BaseException, headers: Mapping[str, str] = NO_RETRY) -> WireJSON:
    """The answer to an error no route expected: OpenAI-shaped and without detail (the
    exception's class only); the detail goes to the server log."""
    log.error("cascade.gateway_error", error=redact(repr(exc)))
    return error_response(
        500, f"internal error ({type(exc).__name__})", "server_error", "internal_error", headers
    )
