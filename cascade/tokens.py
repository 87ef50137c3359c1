"""Token counts the engine estimates itself: the worst case it reserves, and usage a reply left out.

The prompt's estimate is a bound, not a guess: one token per UTF-8 byte. The providers'
tokenisers are byte-level BPE (OpenAI's, Anthropic's) or fall back to bytes (SentencePiece), so
a token always covers at least one byte; English averages about 4 bytes a token and CJK about 1
to 3, so the bound is loose but never short. An estimate that undercounts lets a prompt spend
past a cap and a budget (docs/ledger.md: the overshoot is what calls in flight exceed their
reservations by). Everything the provider reads counts: each message part, tool calls, names,
and the ``tools``, ``response_format`` and similar parameters that become part of the prompt.
An image counts at the most any provider documents for one image (``IMAGE_PART_TOKENS``).

A reply that reported no usage has its answer counted as before, at one token per 3 ASCII
characters and one per other character (``estimate_output_tokens``): that is a bill, not a
bound, and the output is already bounded by the limit sent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from cascade.types import Message, ToolCall

__all__ = [
    "IMAGE_PART_TOKENS",
    "NON_TEXT_PART_TOKENS",
    "PROMPT_PARAMS",
    "estimate_input_tokens",
    "estimate_output_tokens",
    "max_output_tokens",
    "text_tokens",
]

# The most one image part can be billed, by the providers' own documentation:
# - OpenAI, "Images and vision" guide, "Calculating costs": a `detail: high` image is scaled to
#   fit 2048 x 2048, then to a shortest side of 768 px, and billed per 512 px tile: at most
#   2 x 4 = 8 tiles. gpt-4o bills 85 + 170 a tile, 1,445 at most; gpt-4o-mini bills 2,833 +
#   5,667 a tile, 48,169 at most: the highest charge documented. Patch-billed models cap an
#   image at 1,536 patches of 32 px times the model's multiplier (2.46 for gpt-4.1-nano, the
#   largest listed): 3,779.
# - Anthropic, "Images and vision" guide, "Evaluate image size": a 28 x 28 px patch is a token,
#   and a larger image is first scaled down to the model's native maximum: about 1,600 tokens
#   (1.15 MP) before Claude Opus 4.7, about 4,800 at Opus 4.7's 3.75 MP.
# The estimate does not know which model a call goes to, so an image counts the largest. Its
# base64 bytes say nothing about its bill once the provider has scaled it.
IMAGE_PART_TOKENS = 48_169
# Audio and file parts have no documented ceiling: they count as an image, or by the bytes of
# their own JSON (a base64 payload) when that is more. A file sent only by id can bill more than
# this (a long PDF); docs/ledger.md says what such an excess does to a budget.
NON_TEXT_PART_TOKENS = IMAGE_PART_TOKENS
_IMAGE_TYPES = frozenset({"image_url", "image", "input_image"})
# Parameters the provider turns into prompt tokens.
PROMPT_PARAMS = ("tools", "functions", "tool_choice", "function_call", "response_format", "system")
# Per-message framing (role markers) and per-request priming, as OpenAI's cookbook counts them.
_MESSAGE_FRAMING = 4
_REQUEST_FRAMING = 3
# With tools, Anthropic adds a system prompt of its own that the request does not carry: at most
# 530 tokens (Claude 3 Opus, tool_choice auto), by its "Tool use pricing and tokens" table.
_TOOLS_FRAMING = 530


def text_tokens(text: str) -> int:
    """The most tokens ``text`` can be: one per UTF-8 byte (see the module doc)."""
    if text.isascii():
        return len(text)
    # C speed, even for megabytes; a lone surrogate (from a JSON escape) is 3 bytes as well.
    return len(text.encode("utf-8", "surrogatepass"))


def _answer_tokens(text: str) -> int:
    """A high estimate of an answer's tokens (a bill, not a bound): one per 3 ASCII characters
    plus one per other character."""
    if text.isascii():
        return math.ceil(len(text) / 3)
    ascii_chars = len(text.encode("ascii", "ignore"))
    return math.ceil(ascii_chars / 3) + (len(text) - ascii_chars)


def _value_tokens(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return text_tokens(value)
    return text_tokens(json.dumps(value, ensure_ascii=False, default=str))


def _content_tokens(content: Any) -> int:
    if isinstance(content, str) or content is None:
        return _value_tokens(content)
    if isinstance(content, Sequence):
        total = 0
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text":
                total += _value_tokens(part.get("text"))
            elif kind in _IMAGE_TYPES:
                total += IMAGE_PART_TOKENS
            else:
                total += max(NON_TEXT_PART_TOKENS, _value_tokens(part))
        return total
    return _value_tokens(content)


def estimate_input_tokens(
    messages: Sequence[Message], params: Mapping[str, Any] | None = None
) -> int:
    """A high estimate of the prompt: every message part and the prompt-like parameters."""
    total = _REQUEST_FRAMING
    for message in messages:
        total += _MESSAGE_FRAMING
        for key, value in message.items():
            if key == "content":
                total += _content_tokens(value)
            elif key != "role":
                total += _value_tokens(value)  # name, tool_calls, tool_call_id...
    for key in PROMPT_PARAMS:
        if params is not None and key in params:
            total += _value_tokens(params[key])
    if params is not None and (params.get("tools") or params.get("functions")):
        total += _TOOLS_FRAMING
    return total


def estimate_output_tokens(text: str, tool_calls: Sequence[ToolCall] = ()) -> int:
    """A high estimate of an answer's tokens, for a reply that reported no usage.

    A tool call's name and arguments are output the provider bills like text; an answer that
    only calls tools has no text, yet is not free.
    """
    return _answer_tokens(text) + sum(
        _MESSAGE_FRAMING + _answer_tokens(call.name) + _answer_tokens(call.arguments)
        for call in tool_calls
    )


def max_output_tokens(params: Mapping[str, Any]) -> int | None:
    """The output limit a call sets (the larger, if it sets both names), else None."""
    values = [
        v
        for v in (params.get("max_tokens"), params.get("max_completion_tokens"))
        if isinstance(v, int) and not isinstance(v, bool)
    ]
    return max(values) if values else None
