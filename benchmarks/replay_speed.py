"""Replay speed: queries per second through the real engine, 3-rung ladder, rule evaluators.

    python benchmarks/replay_speed.py --queries 20000

Builds a synthetic replay dataset (so it runs anywhere, no data needed), then replays it with
``cascade.replay.bench.run_bench`` in one process, logging configured to warnings as in production.
Target: >= 5,000 queries per second.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog  # noqa: E402

from cascade.config import parse_config  # noqa: E402
from cascade.providers.dataset import ReplayRecord, write_dataset  # noqa: E402
from cascade.replay.bench import run_bench  # noqa: E402

CONFIG = {
    "providers": {"rec": {"type": "replay"}},
    "models": {name: {"provider": "rec", "name": name, "price": {"input": p, "output": p}}
               for name, p in (("small", 0.2), ("medium", 1.0), ("large", 10.0))},
    "ledger": {"path": None},
    "tasks": {"qa": {"ladder": ["small", "medium", "large"], "evaluators": [
        {"type": "length", "min_words": 5, "max_words": 300},
        {"type": "refusal"},
        {"type": "regex", "pattern": r"[Aa]nswer:\s*\w+"},
    ]}},
}


def dataset(n: int, seed: int) -> list[ReplayRecord]:
    rng = random.Random(seed)
    good = "Let me think step by step about this. The Answer: {}"
    bad = ["I'm sorry, but I can't help with that.", "no", "The result is unclear to me."]
    records = []
    for i in range(n):
        responses = {}
        for model, p_good in (("small", 0.55), ("medium", 0.75), ("large", 0.95)):
            ok = rng.random() < p_good
            text = good.format(rng.randint(1, 99)) if ok else rng.choice(bad)
            responses[model] = {"text": text, "input_tokens": 120, "output_tokens": 40,
                                "latency_ms": 300.0, "score": 1.0 if ok else 0.0}
        records.append(ReplayRecord.model_validate({
            "id": f"q{i}", "task": "qa",
            "messages": [{"role": "user", "content": f"question {i}"}],
            "responses": responses}))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    path = Path(tempfile.mkdtemp()) / "speed.jsonl"
    write_dataset(path, dataset(args.queries, args.seed))
    started = time.perf_counter()
    result = run_bench(parse_config(CONFIG), path)
    total = time.perf_counter() - started
    task = result.tasks["qa"]
    print(json.dumps({
        "queries": args.queries,
        "replay_queries_per_second": round(result.queries / result.wall_s),
        "end_to_end_queries_per_second_including_load": round(result.queries / total),
        "escalation_rate": [round(x, 3) for x in task["escalation_rate"]],
        "engine_overhead_ms": {k: round(v, 4) for k, v in task["engine_overhead_ms"].items()},
    }, indent=2))


if __name__ == "__main__":
    main()
