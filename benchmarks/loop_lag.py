"""Event-loop stalls of ``cascade serve`` while it takes large or pathological request bodies.

    python benchmarks/loop_lag.py --json benchmarks/results/loop_lag.json

Three processes: a loopback upstream (``MockLLMServer``), the gateway (``cascade serve`` with its
default limits: 4 MiB bodies, 1,000 messages) and this client. For each body kind the client
sends the body ``--repeat`` times while a fourth process polls ``GET /healthz`` back to back; the
health check's latency while the body is being handled is what any other client of the gateway
waits. The baseline is the same poll with no body in flight. A stall of the loop shows as the
maximum health-check latency minus the baseline's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx2
import yaml

from cascade.replay.bench import percentile

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = (
    "import sys, time\n"
    "from cascade.testing import MockLLMServer\n"
    "with MockLLMServer() as s:\n"
    "    print(s.openai_url, flush=True)\n"
    "    sys.stdin.read()\n"
)


def bodies() -> dict[str, bytes]:
    """Allowed bodies at the limits, and refused ones that are expensive to look at."""

    def dump(messages: list[dict[str, Any]]) -> bytes:
        return json.dumps(
            {"model": "mini", "max_tokens": 16, "messages": messages}, ensure_ascii=False
        ).encode()

    return {
        "one 1 MB message": dump([{"role": "user", "content": "x" * 1_000_000}]),
        "250 messages of 4 KB": dump([{"role": "user", "content": "y" * 4000}] * 250),
        "one 4 MB message": dump([{"role": "user", "content": "x" * 4_000_000}]),
        "1,000 messages of 4 KB": dump([{"role": "user", "content": "y" * 4000}] * 1000),
        "1.3 M CJK characters": dump([{"role": "user", "content": "漢" * 1_300_000}]),
        "64 KB of tiny messages (refused: 1,800 messages)": dump(
            [{"role": "user", "content": "h"}] * 1800
        ),
        "100k tiny messages, 3.5 MB (refused)": dump([{"role": "user", "content": "hi"}] * 100_000),
        "3.9 MB of JSON numbers (refused)": json.dumps(
            {
                "model": "mini",
                "messages": [{"role": "user", "content": "q"}],
                "metadata": {"k": list(range(500_000))},
            }
        ).encode(),
    }


def poll(url: str, stop: Any, out: Any) -> None:
    """Health checks back to back, in a process of its own (no GIL shared with the sender)."""
    latencies = []
    with httpx2.Client() as client:
        while not stop.is_set():
            t = time.perf_counter()
            client.get(f"{url}/healthz")
            latencies.append((time.perf_counter() - t) * 1000)
    out.put(latencies)


def measure(url: str, body: bytes | None, repeat: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    stop, queue = context.Event(), context.Queue()
    poller = context.Process(target=poll, args=(url, stop, queue))
    poller.start()
    time.sleep(1.0)  # the poller's interpreter starts
    statuses = []
    try:
        with httpx2.Client(timeout=120) as client:
            for _ in range(repeat):
                if body is None:
                    time.sleep(0.5)
                    continue
                response = client.post(
                    f"{url}/v1/chat/completions",
                    content=body,
                    headers={"content-type": "application/json"},
                )
                statuses.append(response.status_code)
    finally:
        stop.set()
        latencies: list[float] = queue.get()
        poller.join()
    return {
        "statuses": sorted(set(statuses)),
        "healthz_checks": len(latencies),
        "healthz_p50_ms": percentile(latencies, 50),
        "healthz_p99_ms": percentile(latencies, 99),
        "healthz_max_ms": max(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "ANTHROPIC_API_KEY": "sk-bench"}
    upstream = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert upstream.stdout is not None
    base_url = upstream.stdout.readline().strip()
    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "providers": {"openai": {"type": "openai", "base_url": base_url}},
            "models": {
                "mini": {
                    "provider": "openai",
                    "name": "gpt-4o-mini",
                    "price": {"input": 0.15, "output": 0.6},
                }
            },
            "ledger": {"path": str(Path(tmp) / "ledger.sqlite")},
            "tasks": {"faq": {"ladder": ["mini"]}},
            # The bodies name the model directly (model: mini).
            "server": {"direct_models": ["mini"], "direct_max_cost_usd": 1.0},
        }
        path = Path(tmp) / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        gateway = subprocess.Popen(
            [sys.executable, "-m", "cascade.cli", "serve", str(path), "--port", "0"],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        try:
            assert gateway.stderr is not None
            url = gateway.stderr.readline().split()[4]
            results: dict[str, Any] = {"idle": measure(url, None, args.repeat)}
            for name, body in bodies().items():
                results[name] = {"bytes": len(body), **measure(url, body, args.repeat)}
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
            upstream.communicate("")
    report = {
        "command": "python benchmarks/loop_lag.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "results": results,
    }
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
