"""The gateway's learning route: ``POST /v1/feedback`` (the drift gauges of ``/metrics`` are
``cascade.gateway.drift``'s).

``POST /v1/feedback`` takes ``{"run_id": ..., "score": 0..1, "comment": ...}`` with the same
bearer auth as the chat route, and answers 200 with the stored row, or a 400 naming the field
(a score outside [0, 1], an unknown run id, a body that is not a JSON object). A key scores only
the runs it made, unless it is an admin key or ``server.feedback_any_run`` is set; a run of
another key is answered as an unknown one. Each key may send ``server.feedback_rpm`` a minute
(429 beyond).
"""

from __future__ import annotations

import functools
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cascade.errors import FeedbackError, LedgerError
from cascade.gateway.errors import (
    WireJSON,
    error_response,
    from_exception,
    public_text,
    refuse,
    unauthorized,
)
from cascade.gateway.limits import BodyRefused, parse_json, read_body
from cascade.gateway.state import Denied, Gateway
from cascade.ledger.feedback import add_feedback

__all__ = ["feedback"]



async def feedback(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    client = await gateway.client(request)
    if isinstance(client, Denied):
        return unauthorized(gateway, client)
    settings = gateway.settings
    try:
        raw = await read_body(
            request.receive, request.headers, settings.max_body_bytes, settings.client_timeout_s
        )
    except BodyRefused as exc:
        return refuse(gateway, "InvalidRequest", exc.status, exc.message, "invalid_request",
                       headers={"connection": "close"})
    wait = gateway.feedback_limit.take(client.key_id)
    if wait:
        gateway.metrics.error("RateLimited")
        seconds = math.ceil(wait)
        return error_response(
            429,
            f"too many feedback requests for this key (server.feedback_rpm is "
            f"{settings.feedback_rpm} a minute); try again in {seconds}s",
            "rate_limit_error",
            "rate_limit_exceeded",
            {"retry-after": str(seconds)},
        )
    try:
        body: Any = parse_json(raw)
    except BodyRefused as exc:
        return refuse(gateway, "InvalidRequest", exc.status, exc.message, "invalid_request")
    if not isinstance(body, dict):
        return refuse(gateway, "InvalidRequest", 400,
                       "invalid request body: a JSON object with run_id and score",
                       "invalid_request")
    unknown = sorted(set(body) - {"run_id", "score", "comment"})
    if unknown:
        return refuse(gateway, "InvalidRequest", 400,
                       f"invalid request body: unknown field(s) {', '.join(unknown)}",
                       "invalid_request")
    ledger = gateway.engine.ledger
    anyone = client.admin or settings.feedback_any_run
    store = functools.partial(
        add_feedback, made_with=None if anyone else client.key_id, key_name=client.name
    )
    try:
        args = (ledger, body.get("run_id"), body.get("score"), body.get("comment"))
        # no ledger: add_feedback refuses with the reason, like the library call
        row = await ledger.run(store, *args) if ledger else store(*args)
    except FeedbackError as exc:
        gateway.metrics.error("InvalidFeedback")
        known = exc.param == "run_id" and bool(body.get("run_id"))
        code = "run_not_found" if known else "invalid_request"
        text = public_text(str(exc), code)  # "unknown run id 'x' in <path>": not which ledger
        return error_response(400, f"invalid feedback: {text}", "invalid_request_error", code)
    except LedgerError as exc:
        return from_exception(exc)
    gateway.metrics.feedback.labels(row.source).inc()
    return WireJSON({"object": "feedback", "id": row.id, "run_id": row.run_id,
                         "score": row.score, "comment": row.comment, "source": row.source})
