"""Where the engine's own time goes: one rung, answer accepted, no network.

    python benchmarks/engine_profile.py --requests 5000

The provider answers at once from memory, so everything timed is the engine's: the run's start
(checks, the run record, the plan), the caller (concurrency slot, breaker, whole-call deadline),
the step's record and the result. Prints the per-run p50 with and without a SQLite ledger, the
split before and after the provider call, and the functions with the most self time under
cProfile (which inflates every call, so read its column as shares, not as microseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import logging
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cascade import Cascade
from cascade.replay.bench import percentile
from cascade.types import Completion

MESSAGES = [{"role": "user", "content": "What are your opening hours?"}]


class Instant:
    """A provider that answers from memory and notes when it was called."""

    name = "up"
    supports_logprobs = False

    def __init__(self) -> None:
        self.answer = Completion(text="we open at nine", model="bench-model", provider="up",
                                 input_tokens=14, output_tokens=4)
        self.entered = self.left = 0.0

    def complete(self, messages: Any, *, model: str, params: Any, query_id: Any = None) -> Any:
        return self.answer

    async def acomplete(self, messages: Any, *, model: str, params: Any,
                        query_id: Any = None) -> Any:
        self.entered = time.perf_counter()
        self.left = time.perf_counter()
        return self.answer


def _engine(ledger: bool) -> tuple[Cascade, Instant]:
    os.environ.setdefault("BENCH_KEY", "unused")
    path = str(Path(tempfile.mkdtemp(prefix="engine-profile-")) / "ledger.db") if ledger else None
    provider = Instant()
    config = {
        "providers": {"up": {"type": "openai", "base_url": "http://127.0.0.1:9/v1",
                             "api_key_env": "BENCH_KEY"}},
        "models": {"m": {"provider": "up", "name": "bench-model",
                         "price": {"input": 0.15, "output": 0.6}}},
        "ledger": {"path": path},
        "tasks": {"t": {"ladder": ["m"], "evaluators": []}},
    }
    engine = Cascade.from_dict(config, providers={"up": provider},
                               ledger=None if ledger else False)
    return engine, provider


async def _time(engine: Cascade, provider: Instant, n: int) -> dict[str, float]:
    for _ in range(300):
        await engine.acomplete("t", MESSAGES)
    total, before, after = [], [], []
    for _ in range(n):
        started = time.perf_counter()
        await engine.acomplete("t", MESSAGES)
        ended = time.perf_counter()
        total.append((ended - started) * 1e6)
        before.append((provider.entered - started) * 1e6)
        after.append((ended - provider.left) * 1e6)
    return {"p50_us": round(percentile(total, 50), 1), "p90_us": round(percentile(total, 90), 1),
            "before_call_p50_us": round(percentile(before, 50), 1),
            "after_call_p50_us": round(percentile(after, 50), 1)}


async def _profile(engine: Cascade, n: int, top: int) -> list[dict[str, Any]]:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        await engine.acomplete("t", MESSAGES)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    entries = stats.stats  # type: ignore[attr-defined]
    whole = sum(v[2] for v in entries.values())
    rows = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return [{"function": f"{Path(k[0]).name}:{k[1]}({k[2]})", "calls_per_run": round(v[1] / n, 1),
             "self_share": round(v[2] / whole, 3)} for k, v in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    report: dict[str, Any] = {}
    for ledger in (False, True):
        engine, provider = _engine(ledger)
        report["sqlite_ledger" if ledger else "no_ledger"] = asyncio.run(
            _time(engine, provider, args.requests))
        if not ledger:
            report["profile_no_ledger"] = asyncio.run(_profile(engine, args.requests, args.top))
        engine.close()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
