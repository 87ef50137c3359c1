"""What the official SDK client's low-level ``post`` costs over a bare httpx2 request, in-process.

    python benchmarks/sdk_request_cost.py --requests 3000

No network: both send through ``httpx2.MockTransport``, which answers a fixed chat completion at
once, so the difference is the SDK's own work per call (options model, URL and header building,
its send wrapper), the part of the providers' fast path that stays because the engine keeps the
official clients for transport, auth, base_url handling and error classes (issue #14).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import anthropic
import httpx2
import openai

MESSAGES = [{"role": "user", "content": "hi"}]
OPENAI_REPLY = json.dumps({
    "id": "x", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()
ANTHROPIC_REPLY = json.dumps({
    "id": "x", "type": "message", "role": "assistant", "model": "c",
    "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
    "usage": {"input_tokens": 3, "output_tokens": 1}}).encode()


def _answer(request: httpx2.Request) -> httpx2.Response:
    body = ANTHROPIC_REPLY if request.url.path.endswith("/messages") else OPENAI_REPLY
    return httpx2.Response(200, content=body, headers={"content-type": "application/json"})


async def _p50(fn: Callable[[], Awaitable[None]], n: int) -> float:
    for _ in range(300):
        await fn()
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - started) * 1e6)
    return round(statistics.median(times), 1)


async def main(n: int) -> dict[str, float]:
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(_answer))
    oai = openai.AsyncOpenAI(api_key="k", base_url="http://x/v1", http_client=http, max_retries=0)
    ant = anthropic.AsyncAnthropic(api_key="k", base_url="http://x", http_client=http,
                                   max_retries=0)
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 10}

    async def openai_post() -> None:
        r = await oai.post("/chat/completions", cast_to=httpx2.Response, body=body,
                           options={"timeout": 60.0})
        json.loads(r.content)

    async def anthropic_post() -> None:
        r = await ant.post("/v1/messages", cast_to=httpx2.Response, body=body,
                           options={"timeout": 60.0})
        json.loads(r.content)

    async def bare(path: str, headers: dict[str, str]) -> None:
        r = await http.post(f"http://x{path}", json=body, headers=headers)
        json.loads(r.content)

    return {
        "openai_post_us": await _p50(openai_post, n),
        "anthropic_post_us": await _p50(anthropic_post, n),
        "bare_httpx2_us": await _p50(
            lambda: bare("/v1/chat/completions", {"Authorization": "Bearer k"}), n),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    print(json.dumps(asyncio.run(main(parser.parse_args().requests)), indent=1))
