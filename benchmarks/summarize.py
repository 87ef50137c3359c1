"""Print the markdown tables of benchmarks/RESULTS.md from benchmarks/results/*.json.

    python benchmarks/summarize.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.savings_stats import markdown_table

RESULTS = Path(__file__).parent / "results"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def row(label: str, t: dict) -> str:
    top = t["baselines"]["always_top"]
    oracle = t["baselines"]["oracle"]
    return (f"| {label} | {t['n']} | {' → '.join(t['ladder'])} | ${t['cost_per_query']:.6f} | "
            f"{pct(t['cost_per_query'] / top['cost_per_query'])} | {t['quality']:.3f} | "
            f"{pct(t['quality'] / top['quality'])} | "
            f"{', '.join(pct(e) for e in t['escalation_rate'])} | "
            f"${top['cost_per_query']:.6f} / {top['quality']:.3f} | "
            f"${oracle['cost_per_query']:.6f} / {oracle['quality']:.3f} |")


HEADER = ("| run | n | ladder | cost/query | cost vs top | quality | quality vs top | "
          "escalation past each rung | always-top cost / quality | oracle cost / quality |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    print(HEADER)
    for name in sorted(RESULTS.glob("*_test.json")):
        for task, t in json.loads(name.read_text()).get("tasks", {}).items():
            print(row(f"{name.stem} [{task}]", t))
    print()
    print("| calibration | status | kept ladder / thresholds | train cost vs top | train quality "
          "vs top | test cost vs top | test quality vs top (95% CI) |\n|---|---|---|---|---|---|---|")
    for name in sorted(RESULTS.glob("*_calibrated_*.json")):
        r = json.loads(name.read_text())
        if r["status"] != "ok":
            print(f"| {name.stem} | {r['status']} | {r['message'][:80]} | | | | |")
            continue
        tr, te = r["train"], r["test"]

        def rel(t: dict, key: str) -> str:
            return pct(t[key] / t["baselines"]["always_top"][key])

        ci = te.get("quality_ratio_ci95") or [None, None]
        print(f"| {name.stem} | ok | {' → '.join(r['ladder'])} {r['thresholds']} | "
              f"{rel(tr, 'cost_per_query')} | {rel(tr, 'quality')} | "
              f"{rel(te, 'cost_per_query')} | {rel(te, 'quality')} ({pct(ci[0])}–{pct(ci[1])}) |")
    print()
    for name in ("alpacaeval_test.json", "alpacaeval_fusechat_test.json"):
        t = json.loads((RESULTS / name).read_text())["tasks"]["chat"]
        lengths = ", ".join(f"{k} {v['answer_chars']:.0f}" for k, v in t["models"].items())
        print(f"- {name}: mean answer chars: cascade {t['answer_chars']:.0f}; {lengths}")
    for name in sorted(RESULTS.glob("savings_*.json")):  # benchmarks/savings.py
        doc = json.loads(name.read_text())
        print(f"\n{name.name}: `{doc['command']}`\n")
        print(markdown_table(doc["summary"]))


if __name__ == "__main__":
    main()
