"""How cheap could a GSM8K cascade be with our quality estimate and no certificate at all?

For each split seed: fit the ``quality_model`` of the Mixtral rung (the one ``cascade calibrate``
fits, on the same half of train it uses) and then pick, *on the test half itself*, the
threshold that just reaches R x GPT-4's quality. That threshold is chosen with the answers in
hand, so no honest method can beat it; the gap between it and a certified policy is the price of
the guarantee, and the gap between it and the oracle is the estimate's own limit.

    python benchmarks/gsm8k_ceiling.py --seeds 20 [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.savings_stats import split_records, spread  # noqa: E402
from cascade.calibration.policy_table import AnswerTable, Estimates, FitSettings  # noqa: E402
from cascade.config import load_config  # noqa: E402
from cascade.providers.dataset import load_dataset  # noqa: E402
from cascade.replay.importers import import_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def cheapest_at(p: np.ndarray, q1: np.ndarray, q2: np.ndarray, c1: np.ndarray,
                c2: np.ndarray, target: float) -> float:
    """Cost/top of escalating the lowest-P answers until quality reaches target x top."""
    order = np.argsort(p)
    top_q, top_c = q2.mean(), c2.sum()
    escalate = np.zeros(len(p), dtype=bool)
    for k in range(len(p) + 1):
        if np.where(escalate, q2, q1).mean() >= target * top_q:
            return float((c1.sum() + c2[escalate].sum()) / top_c)
        if k < len(p):
            escalate[order[k]] = True
    return float((c1.sum() + c2.sum()) / top_c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gsm8k_ceiling"))
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "gsm8k_all.jsonl"
    import_dataset("routellm-gsm8k", str(args.data / "routellm"), path, split="all", seed=0,
                   say=lambda s: None)
    rows = load_dataset(path)
    cfg = load_config(ROOT / "configs" / "bench" / "gsm8k.yaml")
    out: dict[float, list[float]] = {0.9: [], 0.95: []}
    for seed in range(args.seeds):
        train, test = split_records(rows, seed)  # the savings harness's 50/50 split
        table = AnswerTable(cfg, train, "math", None, None)
        order = np.random.default_rng(0).permutation(table.n)
        fit = np.sort(order[: round(0.5 * table.n)])  # calibrate's fit part (seed 0)
        est = Estimates(table, fit, FitSettings(), 0)
        held = AnswerTable(cfg, test, "math", None, None)
        p = est.quality_p(held, 0, 0, 0, crossfit=False)
        for r in out:
            out[r].append(cheapest_at(p, held.score[0], held.score[1], held.call_cost[0],
                                      held.call_cost[1], r))
    for r, values in out.items():
        s = spread(values)
        print(f"R = {r}: cost/top with the threshold chosen on test: median {s['median']:.1%} "
              f"[{s['min']:.1%}-{s['max']:.1%}] over {args.seeds} seeds")


if __name__ == "__main__":
    main()
