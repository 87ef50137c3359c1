"""Where the gateway's CPU goes per request, by layer.

    python benchmarks/gateway_profile.py --requests 3000 --rate 0 --latency-ms 0
    py-spy record --gil -r 500 -f raw -o /tmp/gw.txt -- \\
        python benchmarks/gateway_profile.py --requests 3000 --rate 200
    python benchmarks/gateway_profile.py --buckets /tmp/gw.txt --cpu-ms 3.5

The first form serves the gateway of ``gateway_overhead.py`` (same config, SQLite ledger, bearer
auth, metrics) on this process's main thread, with the upstream and a load generator in child
processes, and prints the gateway process's CPU time per request (``--floor``: the bare
forwarding proxy of ``gateway_peers.py`` instead). ``--rate 0`` sends one request at a time.
Under ``py-spy record --gil`` (samples only while a thread holds the GIL: CPU, not waiting),
``--buckets`` sorts the samples of the event loop into the layers below; each layer's share
times the CPU per request gives its milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gateway_overhead as bench

# First match wins; each key is looked for anywhere in a sample's stack.
LAYERS = [
    ("ledger: reservation, write-ahead row, settlement, run row",
     ["ledger/", "cascade/ledger/money.py", "cascade/engine/recorder.py", "Limits.check"]),
    ("the SDK client's send: httpx2 and its transport (aiohttp when installed)",
     ["AsyncClient.send (httpx2", "Response.aread", "Response.aclose"]),
    ("openai SDK: request options, headers, URL, auth wrapper",
     ["AsyncAPIClient.post", "AsyncAPIClient.request"]),
    ("engine: plan, retry layer, evaluation, result, metrics", ["Gateway._run"]),
    ("gateway handler: auth, body, validation, params, JSON response", ["chat_completions"]),
    ("Starlette, access log, uvicorn's ASGI cycle (response write)", ["run_asgi"]),
    ("uvicorn/httptools protocol, uvloop", ["Runner.run"]),
]


def buckets(path: str, cpu_ms: float) -> None:
    counts: collections.Counter[str] = collections.Counter()
    for line in Path(path).read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if "Runner.run" not in stack or "Server.startup" in stack or "Server.shutdown" in stack:
            continue
        layer = next((name for name, keys in LAYERS if any(k in stack for k in keys)), "other")
        counts[layer] += int(n)
    total = sum(counts.values())
    print("| layer | share of the loop's CPU | ms per request |\n|---|---|---|")
    for name in [n for n, _ in LAYERS] + ["other"]:
        share = counts[name] / total if total else 0.0
        print(f"| {name} | {100 * share:.1f}% | {cpu_ms * share:.3f} |")
    print(f"({total} samples)")


def _client(url: str, n: int, rate: float, out: Any) -> None:
    async def go() -> None:
        pool = bench._Pool(url)
        raw = pool.encode("/v1/chat/completions",
                          {"model": "faq", "messages": bench.MESSAGES, "max_tokens": 64},
                          {"Authorization": f"Bearer {bench.KEY}"})
        if rate == 0:
            lat = []
            for _ in range(n):
                started = time.perf_counter()
                await pool.send(raw)
                lat.append(time.perf_counter() - started)
        else:
            start = time.perf_counter() + 0.1
            lat = [r[0] for r in await asyncio.gather(
                *[bench._timed(pool, raw, start + i / rate) for i in range(n)])]
        lat.sort()
        out.put((lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000))

    asyncio.run(go())


def serve(requests: int, rate: float, latency_ms: float, floor: bool) -> None:
    import structlog
    import uvicorn
    from gateway_peers import floor_app

    from cascade import Cascade
    from cascade.gateway.app import bind, create_app, freeze_heap, url_of, uvicorn_server

    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-bench")
    ctx = multiprocessing.get_context("spawn")
    urls, stop, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    upstream = ctx.Process(target=bench._upstream, args=(latency_ms, urls, stop), daemon=True)
    upstream.start()
    openai_url, anthropic_url = urls.get(timeout=60)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    engine = Cascade.from_dict({
        "providers": {"openai": {"type": "openai", "base_url": openai_url},
                      "anthropic": {"type": "anthropic", "base_url": anthropic_url}},
        "models": {"mini": {"provider": "openai", "name": "gpt-4o-mini",
                            "price": {"input": 0.15, "output": 0.6}},
                   "sonnet": {"provider": "anthropic", "name": "claude-sonnet-4-6",
                              "price": {"input": 3, "output": 15}}},
        "ledger": {"path": str(Path(tempfile.mkdtemp()) / "ledger.sqlite")},
        "tasks": {"faq": {"ladder": ["mini", "sonnet"],
                          "evaluators": [{"type": "length", "min_words": 3}]}},
    })
    sock = bind("127.0.0.1", 0)
    if floor:
        server = uvicorn.Server(uvicorn.Config(
            floor_app(openai_url, bench.KEY), log_config=None, log_level="warning",
            access_log=False, ws="none", lifespan="on"))
    else:
        server = uvicorn_server(create_app(engine, api_keys=[bench.KEY]))
    url = url_of(sock)

    def drive() -> None:
        while not server.started:
            time.sleep(0.01)
        warm = ctx.Process(target=_client, args=(url, 200, 0, out))
        warm.start()
        warm.join()
        out.get()
        cpu, wall = time.process_time(), time.perf_counter()
        load = ctx.Process(target=_client, args=(url, requests, rate, out))
        load.start()
        load.join()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        p50, p99 = out.get()
        print(f"{'floor' if floor else 'gateway'}: client p50 {p50:.3f} ms, p99 {p99:.3f} ms; "
              f"process CPU {cpu / requests * 1000:.3f} ms per request over {wall:.1f} s; "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        server.should_exit = True

    freeze_heap()
    threading.Thread(target=drive, daemon=True).start()
    server.run(sockets=[sock])
    stop.set()
    engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=0.0, help="req/s; 0: one at a time")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the upstream's delay")
    parser.add_argument("--floor", action="store_true", help="profile the bare proxy instead")
    parser.add_argument("--buckets", metavar="RAW", help="summarise py-spy raw output instead")
    parser.add_argument("--cpu-ms", type=float, default=1.0,
                        help="CPU per request to scale the shares by (with --buckets)")
    args = parser.parse_args()
    if args.buckets:
        buckets(args.buckets, args.cpu_ms)
    else:
        serve(args.requests, args.rate, args.latency_ms, args.floor)


if __name__ == "__main__":
    main()
