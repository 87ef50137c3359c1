"""The gateway's learning route: ``POST /v1/feedback`` (the drift gauges of ``/metrics`` are
``cascade.gateway.drift``'s).

``POST /v1/feedback`` takes ``{"run_id": ..., "score": 0..1, "comment": ...}`` with the same
bearer auth as the chat route, and answers 200 with the stored row, or a 400 naming the field
(a score outside [0, 1], an unknown run id, a body that is not a JSON object).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cascade.errors import FeedbackError, LedgerError
from cascade.gateway.errors import error_response, from_exception, refuse, unauthorized
from cascade.gateway.limits import BodyRefused, read_body
from cascade.gateway.state import Gateway
from cascade.ledger.feedback import add_feedback
from cascade.logs import get_logger

__all__ = ["feedback"]

log = get_logger()


async def feedback(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    if not gateway.authorized(request):
        return unauthorized(gateway)
    settings = gateway.settings
    try:
        raw = await read_body(
            request.receive, request.headers, settings.max_body_bytes, settings.client_timeout_s
        )
        body: Any = json.loads(raw)
    except BodyRefused as exc:
        return refuse(gateway, "InvalidRequest", exc.status, exc.message, "invalid_request",
                       headers={"connection": "close"})
    except ValueError:
        return refuse(gateway, "InvalidRequest", 400, "invalid request body: not JSON",
                       "invalid_request")
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
    try:
        args = (ledger, body.get("run_id"), body.get("score"), body.get("comment"))
        # no ledger: add_feedback refuses with the reason, like the library call
        row = await ledger.run(add_feedback, *args) if ledger else add_feedback(*args)
    except FeedbackError as exc:
        gateway.metrics.error("InvalidFeedback")
        known = exc.param == "run_id" and bool(body.get("run_id"))
        code = "run_not_found" if known else "invalid_request"
        return error_response(400, f"invalid feedback: {exc}", "invalid_request_error", code)
    except LedgerError as exc:
        return from_exception(exc)
    gateway.metrics.feedback.labels(row.source).inc()
    return JSONResponse({"object": "feedback", "id": row.id, "run_id": row.run_id,
                         "score": row.score, "comment": row.comment, "source": row.source})
