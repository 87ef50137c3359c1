"""Load test: N concurrent cascades through the real SDKs against a loopback server that injects
latency and faults. Reports throughput, the engine's own overhead per request and peak memory.

    python benchmarks/load_test.py --runs 1000 --latency-ms 50 --fault-rate 0.2

Two overhead numbers are reported:

- ``engine_alone_ms_per_run``: the engine's own time per run (ladder, evaluators, pricing,
  logging, SQLite ledger), measured alone with an in-process provider that answers instantly.
- ``time_outside_provider_ms_per_run``: under load, a run's wall time minus its time inside
  provider calls (SDK + HTTP + upstream latency). It adds retry back-off, waits for a
  ``max_concurrency`` slot and event-loop queueing to the engine's own time.

The upstream runs in a separate process so that it does not share the engine's GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import resource
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import logging  # noqa: E402

import structlog  # noqa: E402

from cascade import Cascade, Ledger, ProviderError  # noqa: E402
from cascade.replay.bench import percentile  # noqa: E402
from cascade.testing import MockLLMServer, Reply  # noqa: E402

# Logging is configured the way a production service would: warnings and above only.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


class Timed:
    """Wraps a provider and adds up the time spent inside its calls."""

    def __init__(self, inner: Any, clock: dict[str, float]):
        self.inner, self.clock = inner, clock
        self.name, self.supports_logprobs = inner.name, inner.supports_logprobs

    async def acomplete(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self.inner.acomplete(*args, **kwargs)
        finally:
            run = kwargs.get("query_id")
            self.clock[run] = self.clock.get(run, 0.0) + time.perf_counter() - started

    def complete(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - async benchmark
        return self.inner.complete(*args, **kwargs)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _responder(latency_ms: float, fault_rate: float, seed: int) -> Any:
    rng = random.Random(seed)
    lock = threading.Lock()

    def responder(model: str, body: dict[str, Any]) -> Reply:
        with lock:
            fault, short = rng.random() < fault_rate, rng.random() < 0.3
        if fault:
            return Reply(status=503, delay_s=latency_ms / 1000)
        text = "no" if short and model == "gpt-4o-mini" else "a complete and useful answer"
        return Reply(text, delay_s=latency_ms / 1000, input_tokens=40)

    return responder


def _serve(latency_ms: float, fault_rate: float, seed: int, urls: Any, stop: Any) -> None:
    """The upstream runs in its own process, so it does not share the engine's GIL."""
    with MockLLMServer(_responder(latency_ms, fault_rate, seed)) as server:
        urls.put((server.openai_url, server.anthropic_url))
        stop.wait()


def isolated_overhead(fault_rate: float, seed: int, runs: int = 3000) -> dict[str, float]:
    """The engine's own time per run, alone: an in-process provider that answers instantly.

    Same ladder, evaluators, fault rate and a real SQLite ledger; runs one after another, so no
    queueing is included.
    """
    from cascade.testing import FakeProvider, make_completion

    rng = random.Random(seed)

    class Instant(FakeProvider):
        async def acomplete(self, messages: Any, *, model: str, params: Any,
                            query_id: str | None = None) -> Any:
            if rng.random() < fault_rate:
                raise ProviderError("HTTP 503", provider=self.name, model=model,
                                    status_code=503, retryable=True)
            return make_completion("no" if rng.random() < 0.3 and model == "gpt-4o-mini"
                                   else "a complete and useful answer")

    async def nap(seconds: float) -> None:
        return None

    config = {
        "providers": {"openai": {"type": "openai"}, "anthropic": {"type": "anthropic"}},
        "models": {"mini": {"provider": "openai", "name": "gpt-4o-mini",
                            "price": {"input": 0.15, "output": 0.6}},
                   "sonnet": {"provider": "anthropic", "name": "claude-sonnet-4-6",
                              "price": {"input": 3, "output": 15}}},
        "retry": {"attempts": 3},
        "tasks": {"faq": {"ladder": ["mini", "sonnet"],
                          "evaluators": [{"type": "length", "min_words": 3}]}},
    }
    tmp = Path(tempfile.mkdtemp())
    engine = Cascade.from_dict(config, providers={"openai": Instant("openai"),
                                                  "anthropic": Instant("anthropic")},
                               ledger=Ledger(tmp / "ledger.sqlite"), asleep=nap)
    times: list[float] = []

    async def go() -> None:
        for i in range(runs):
            started = time.perf_counter()
            try:
                await engine.acomplete("faq", f"question {i}")
            except ProviderError:
                pass
            times.append((time.perf_counter() - started) * 1000)

    asyncio.run(go())
    return {"p50": round(percentile(times, 50), 3), "p99": round(percentile(times, 99), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-concurrency", type=int, default=None,
                        help="per-provider max_concurrency (default: unlimited)")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-load-test")
    os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-load-test")
    tmp = Path(tempfile.mkdtemp())
    urls: Any = multiprocessing.Queue()
    stop: Any = multiprocessing.Event()
    upstream = multiprocessing.Process(target=_serve, args=(args.latency_ms, args.fault_rate,
                                                            args.seed, urls, stop), daemon=True)
    upstream.start()
    openai_url, anthropic_url = urls.get(timeout=30)
    try:
        config = {
            "providers": {"openai": {"type": "openai", "base_url": openai_url},
                          "anthropic": {"type": "anthropic", "base_url": anthropic_url}},
            "models": {"mini": {"provider": "openai", "name": "gpt-4o-mini",
                                "price": {"input": 0.15, "output": 0.6}},
                       "sonnet": {"provider": "anthropic", "name": "claude-sonnet-4-6",
                                  "price": {"input": 3, "output": 15}}},
            "retry": {"attempts": 3, "initial_wait_s": 0.01, "max_wait_s": 0.05},
            "tasks": {"faq": {"ladder": ["mini", "sonnet"],
                              "evaluators": [{"type": "length", "min_words": 3}]}},
        }
        if args.max_concurrency:
            for provider in config["providers"].values():
                provider["max_concurrency"] = args.max_concurrency
        in_provider: dict[str, float] = {}
        slept: dict[str, float] = {"total": 0.0}

        async def asleep(seconds: float) -> None:
            slept["total"] += seconds
            await asyncio.sleep(seconds)

        # The real SDK providers, each wrapped to time what happens inside its calls.
        plain = Cascade.from_dict(config, ledger=False)
        timed = {k: Timed(v, in_provider) for k, v in plain.providers.items()}
        engine = Cascade.from_dict(config, providers=timed,  # type: ignore[arg-type]
                                   ledger=Ledger(tmp / "ledger.sqlite"), asleep=asleep)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        async def one(i: int) -> tuple[float, Any]:
            started = time.perf_counter()
            try:
                result: Any = await engine.acomplete("faq", f"question {i}", query_id=f"q{i}")
            except ProviderError as exc:
                result = exc
            return time.perf_counter() - started, result

        async def all_runs() -> list[tuple[float, Any]]:
            try:
                return await asyncio.gather(*(one(i) for i in range(args.runs)))
            finally:
                await engine.aclose()

        started = time.perf_counter()
        outcomes = asyncio.run(all_runs())
        wall = time.perf_counter() - started
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    finally:
        stop.set()
        upstream.join(timeout=10)
    overhead_ms = []
    for i, (seconds, _) in enumerate(outcomes):
        overhead_ms.append((seconds - in_provider.get(f"q{i}", 0.0)) * 1000)
    steps = sum(len(r.steps) if not isinstance(r, ProviderError) else len(r.result.steps)
                for _, r in outcomes)
    with sqlite3.connect(tmp / "ledger.sqlite") as conn:
        rows = conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
        runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        errors = conn.execute("SELECT COUNT(*) FROM steps WHERE decision='error'").fetchone()[0]
        attempts = conn.execute("SELECT SUM(attempts) FROM steps").fetchone()[0]
    report = {
        "max_concurrency": args.max_concurrency,
        "engine_alone_ms_per_run": isolated_overhead(args.fault_rate, args.seed),
        "runs": args.runs, "latency_ms": args.latency_ms, "fault_rate": args.fault_rate,
        "wall_s": round(wall, 3), "throughput_runs_per_s": round(args.runs / wall, 1),
        "provider_calls": attempts, "error_steps": errors,
        "failed_runs": sum(isinstance(r, ProviderError) for _, r in outcomes),
        "ledger_rows": rows, "steps_in_results": steps, "ledger_runs": runs,
        "time_outside_provider_ms_per_run": {"p50": round(percentile(overhead_ms, 50), 3),
                                       "p99": round(percentile(overhead_ms, 99), 3)},
        "retry_sleep_s_total": round(slept["total"], 3),
        "peak_rss_mb": round(rss_after / 1024, 1),
        "rss_growth_mb": round((rss_after - rss_before) / 1024, 1),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
