"""Token counts the engine estimates itself: the worst case it reserves, and usage a reply left out.

The estimate is deliberately high. Real tokenisers give about one token per 4 characters of
English, so ASCII text counts one token per 3 characters. Text in other scripts (CJK, Cyrillic,
Arabic...) often takes a token or more per character, so every non-ASCII character counts as a
token of its own: an estimate that undercounts would let a prompt spend past a cap. Everything
the provider reads counts: each message part, tool calls, names, and the ``tools``,
``response_format`` and similar parameters that become part of the prompt.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from cascade.types import Message, ToolCall

__all__ = [
    "NON_TEXT_PART_TOKENS",
    "PROMPT_PARAMS",
    "estimate_input_tokens",
    "estimate_output_tokens",
    "max_output_tokens",
    "text_tokens",
]

# An image, audio clip or file costs at least this much; a part whose own JSON text is longer
# (a base64 data URL) counts by that text instead.
NON_TEXT_PART_TOKENS = 1_600
# Parameters the provider turns into prompt tokens.
PROMPT_PARAMS = ("tools", "functions", "tool_choice", "function_call", "response_format", "system")
# Per-message framing (role markers) and per-request priming, as OpenAI's cookbook counts them.
_MESSAGE_FRAMING = 4
_REQUEST_FRAMING = 3


def text_tokens(text: str) -> int:
    """At least one token per 3 ASCII characters plus one per non-ASCII character."""
    if text.isascii():
        return math.ceil(len(text) / 3)
    ascii_chars = len(text.encode("ascii", "ignore"))  # C speed, even for megabytes
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
            if isinstance(part, Mapping) and part.get("type") == "text":
                total += _value_tokens(part.get("text"))
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
    return total


def estimate_output_tokens(text: str, tool_calls: Sequence[ToolCall] = ()) -> int:
    """A high estimate of an answer's tokens, for a reply that reported no usage.

    A tool call's name and arguments are output the provider bills like text; an answer that
    only calls tools has no text, yet is not free.
    """
    return text_tokens(text) + sum(
        _MESSAGE_FRAMING + text_tokens(call.name) + text_tokens(call.arguments)
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
