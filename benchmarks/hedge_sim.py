"""Hedged rungs on recorded latencies: p95 latency saved against cost added (a simulation).

    python benchmarks/hedge_sim.py /work/shared/data/ladders-dev/gsm8k_llama.jsonl \\
        /work/shared/data/ladders-dev/gsm8k_qwen_oai.jsonl --delays 250 500 1000 2000

A simulation over recorded latencies, not a live run: each query's rungs take their recorded
``latency_ms``; an answer is accepted when its recorded confidence ``exp(logprob)`` is at least
``--min-confidence`` (the ``logprob`` evaluator of ``benchmarks/configs/ladder_*.yaml``), the
top rung's answer is returned whatever it says. The schedule is the one ``cascade.engine.plan._ahedge``
runs: wait for an outcome with a timeout of the delay; on timeout, with a rung left, start it;
the first accepted answer wins (lower rung first on a tie) and the rest are cancelled.

Cost counts every started rung at its full recorded cost (a provider may bill a cancelled call
in full; the ledger books a cancelled in-flight call at its reserved worst case, which is
higher still). Evaluation time is taken as zero (the replay evaluators are instant).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cascade.replay.bench import percentile


def simulate(lat: list[float], ok: list[bool], cost: list[float],
             delay: float | None) -> tuple[float, float, int]:
    """(latency ms, cost usd, index of the rung returned) for one query."""
    n = len(lat)
    start = {0: 0.0}
    running = {0}
    spent = cost[0]
    now = 0.0
    started = 1
    answered = -1
    while running:
        finish = min(start[i] + lat[i] for i in running)
        if delay is not None and started < n and now + delay < finish:
            now += delay
            start[started] = now
            running.add(started)
            spent += cost[started]
            started += 1
            continue
        now = finish
        for i in sorted(i for i in running if start[i] + lat[i] == finish):
            running.discard(i)
            answered = max(answered, i)
            if ok[i] or i == n - 1:
                return now, spent, i
        if not running and started < n:
            start[started] = now
            running.add(started)
            spent += cost[started]
            started += 1
    return now, spent, answered


def run(path: Path, delays: list[float], min_confidence: float) -> dict[str, Any]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out: dict[str, Any] = {"file": path.name, "queries": len(rows)}
    for delay in [None, *delays]:
        lats, costs, scores = [], [], []
        for row in rows:
            answers = list(row["responses"].values())
            lat = [float(a["latency_ms"]) for a in answers]
            ok = [math.exp(float(a["logprob"])) >= min_confidence for a in answers]
            cost = [float(a["cost_usd"]) for a in answers]
            ms, usd, picked = simulate(lat, ok, cost, delay)
            lats.append(ms)
            costs.append(usd)
            scores.append(float(answers[picked]["score"]))
        out["no_hedge" if delay is None else f"hedge_{delay:g}ms"] = {
            "p50_ms": round(percentile(lats, 50), 1),
            "p95_ms": round(percentile(lats, 95), 1),
            "mean_cost_usd": sum(costs) / len(costs),
            "accuracy": round(sum(scores) / len(scores), 4),
        }
    base = out["no_hedge"]
    for key, value in out.items():
        if key.startswith("hedge_"):
            value["p95_saved_ms"] = round(base["p95_ms"] - value["p95_ms"], 1)
            value["p95_saved_pct"] = round(100 * (1 - value["p95_ms"] / base["p95_ms"]), 1)
            value["cost_added_pct"] = round(
                100 * (value["mean_cost_usd"] / base["mean_cost_usd"] - 1), 1
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--delays", nargs="+", type=float, default=[500, 1000, 2000])
    parser.add_argument("--min-confidence", type=float, default=0.5)
    args = parser.parse_args()
    print(json.dumps([run(f, args.delays, args.min_confidence) for f in args.files], indent=2))


if __name__ == "__main__":
    main()
