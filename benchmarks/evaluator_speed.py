"""Time to judge huge and hostile answers, per evaluator: the speed targets the tests used to time.

    python benchmarks/evaluator_speed.py --repeat 5 --json benchmarks/results/evaluator_speed.json

The tests (tests/evaluators/) count the work instead (lines of Python, which do not depend on
the machine, plus a CPU-time watchdog for work done in C); the seconds live here. Each case is
the input of the test that once asserted its time, judged ``--repeat`` times after one warm-up
call (plug-in loading, pattern compilation and textstat's dictionary are first-use costs).
Figures are the median and the maximum wall-clock time and the median CPU time of this process,
next to the target the test used to assert.

``agreement, run of N commas`` is not a target: it shows that the built-in number pattern of the
``agreement`` recipes (``-?[\\d,]*\\.?\\d+``) takes time quadratic in the length of a run of
commas, measured at sizes small enough to finish.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cascade.evaluation import EvaluatorContext, build_one
from cascade.testing import make_completion
from cascade.types import Request, Verdict

MB = 1_000_000
CTX = EvaluatorContext(location="tasks.t.evaluators[0]", task="t", model="m",
                       provider_type="openai", supports_logprobs=False)
GOOD = {"name": "Zoë", "items": [{"price": 1.5}, {"price": 2}]}
NUMBER = r"(-?[\d,]*\.?\d+)"


def judge(
    settings: dict[str, Any], text: str, earlier: tuple[str, ...] = ()
) -> Callable[[], Verdict]:
    slot = build_one(settings, CTX)
    history = tuple(make_completion(t, model=f"rung{i + 1}") for i, t in enumerate(earlier))
    request = Request(task="t", messages=({"role": "user", "content": "q"},), history=history)
    completion = make_completion(text)
    return lambda: slot.run(request, completion)


def cases() -> list[tuple[str, float | None, Callable[[], Verdict]]]:
    """(label, the seconds the old test allowed, the call)."""
    schema = {"type": "json_schema", "schema": {}}
    words = "word " * (MB // 5) + "12,345"
    sums = "Her weekly totals were " + " + ".join(str(10 + i) for i in range(400)) + " dollars."
    out: list[tuple[str, float | None, Callable[[], Verdict]]] = [
        ("agreement, two 1 MB answers", 1.0,
         judge({"type": "agreement", "extract": NUMBER}, words, (words,))),
        ("json_schema, prose + JSON", 1.0,
         judge(schema, "word " * (MB // 5) + json.dumps(GOOD))),
        ("json_schema, 1 MB object", 1.0,
         judge(schema, json.dumps({"name": "x" * MB, "items": [{"price": 1}]}))),
        ("json_schema, nested brackets", 1.0, judge(schema, "[" * (MB // 2) + "]" * (MB // 2))),
        ("json_schema, [1][1]...", 1.0, judge(schema, "[1]" * (MB // 3))),
        ("json_schema, {\"{\"...", 1.0, judge(schema, '{"' * (MB // 2))),
        ("json_schema, bad fences", 1.0, judge(schema, "```json\n{bad,}\n```\n" * (MB // 19))),
        ("json_schema, unterminated string", 1.0, judge(schema, '{"' + "x" * MB)),
        ("regex, 1 MB", 1.0, judge({"type": "regex", "pattern": "DONE$"}, "a" * MB + " DONE")),
        ("refusal, 1 MB", 0.5, judge({"type": "refusal"}, "Sure. " * (MB // 6))),
        ("arithmetic, 1 MB of equations", 5.0,
         judge({"type": "arithmetic"}, "2 * 3 = 6. " * (MB // 11))),
        ("arithmetic, long sums, no '='", 2.0, judge({"type": "arithmetic"}, sums * 50)),
        ("readability, one 1 MB word", 2.0,
         judge({"type": "readability", "min": -1000}, "a" * MB)),
    ]
    for n in (2_000, 4_000, 8_000):
        commas = "x" + "," * n
        out.append((f"agreement, run of {n:,} commas", None,
                    judge({"type": "agreement", "recipe": "final_number"}, commas, ("1",))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = []
    for label, target, call in cases():
        call()  # warm-up
        wall, cpu = [], []
        for _ in range(args.repeat):
            c0, w0 = time.process_time(), time.perf_counter()
            call()
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        rows.append({
            "case": label,
            "target_s": target,
            "median_s": round(statistics.median(wall), 4),
            "max_s": round(max(wall), 4),
            "median_cpu_s": round(statistics.median(cpu), 4),
        })
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"{args.repeat} runs each; seconds")
    print(f"  {'case':36s} {'median':>8s} {'max':>8s} {'cpu':>8s} {'target':>7s}")
    for r in rows:
        target = "-" if r["target_s"] is None else f"{r['target_s']:g}"
        print(f"  {r['case']:36s} {r['median_s']:8.4f} {r['max_s']:8.4f} "
              f"{r['median_cpu_s']:8.4f} {target:>7s}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "repeat": args.repeat,
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in load_after],
            "cases": rows,
        }, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
