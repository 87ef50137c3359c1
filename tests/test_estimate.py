"""The worst-case token estimate: every part of the prompt counts, and non-Latin text is never
undercounted (at least one token per character)."""

from __future__ import annotations

import math

from cascade.config.pricing import Price
from cascade.engine.budget import worst_case_cost
from cascade.tokens import NON_TEXT_PART_TOKENS, estimate_input_tokens, text_tokens

FRAMING = 3 + 4  # the request and one message


def test_ascii_counts_a_token_per_three_characters() -> None:
    assert text_tokens("x" * 300) == 100
    assert estimate_input_tokens([{"role": "user", "content": "x" * 300}]) == 100 + FRAMING


def test_cjk_and_other_scripts_count_a_token_per_character() -> None:
    """Chinese, Japanese, Cyrillic, Arabic, emoji: each character is at least a token."""
    for text in ("漢字の文章です" * 100, "Привет мир" * 50, "مرحبا" * 80, "🙂" * 40):
        non_ascii = sum(not c.isascii() for c in text)
        assert text_tokens(text) >= non_ascii
    assert text_tokens("价格 price") == 2 + math.ceil(6 / 3)


def test_every_part_of_the_prompt_counts() -> None:
    """System text, list parts, images, tool calls, tools and response_format all add tokens."""
    base = estimate_input_tokens([{"role": "user", "content": "hi"}])
    system = estimate_input_tokens([{"role": "system", "content": "s" * 300},
                                    {"role": "user", "content": "hi"}])
    assert system >= base + 100
    parts = estimate_input_tokens([{"role": "user", "content": [
        {"type": "text", "text": "t" * 300},
        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}]}])
    assert parts >= 100 + NON_TEXT_PART_TOKENS
    calls = estimate_input_tokens([{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "lookup", "arguments": "a" * 300}}]}])
    assert calls >= 100
    tools = [{"type": "function", "function": {"name": "f", "description": "d" * 600}}]
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"description": "x" * 300}}}
    with_tools = estimate_input_tokens([{"role": "user", "content": "hi"}], {"tools": tools})
    with_format = estimate_input_tokens([{"role": "user", "content": "hi"}],
                                        {"response_format": fmt})
    assert with_tools >= base + 200
    assert with_format >= base + 100


def test_worst_case_prices_the_whole_prompt_and_output_limit() -> None:
    price = Price(input=1_000_000, output=0)  # $1 per input token
    messages = [{"role": "user", "content": "漢" * 1000}]
    assert worst_case_cost(messages, {"max_tokens": 1}, price) >= 1000
