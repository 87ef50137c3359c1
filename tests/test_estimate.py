"""The worst-case token estimate: every part of the prompt counts, text at one token per UTF-8
byte (a bound no byte-level tokeniser exceeds) and an image at the most a provider documents."""

from __future__ import annotations

import math

from cascade.config.pricing import Price
from cascade.engine.budget import worst_case_cost
from cascade.tokens import (
    IMAGE_PART_TOKENS,
    NON_TEXT_PART_TOKENS,
    estimate_input_tokens,
    text_tokens,
)

FRAMING = 3 + 4  # the request and one message


def test_text_counts_a_token_per_utf8_byte() -> None:
    """A byte-level BPE token covers at least one byte, so bytes bound the tokens of any text."""
    assert text_tokens("x" * 300) == 300
    assert estimate_input_tokens([{"role": "user", "content": "x" * 300}]) == 300 + FRAMING
    for text in ("漢字の文章です" * 100, "Привет мир" * 50, "مرحبا" * 80, "🙂" * 40, "1 2 3 " * 99):
        assert text_tokens(text) == len(text.encode())
    assert text_tokens("价格 price") == 6 + 6
    assert text_tokens("\ud800") == 3  # a lone surrogate from a JSON escape counts, not raises


def test_an_image_counts_the_most_any_provider_documents() -> None:
    """An image part counts at the largest documented per-image charge, however it is sent."""
    documented = {
        "gpt-4o-mini, 8 tiles": 2_833 + 8 * 5_667,
        "gpt-4o, 8 tiles": 85 + 8 * 170,
        "gpt-4.1-nano, 1,536 patches": math.ceil(1_536 * 2.46),
        "Claude Opus 4.7, 3.75 MP": 92 * 52,
    }
    assert max(documented.values()) == IMAGE_PART_TOKENS
    base = estimate_input_tokens([{"role": "user", "content": []}])
    for url in ("https://example.invalid/cat.png", "data:image/png;base64," + "A" * 1_000_000):
        image = {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
        assert estimate_input_tokens([{"role": "user", "content": [image]}]) == (
            base + IMAGE_PART_TOKENS)
    # Audio has no documented ceiling: its own bytes count when they are more.
    audio = {"type": "input_audio", "input_audio": {"data": "A" * 100_000, "format": "wav"}}
    assert estimate_input_tokens([{"role": "user", "content": [audio]}]) > base + 100_000


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
    assert with_tools >= base + 600 + 530  # Anthropic's own tool-use system prompt, at most 530
    assert with_format >= base + 100


def test_worst_case_prices_the_whole_prompt_and_output_limit() -> None:
    price = Price(input=1_000_000, output=0)  # $1 per input token
    messages = [{"role": "user", "content": "漢" * 1000}]
    assert worst_case_cost(messages, {"max_tokens": 1}, price) >= 1000
