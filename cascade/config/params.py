"""Which call parameters reach a provider, and the output limit that bounds every call.

The worst case the budget reserves is only a bound if the provider is held to it, so:

- ``max_tokens`` (or ``max_completion_tokens``) must be a positive integer no larger than the
  model's ``max_output_tokens``; when a call sets neither, the model's limit is sent, so the
  value sent upstream is always the value the reservation used.
- ``extra_body`` is merged into the request last by the SDKs; it may add vendor fields but never
  override a parameter that is checked here (``extra_body: {"max_tokens": 100000}`` would
  otherwise lift the limit the budget reserved for).
- SDK transport options (``timeout``, ``extra_headers``, ``extra_query``) are the engine's
  business: ``timeout_s`` and ``deadline_s`` bound a call, not the caller.
- ``n`` must be 1: the reservation is one answer's worst case, and an upstream bills every
  answer it was asked for (``n: 50`` is fifty).
- A parameter that changes what a call costs (``PRICE_CHANGING_PARAMS``: a priority tier, web
  search, audio, predicted output) is not in the worst case nor in the bill, so a call may set
  it only when the operator allows it (``server.allow_params``); the config's own ``params:``
  are the operator's and may set it. ``cascade validate`` warns that its cost goes unpriced.

The gateway's body and the library's keyword arguments go through the same ``check_call_params``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from cascade.errors import RequestError
from cascade.tokens import max_output_tokens

__all__ = [
    "CHAT_PARAMS",
    "OUTPUT_LIMITS",
    "PRICE_CHANGING_PARAMS",
    "TRANSPORT_OPTIONS",
    "bound_output",
    "check_call_params",
    "check_one_answer",
]

# The OpenAI chat-completions parameters the gateway forwards (their types are checked in
# ``cascade.gateway.wire.ChatRequest``).
CHAT_PARAMS = frozenset(
    {
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)
OUTPUT_LIMITS = ("max_tokens", "max_completion_tokens")
# Parameters that make a call cost more than its tokens at the configured price (a priority tier,
# web search calls, audio tokens, rejected prediction tokens). Nothing prices them yet.
PRICE_CHANGING_PARAMS = frozenset(
    {"service_tier", "web_search_options", "modalities", "audio", "prediction"}
)
# Options of the SDKs' create() that change how the request is sent, not what is asked.
TRANSPORT_OPTIONS = frozenset({"timeout", "extra_headers", "extra_query"})
# What extra_body may never carry: it would override a checked parameter or the call itself.
_NOT_IN_EXTRA_BODY = CHAT_PARAMS | TRANSPORT_OPTIONS | {"model", "messages", "extra_body"}


def _positive_int(value: Any, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RequestError(f"must be a positive integer (got {value!r})", param=name)


def check_one_answer(n: Any) -> None:
    """Refuse an ``n`` other than 1 (``None`` is the default, one answer).

    Raises:
        RequestError: ``n`` is not the integer 1 (``True`` and ``1.0`` included).
    """
    # bool is an int: n=True must not pass as 1.
    if n is not None and (type(n) is not int or n != 1):
        raise RequestError(
            f"must be 1 (got {n!r:.40}): a cascade returns one answer, and the budget reserves one "
            "answer's worst case while an upstream bills every answer it is asked for",
            param="n",
        )


def check_call_params(params: Mapping[str, Any], allow: Collection[str] = ()) -> None:
    """Refuse parameters no caller may set.

    Args:
        params: The call's parameters (a gateway body's, or ``complete``'s keywords).
        allow: The price-changing parameters the operator allows (``server.allow_params``).

    Raises:
        RequestError: a transport option, an ``extra_body`` that overrides a checked parameter,
            an ``n`` other than 1, a price-changing parameter not in ``allow``, or an output
            limit that is not a positive integer.
    """
    for name in sorted(TRANSPORT_OPTIONS & params.keys()):
        raise RequestError(
            "is a transport option the engine sets (use providers.<name>.timeout_s and "
            "deadline_s to bound a call)",
            param=name,
        )
    extra = params.get("extra_body")
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise RequestError(
                f"must be a mapping (got {type(extra).__name__})", param="extra_body"
            )
        for key in sorted(_NOT_IN_EXTRA_BODY & extra.keys()):
            raise RequestError(
                "cannot be set through extra_body (it would override a checked parameter); "
                "pass it as a parameter of its own",
                param=f"extra_body.{key}",
            )
    check_one_answer(params.get("n"))
    for name in sorted(PRICE_CHANGING_PARAMS & params.keys()):
        if params[name] is not None and name not in allow:
            raise RequestError(
                "changes what a call costs, and that cost is not priced (not in the worst case "
                "reserved nor in the bill); refused unless the operator lists it under "
                "server.allow_params",
                param=name,
            )
    for name in OUTPUT_LIMITS:
        if params.get(name) is not None:
            _positive_int(params[name], name)


def bound_output(params: Mapping[str, Any], limit: int, model_key: str) -> dict[str, Any]:
    """``params`` with an output limit no larger than ``limit``: the caller's, or ``limit``.

    Raises:
        RequestError: the call asks for more than the model's ``max_output_tokens``.
    """
    out = dict(params)
    for name in OUTPUT_LIMITS:
        value = out.get(name)
        if value is None:
            out.pop(name, None)  # null means "the default", which is the model's limit
            continue
        _positive_int(value, name)
        if value > limit:
            raise RequestError(
                f"{value} is above max_output_tokens {limit} of model {model_key!r}", param=name
            )
    if max_output_tokens(out) is None:
        out["max_tokens"] = limit
    return out
