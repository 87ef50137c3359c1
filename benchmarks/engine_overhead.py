"""Engine overhead: a one-rung cascade against bare SDK calls, on the same loopback upstream.

    python benchmarks/engine_overhead.py --requests 2000

The upstream (``MockLLMServer``, answering at once) runs in its own process so that it does not
share this process's GIL. In one event loop, the same request is sent in strict alternation by:

- ``sdk_typed``: ``AsyncOpenAI().chat.completions.create`` (the SDK's typed response models);
- ``sdk_raw``: the same client's ``post(..., cast_to=httpx2.Response)`` plus one ``json.loads``
  (what the engine's providers do since issue #14);
- ``sdk_typed_aiohttp`` and ``sdk_raw_aiohttp``: the same two through the SDK's own aiohttp
  transport (``http_client=openai.DefaultAioHttpClient()``), which the engine's async calls use
  when aiohttp is installed (``providers.X.async_http: auto``);
- ``provider``: the engine's OpenAI provider alone (``provider.acomplete``: request body,
  the fast path's post and parse into a ``Completion``);
- ``engine``: ``Cascade.acomplete`` on a one-rung task whose answer is accepted, no ledger;
- ``engine_ledger``: the same with a SQLite ledger (write-ahead row before the call, settled
  after it by the ledger's writer thread, as in production; ``--ledger-reserve-only`` drops the
  queued writes to show what the synchronous reservation alone costs);
- ``cascadeflow`` (with ``--cascadeflow-python``): ``CascadeAgent.run`` with one model
  (provider ``vllm``, same upstream) in a process of its own running cascadeflow's own
  virtualenv (``benchmarks/cascadeflow_worker.py``), timed inside that process, in turn with
  the others.

Each path has its own client and keep-alive connection. Figures are per request, in ms, with
the engine's own time (its p50 minus the p50 of the bare call on the engine's transport) and
ratios against ``sdk_typed``. ``engine_own_measured_ms`` is measured per request instead: the
engine's whole time minus the time inside its provider's call.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import multiprocessing
import os
import platform
import socketserver
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cascade.replay.bench import percentile

MESSAGES = [{"role": "user", "content": "What are your opening hours?"}]


def _upstream(urls: Any, stop: Any) -> None:
    from cascade.testing import MockLLMServer, Reply

    socketserver.StreamRequestHandler.disable_nagle_algorithm = True
    with MockLLMServer(lambda model, body: Reply("we open at nine", input_tokens=14)) as server:
        urls.put(server.openai_url)
        stop.wait()


def _config(url: str, ledger: str | None) -> dict[str, Any]:
    return {
        "providers": {"up": {"type": "openai", "base_url": url, "api_key_env": "BENCH_KEY"}},
        "models": {"m": {"provider": "up", "name": "bench-model",
                         "price": {"input": 0.15, "output": 0.6}}},
        "ledger": {"path": ledger},
        "tasks": {"t": {"ladder": ["m"], "evaluators": []}},
    }


async def _run(url: str, requests: int, warmup: int,
               cascadeflow: str | None = None) -> dict[str, list[float]]:
    import httpx2
    import openai

    from cascade import Cascade

    os.environ["BENCH_KEY"] = "bench"
    typed_client = openai.AsyncOpenAI(api_key="bench", base_url=url, max_retries=0)
    raw_client = openai.AsyncOpenAI(api_key="bench", base_url=url, max_retries=0)
    aio = importlib.util.find_spec("aiohttp") is not None
    typed_aio = openai.AsyncOpenAI(api_key="bench", base_url=url, max_retries=0,
                                   http_client=openai.DefaultAioHttpClient() if aio else None)
    raw_aio = openai.AsyncOpenAI(api_key="bench", base_url=url, max_retries=0,
                                 http_client=openai.DefaultAioHttpClient() if aio else None)
    tmp = tempfile.mkdtemp(prefix="engine-bench-")
    engine = Cascade.from_dict(_config(url, None), ledger=False)
    engine_ledger = Cascade.from_dict(_config(url, str(Path(tmp) / "ledger.db")))

    async def sdk_typed() -> None:
        r = await typed_client.chat.completions.create(model="bench-model", messages=MESSAGES)  # type: ignore[arg-type]
        assert r.choices[0].message.content

    async def sdk_raw() -> None:
        r = await raw_client.post("/chat/completions", cast_to=httpx2.Response,
                                  body={"model": "bench-model", "messages": MESSAGES})
        assert json.loads(r.content)["choices"][0]["message"]["content"]

    async def sdk_typed_aiohttp() -> None:
        r = await typed_aio.chat.completions.create(model="bench-model", messages=MESSAGES)  # type: ignore[arg-type]
        assert r.choices[0].message.content

    async def sdk_raw_aiohttp() -> None:
        r = await raw_aio.post("/chat/completions", cast_to=httpx2.Response,
                               body={"model": "bench-model", "messages": MESSAGES})
        assert json.loads(r.content)["choices"][0]["message"]["content"]

    # Its own provider (and client and connection), like every other path.
    provider = Cascade.from_dict(_config(url, None), ledger=False).providers["up"]
    bounded = {"max_tokens": engine.config.models["m"].max_output_tokens}

    async def run_provider() -> None:
        done = await provider.acomplete(MESSAGES, model="bench-model", params=bounded)
        assert done.text

    # The engine's own time per request, measured directly: its whole time minus the time
    # spent inside its provider's call (a thin timing shim around ``acomplete``).
    inner: list[float] = []
    own: list[float] = []
    call = engine.providers["up"].acomplete

    async def timed_call(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await call(*args, **kwargs)
        finally:
            inner.append(time.perf_counter() - started)

    engine.providers["up"].acomplete = timed_call  # type: ignore[method-assign]

    async def run_engine() -> None:
        started = time.perf_counter()
        assert (await engine.acomplete("t", MESSAGES)).accepted
        own.append((time.perf_counter() - started - inner.pop()) * 1000)

    async def run_engine_ledger() -> None:
        assert (await engine_ledger.acomplete("t", MESSAGES)).accepted

    paths: dict[str, Callable[[], Awaitable[None]]] = {
        "sdk_typed": sdk_typed, "sdk_raw": sdk_raw,
        **({"sdk_typed_aiohttp": sdk_typed_aiohttp, "sdk_raw_aiohttp": sdk_raw_aiohttp}
           if aio else {}),
        "provider": run_provider,
        "engine": run_engine,
        "engine_ledger": run_engine_ledger,
    }
    worker = None
    inside: list[float] = []
    if cascadeflow is not None:
        script = Path(__file__).with_name("cascadeflow_worker.py")
        worker = subprocess.Popen([cascadeflow, str(script), url], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)

        async def run_cascadeflow() -> None:
            assert worker is not None
            assert worker.stdin is not None
            assert worker.stdout is not None
            worker.stdin.write("\n")
            worker.stdin.flush()
            inside.append(float(worker.stdout.readline()))

        paths["cascadeflow"] = run_cascadeflow
    times: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(warmup + requests):
        # rotate the starting path so that none always runs right after another
        order = list(paths.items())
        order = order[i % len(order):] + order[:i % len(order)]
        for name, fn in order:
            started = time.perf_counter()
            await fn()
            if i >= warmup:
                times[name].append((time.perf_counter() - started) * 1000)
    await engine.aclose()
    await engine_ledger.aclose()
    for client in (typed_client, raw_client, typed_aio, raw_aio):
        await client.close()
    engine_ledger.close()
    if worker is not None:
        assert worker.stdin is not None
        worker.stdin.close()
        worker.wait(10)
        # its own timing, without the pipe round trip to this process
        times["cascadeflow"] = inside[warmup:]
    times["engine_own"] = own[warmup:]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--cascadeflow-python", help="python of a virtualenv with cascadeflow")
    parser.add_argument("--ledger-reserve-only", action="store_true",
                        help="diagnostic: drop the ledger's queued writes (settlements, run "
                             "rows), leaving only the synchronous reservation before the call")
    args = parser.parse_args()
    if args.ledger_reserve_only:
        from cascade.ledger.writer import Writer

        Writer.submit = lambda self, op: None  # type: ignore[method-assign]
    logging.disable(logging.WARNING)
    ctx = multiprocessing.get_context("spawn")
    urls, stop = ctx.Queue(), ctx.Event()
    upstream = ctx.Process(target=_upstream, args=(urls, stop), daemon=True)
    upstream.start()
    try:
        times = asyncio.run(_run(urls.get(timeout=30), args.requests, args.warmup,
                                 args.cascadeflow_python))
    finally:
        stop.set()
        upstream.join(5)
    p50 = {name: percentile(v, 50) for name, v in times.items()}
    base = "sdk_raw_aiohttp" if importlib.util.find_spec("aiohttp") else "sdk_raw"
    report: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "requests_per_path": args.requests,
        "ms": {name: {"p50": round(p50[name], 3),
                      "p95": round(percentile(v, 95), 3),
                      "p99": round(percentile(v, 99), 3)} for name, v in times.items()
               if name != "engine_own"},
        # the bare call on the engine's own transport is the baseline of its own time
        "engine_transport": base,
        "engine_own_ms_p50": round(p50["engine"] - p50[base], 3),
        # per request: the engine's time outside its provider call (shim included)
        "engine_own_measured_ms": {"p50": round(p50["engine_own"], 3),
                                   "p90": round(percentile(times["engine_own"], 90), 3)},
        # the split of the engine's own time: the provider layer, then the ladder around it
        "provider_own_ms_p50": round(p50["provider"] - p50[base], 3),
        "ladder_own_ms_p50": round(p50["engine"] - p50["provider"], 3),
        "engine_ledger_own_ms_p50": round(p50["engine_ledger"] - p50[base], 3),
        "ratio_p50_vs_sdk_typed": {name: round(p50[name] / p50["sdk_typed"], 3) for name in p50
                                   if name != "engine_own"},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
