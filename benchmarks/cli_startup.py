"""Start-up time of the ``cascade`` command: wall clock of a fresh process, per command.

    python benchmarks/cli_startup.py --runs 21 --json benchmarks/results/cli_startup.json \\
        --tree before=/tmp/cascade-base --tree after=.

Each ``--tree NAME=PATH`` is a checkout of this repository (``git worktree``/``git clone`` of
another commit, say); its ``cascade`` package is put first on ``PYTHONPATH``, with this Python.
Runs are interleaved (run 1 of every command and tree, then run 2, ...) so that the load of a
shared machine falls on all of them alike; the figures are medians with the 10th and 90th
percentiles, and each tree's median against the first tree's.

Commands:

- ``--version``;
- ``validate configs/example.yaml`` (OpenAI and Anthropic providers, one evaluator);
- ``run`` on the bundled GSM8K recordings (replay provider: no key, no network);
- ``run`` through the OpenAI SDK against a loopback ``MockLLMServer`` answering at once (the
  SDK import is part of what a real ``run`` pays).

``python -c pass`` is the interpreter's own start-up, the floor under every command. Targets
(issue 19): ``--version`` under 0.15 s and ``validate`` under 0.5 s on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402  (after the path: the benchmark runs from a checkout)

from cascade.testing import MockLLMServer  # noqa: E402

QUERY = "gsm8k-3"  # a recording of cascade/demo/gsm8k-300.jsonl.gz


def commands(openai_config: Path) -> dict[str, list[str]]:
    demo = "cascade/demo/demo.yaml"
    return {
        "python -c pass": ["-c", "pass"],
        "--version": ["-m", "cascade.cli", "--version"],
        "validate": ["-m", "cascade.cli", "validate", "configs/example.yaml"],
        "run (replay)": ["-m", "cascade.cli", "run", demo, "math", "q", "--query-id", QUERY],
        "run (OpenAI SDK, loopback)": [
            "-m", "cascade.cli", "run", str(openai_config), "faq", "When do you open?",
        ],
    }


def once(tree: Path, argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "OPENAI_API_KEY": "sk-bench",
           "ANTHROPIC_API_KEY": "sk-ant-bench"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=tree, env=env, capture_output=True,
                          text=True, check=False)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(argv)} exited {done.returncode}:\n{done.stderr}")
    return took


def commit(tree: str) -> str:
    """The checkout's commit, ``+`` when it has uncommitted changes (``?`` outside git)."""
    try:
        head = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", tree, "status", "--porcelain", "--", "cascade"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+" if dirty else "")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                        help="a checkout to measure (repeatable; default: this one)")
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": str(ROOT)}
    load_before = os.getloadavg()
    times: dict[str, dict[str, list[float]]] = {t: {} for t in trees}
    with MockLLMServer() as server, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "openai.yaml"
        config.write_text(yaml.safe_dump({
            "providers": {"openai": {"type": "openai", "base_url": server.openai_url}},
            "models": {"mini": {"provider": "openai", "name": "gpt-4o-mini",
                                "price": {"input": 0.15, "output": 0.6}}},
            "ledger": {"path": None},
            "tasks": {"faq": {"ladder": ["mini"], "evaluators": []}},
        }))
        todo = commands(config)
        for tree in trees.values():  # warm the file cache before anything is timed
            for argv in todo.values():
                once(Path(tree), argv)
        for _ in range(args.runs):
            for name, tree in trees.items():
                for label, argv in todo.items():
                    times[name].setdefault(label, []).append(once(Path(tree), argv))
    load_after = os.getloadavg()
    first = next(iter(trees))
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "runs": args.runs,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "trees": {name: {"path": tree, "commit": commit(tree)} for name, tree in trees.items()},
        "seconds": {},
    }
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"{args.runs} interleaved runs; seconds (median [p10, p90])")
    print("  " + "; ".join(f"{name} = {commit(tree)}" for name, tree in trees.items()))
    for label in todo:
        row = {}
        for name in trees:
            values = times[name][label]
            row[name] = {
                "median": round(statistics.median(values), 4),
                "p10": round(quantile(values, 0.1), 4),
                "p90": round(quantile(values, 0.9), 4),
            }
        base = row[first]["median"]
        cells = []
        for name in trees:
            cell = row[name]
            ratio = f" = {cell['median'] / base:.2f}x {first}" if name != first else ""
            cells.append(f"{name} {cell['median']:.3f} [{cell['p10']:.3f}, {cell['p90']:.3f}]"
                         f"{ratio}")
        print(f"  {label:28s} " + "; ".join(cells))
        report["seconds"][label] = row
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
