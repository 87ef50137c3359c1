"""CPU and latency per call of the SDK's two async transports, and the sync path's own time.

    python benchmarks/transport_cpu.py --requests 1500

Against a loopback ``MockLLMServer`` in its own process (answering at once):

- ``sdk_httpx2`` / ``sdk_aiohttp``: ``AsyncOpenAI.post(cast_to=httpx2.Response)`` + one JSON parse
  through the SDK's default httpx2 transport and through its aiohttp one
  (``openai.DefaultAioHttpClient``, what ``providers.X.async_http: auto`` picks when aiohttp is
  installed); ``bare_httpx2``: a plain ``httpx2.AsyncClient`` post. Latency p50 in alternation,
  then process CPU per call over 500 calls each.
- ``sync_raw`` / ``sync_engine``: the sync SDK client's raw post against ``Cascade.complete``
  on a one-rung task (no ledger), in alternation: the sync path's own time, which includes the
  thread each attempt runs in for its whole-call deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_overhead as eo

from cascade.replay.bench import percentile


async def _async_paths(url: str, n: int) -> dict[str, float]:
    import httpx2
    import openai

    default = openai.AsyncOpenAI(api_key="k", base_url=url, max_retries=0)
    aio = openai.AsyncOpenAI(api_key="k", base_url=url, max_retries=0,
                             http_client=openai.DefaultAioHttpClient())
    plain = httpx2.AsyncClient()
    body = {"model": "bench-model", "messages": eo.MESSAGES}

    async def sdk_httpx2() -> None:
        json.loads((await default.post("/chat/completions", cast_to=httpx2.Response,
                                       body=body)).content)

    async def sdk_aiohttp() -> None:
        json.loads((await aio.post("/chat/completions", cast_to=httpx2.Response,
                                   body=body)).content)

    async def bare_httpx2() -> None:
        json.loads((await plain.post(f"{url}/chat/completions", json=body,
                                     headers={"Authorization": "Bearer k"})).content)

    paths: dict[str, Callable[[], Awaitable[None]]] = {
        "sdk_httpx2": sdk_httpx2, "sdk_aiohttp": sdk_aiohttp, "bare_httpx2": bare_httpx2}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for i in range(200 + n):
        order = list(paths.items())
        order = order[i % len(order):] + order[:i % len(order)]
        for name, fn in order:
            started = time.perf_counter()
            await fn()
            if i >= 200:
                times[name].append((time.perf_counter() - started) * 1000)
    report = {f"{k}_p50_ms": round(percentile(v, 50), 3) for k, v in times.items()}
    for name, fn in paths.items():
        cpu = time.process_time()
        for _ in range(500):
            await fn()
        report[f"{name}_cpu_ms_per_call"] = round((time.process_time() - cpu) / 500 * 1000, 3)
    await default.close()
    await aio.close()
    await plain.aclose()
    return report


def _sync_paths(url: str, n: int) -> dict[str, float]:
    import httpx2
    import openai

    from cascade import Cascade

    os.environ["BENCH_KEY"] = "bench"
    engine = Cascade.from_dict(eo._config(url, None), ledger=False)
    raw = openai.OpenAI(api_key="k", base_url=url, max_retries=0)

    def sync_raw() -> None:
        json.loads(raw.post("/chat/completions", cast_to=httpx2.Response,
                            body={"model": "bench-model", "messages": eo.MESSAGES}).content)

    def sync_engine() -> None:
        engine.complete("t", eo.MESSAGES)

    paths = {"sync_raw": sync_raw, "sync_engine": sync_engine}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for i in range(200 + n):
        order = list(paths.items())
        order = order[i % 2:] + order[:i % 2]
        for name, fn in order:
            started = time.perf_counter()
            fn()
            if i >= 200:
                times[name].append((time.perf_counter() - started) * 1000)
    engine.close()
    report = {f"{k}_p50_ms": round(percentile(v, 50), 3) for k, v in times.items()}
    report["sync_engine_own_ms_p50"] = round(
        report["sync_engine_p50_ms"] - report["sync_raw_p50_ms"], 3)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1500)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    ctx = multiprocessing.get_context("spawn")
    urls, stop = ctx.Queue(), ctx.Event()
    upstream = ctx.Process(target=eo._upstream, args=(urls, stop), daemon=True)
    upstream.start()
    try:
        url = urls.get(timeout=30)
        report: dict[str, Any] = asyncio.run(_async_paths(url, args.requests))
        report.update(_sync_paths(url, args.requests))
    finally:
        stop.set()
        upstream.join(5)
    report["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
