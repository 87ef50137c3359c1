"""Rate limits on Redis: what a rate-limited request costs over today's path, and the script's CPU.

    python benchmarks/ratelimit.py --rate 200 --duration 20 --latency-ms 20

(a) Two gateways, built as ``cascade serve`` builds them, over one loopback upstream
    (``MockLLMServer`` in its own process, a fixed delay): ``plain`` (today's path: bearer key,
    SQLite ledger, no limits) and ``limited`` (the same, plus ``limits.redis`` and
    ``limits.tasks.faq`` rpm/tpm, and a key named ``bench`` with its own rpm/tpm, so every
    request runs the Lua script once with four scopes to take and once more to settle tokens).
    The key is a real named key in the ledger (``server.ledger_keys``, ``cascade keys``) with
    daily and monthly budgets, so each request also looks the key up (cached 0.5 s) and
    reserves against the key's totals in the same ledger transaction as the task's and the
    global ones. The limits and budgets are set high enough never to refuse. Requests are paced
    open-loop at ``--rate`` per second, to each gateway in turn by segments, with direct
    upstream requests interleaved (``gateway_overhead._measure``), so both see the same machine
    at the same moment. Latency
    is timed from each request's scheduled send time.

    So ``limited`` is the rate-limited, key-budgeted request of issue 20 against today's path.

(b) The limiter's CPU per request, measured alone in this process: ``take`` of four scopes plus
    one ``settle`` per request, sequentially on a fresh Redis. Client side: ``time.process_time``
    per request (redis-py building the command and parsing the reply, asyncio). Redis side:
    ``INFO commandstats`` ``usec_per_call`` of ``evalsha`` (the script's run inside Redis).
    The in-process ``LocalLimiter`` is measured the same way, for scale.

Redis is a ``redis-server`` of this benchmark's own on a free loopback port (``--save ''``), so
``CONFIG RESETSTAT`` touches nobody else's numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_overhead import MESSAGES, _cpu_model, _free_port, _measure, _ms, _Pool, _upstream

KEY = "bench-ratelimit-key"
URL_ENV = "BENCH_REDIS_URL"


def _named_key(ledger_path: str) -> str:
    """Create the named key ``bench`` (budgets, rpm and tpm that never refuse); its token."""
    from cascade.ledger import Ledger
    from cascade.ledger.keys import KeyStore

    ledger = Ledger(ledger_path)
    try:
        _, token = KeyStore(ledger).create(
            "bench", daily_usd=1e6, monthly_usd=1e7, rpm=10_000_000, tpm=10_000_000_000
        )
    finally:
        ledger.close()
    return token


def _gateway(config: dict[str, Any], urls: Any, stop: Any) -> None:
    """A gateway as ``cascade serve`` builds it."""
    import logging
    import threading

    import structlog

    from cascade import Cascade
    from cascade.gateway.app import bind, create_app, freeze_heap, url_of, uvicorn_server

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    os.environ["BENCH_GATEWAY_KEYS"] = KEY
    engine = Cascade.from_dict(config)
    app = create_app(engine, api_keys_env="BENCH_GATEWAY_KEYS")
    sock = bind("127.0.0.1", 0)
    server = uvicorn_server(app)
    threading.Thread(
        target=lambda: (stop.wait(), setattr(server, "should_exit", True)), daemon=True
    ).start()
    freeze_heap()
    urls.put(url_of(sock))
    server.run(sockets=[sock])
    engine.close()


def _redis(port: int) -> subprocess.Popen[bytes]:
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is required")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with redis.Redis(port=port) as client:
        for _ in range(400):
            try:
                client.ping()
            except redis.ConnectionError:
                time.sleep(0.025)
            else:
                return process
    raise SystemExit("redis-server did not start")


async def _limiter_cpu(limiter: Any, requests: int) -> dict[str, float]:
    from cascade.gateway.ratelimit import Scope

    take = [
        Scope("key:bench:rpm", 10**7, 1, "k", "requests"),
        Scope("key:bench:tpm", 10**10, 4200, "k", "tokens"),
        Scope("task:faq:rpm", 10**7, 1, "t", "requests"),
        Scope("task:faq:tpm", 10**10, 4200, "t", "tokens"),
    ]
    # The run used 100 of the 4200 reserved tokens: both token scopes give 4100 back.
    settle = [
        Scope("key:bench:tpm", 10**10, -4100, "k", "tokens"),
        Scope("task:faq:tpm", 10**10, -4100, "t", "tokens"),
    ]
    for _ in range(200):  # warm: connection, EVALSHA cached
        await limiter.take(take)
        await limiter.settle(settle)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(requests):
        await limiter.take(take)
        await limiter.settle(settle)
    return {
        "client_cpu_us_per_request": round((time.process_time() - cpu) / requests * 1e6, 1),
        "wall_us_per_request": round((time.perf_counter() - wall) / requests * 1e6, 1),
    }


def _script_cpu(port: int, requests: int, repeats: int) -> dict[str, Any]:
    import redis

    from cascade.config import RedisLimiterConfig
    from cascade.gateway.ratelimit import LocalLimiter, RedisLimiter

    os.environ[URL_ENV] = f"redis://127.0.0.1:{port}/0"
    runs: list[dict[str, float]] = []
    local: list[dict[str, float]] = []
    for _ in range(repeats):
        with redis.Redis(port=port) as admin:
            admin.config_resetstat()
            limiter = RedisLimiter(RedisLimiterConfig(url_env=URL_ENV, prefix="bench-cpu:"))

            async def once(limiter: Any = limiter) -> dict[str, float]:
                try:
                    return await _limiter_cpu(limiter, requests)
                finally:
                    await limiter.aclose()

            row = asyncio.run(once())
            stats = admin.info("commandstats")
            evalsha = stats.get("cmdstat_evalsha", {})
            row["redis_usec_per_evalsha"] = float(evalsha.get("usec_per_call", 0))
            row["evalsha_calls"] = float(evalsha.get("calls", 0))
            runs.append(row)
        local.append(asyncio.run(_limiter_cpu(LocalLimiter(), requests)))

    def summary(rows: list[dict[str, float]]) -> dict[str, Any]:
        return {
            key: {
                "median": round(statistics.median(r[key] for r in rows), 2),
                "min": min(r[key] for r in rows),
                "max": max(r[key] for r in rows),
            }
            for key in rows[0]
        }

    return {
        "requests_per_repeat": requests,
        "repeats": repeats,
        "redis": summary(runs),
        "local": summary(local),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per gateway")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--segment", type=float, default=5.0)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the upstream's delay")
    parser.add_argument("--cpu-requests", type=int, default=5000)
    parser.add_argument("--cpu-repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-bench")
    port = _free_port()
    redis_server = _redis(port)
    os.environ[URL_ENV] = f"redis://127.0.0.1:{port}/0"
    load_before = round(os.getloadavg()[0], 2)
    ctx = multiprocessing.get_context("spawn")
    urls, stop = ctx.Queue(), ctx.Event()
    upstream = ctx.Process(target=_upstream, args=(args.latency_ms, urls, stop), daemon=True)
    children: list[Any] = []
    try:
        upstream.start()
        openai_url, _ = urls.get(timeout=60)
        folder = Path(tempfile.mkdtemp())

        def config(name: str, limited: bool) -> dict[str, Any]:
            data: dict[str, Any] = {
                "providers": {"openai": {"type": "openai", "base_url": openai_url}},
                "models": {
                    "mini": {
                        "provider": "openai",
                        "name": "gpt-4o-mini",
                        "price": {"input": 0.15, "output": 0.6},
                    }
                },
                "ledger": {"path": str(folder / f"{name}.sqlite")},
                "tasks": {
                    "faq": {"ladder": ["mini"], "evaluators": [{"type": "length", "min_words": 3}]}
                },
            }
            if limited:
                data["server"] = {"ledger_keys": True}
                data["limits"] = {
                    "redis": {"url_env": URL_ENV, "prefix": "bench:"},
                    "tasks": {"faq": {"rpm": 10_000_000, "tpm": 10_000_000_000}},
                }
            return data

        body = {"model": "faq", "messages": MESSAGES, "max_tokens": 64}
        targets = {}
        for name, limited in (("plain", False), ("limited", True)):
            data = config(name, limited)
            token = _named_key(data["ledger"]["path"]) if limited else KEY
            child = ctx.Process(target=_gateway, args=(data, urls, stop), daemon=True)
            child.start()
            children.append(child)
            url = urls.get(timeout=60)
            targets[name] = (
                url,
                _Pool(url).encode(
                    "/v1/chat/completions", body, {"Authorization": f"Bearer {token}"}
                ),
            )
        raw = asyncio.run(
            _measure(args.rate, args.duration, args.warmup, args.segment, openai_url, targets)
        )
    finally:
        stop.set()
        for child in children:
            child.join(timeout=30)
        upstream.join(timeout=10)
    latency: dict[str, Any] = {}
    for name, samples in raw.items():
        got = [r[0] for r in samples["target"]]
        direct = [r[0] for r in samples["direct"]]
        latency[name] = {
            "requests": len(got),
            "gateway_ms": {"p50": _ms(got, 50), "p99": _ms(got, 99)},
            "direct_ms": {"p50": _ms(direct, 50), "p99": _ms(direct, 99)},
            "added_ms": {
                "p50": round(_ms(got, 50) - _ms(direct, 50), 3),
                "p99": round(_ms(got, 99) - _ms(direct, 99), 3),
            },
        }
    plain, limited = latency["plain"]["added_ms"], latency["limited"]["added_ms"]
    latency["limits_cost_ms"] = {q: round(limited[q] - plain[q], 3) for q in plain}
    latency["limited_over_plain_added"] = {
        q: round(limited[q] / plain[q], 3) if plain[q] > 0 else None for q in plain
    }
    try:
        cpu = _script_cpu(port, args.cpu_requests, args.cpu_repeats)
    finally:
        redis_server.terminate()
        redis_server.wait(timeout=10)
    report = {
        "machine": {
            "cpu": _cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m_before": load_before,
            "load_avg_1m_after": round(os.getloadavg()[0], 2),
        },
        "rate_rps": args.rate,
        "duration_s": args.duration,
        "segment_s": args.segment,
        "upstream_latency_ms": args.latency_ms,
        "latency": latency,
        "cpu": cpu,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
