"""Which betting rule certifies most on few labels: the fixed scheme with each rule swapped in.

    python benchmarks/bounds.py --seeds 20 --train 150 200 --targets 0.90 0.95

On the two held-aside GSM8K ladders (``../shared/data/ladders-dev``, read in place, never
copied), for each split seed: a seeded random train part of the given size, the rest as test.
The fixed scheme's candidates (``calibration.levels``: each family's levels, 1 down to 0) are
simulated on train with ``LevelTable`` and tested by fixed-sequence testing at delta / families,
with each p-value rule below; the cheapest certified candidate is played on test. Reported:
median test cost / always-top with its range, and the share of seeds below R x always-top on
test. Rules (x = the loss rescaled to [0, 1], m0 the null's boundary):

- ``plugin c=0.5``: WSR's predictable plug-in bet, capped at c / m0 with WSR's c = 1/2;
- ``plugin c=0.9``: the same capped at 0.9 / m0 (what ``guarantee.betting_pvalue`` uses);
- ``mixture``: the average of 20 constant-bet capital processes, bets evenly spaced up to
  0.99 / m0 (a mixture over bets; Ville's inequality holds for the average);
- ``kelly``: a predictable Kelly bet (running edge / running variance), capped at 0.5 / m0;
- ``clt``: the normal approximation (not valid on small sets; shown for reference).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cascade.calibration.fixed import leveled  # noqa: E402
from cascade.calibration.guarantee import clt_pvalue  # noqa: E402
from cascade.calibration.levels import LEVELS, families  # noqa: E402
from cascade.calibration.prepared import prepare  # noqa: E402

LADDERS = {
    "ladder-llama": ("gsm8k_llama.jsonl", "benchmarks/configs/ladder_llama_candidates.yaml"),
    "ladder-qwen-oai": ("gsm8k_qwen_oai.jsonl", "benchmarks/configs/ladder_qwen_oai_candidates.yaml"),
}


def _scaled(d: np.ndarray, low: float, high: float, seed: int) -> tuple[np.ndarray, float]:
    x = np.clip((d - low) / (high - low), 0.0, 1.0)
    return x[np.random.default_rng(seed).permutation(len(x))], -low / (high - low)


def _plugin(cap: float) -> Callable[[np.ndarray, float, float, float], float]:
    def p(d: np.ndarray, low: float, high: float, delta: float) -> float:
        x, m0 = _scaled(d, low, high, 0)
        n = len(x)
        t = np.arange(1, n + 1)
        mu = (0.5 + np.cumsum(x)) / (t + 1)
        var = (0.25 + np.cumsum((x - mu) ** 2)) / (t + 1)
        lam = np.minimum(np.sqrt(2 * math.log(1 / delta) / (n * np.r_[0.25, var[:-1]])), cap / m0)
        best = float(np.max(np.cumsum(np.log1p(lam * (x - m0)))))
        return 1.0 if best <= 0 else min(1.0, math.exp(-best))
    return p


def _mixture(d: np.ndarray, low: float, high: float, delta: float) -> float:
    x, m0 = _scaled(d, low, high, 0)
    lams = np.linspace(0, 0.99, 21)[1:] / m0
    lc = np.cumsum(np.log1p(np.outer(x - m0, lams)), axis=0)
    top = lc.max(axis=1, keepdims=True)
    best = float(np.max(top[:, 0] + np.log(np.mean(np.exp(lc - top), axis=1))))
    return 1.0 if best <= 0 else min(1.0, math.exp(-best))


def _kelly(d: np.ndarray, low: float, high: float, delta: float) -> float:
    x, m0 = _scaled(d, low, high, 0)
    n = len(x)
    t = np.arange(1, n + 1)
    mu = (0.5 + np.cumsum(x)) / (t + 1)
    var = (0.25 + np.cumsum((x - mu) ** 2)) / (t + 1)
    lam = np.clip((np.r_[0.5, mu[:-1]] - m0) / np.maximum(np.r_[0.25, var[:-1]], 1e-4), 0, 0.5 / m0)
    best = float(np.max(np.cumsum(np.log1p(lam * (x - m0)))))
    return 1.0 if best <= 0 else min(1.0, math.exp(-best))


RULES: dict[str, Callable[[np.ndarray, float, float, float], float]] = {
    "plugin c=0.5": _plugin(0.5),
    "plugin c=0.9": _plugin(0.9),
    "mixture": _mixture,
    "kelly": _kelly,
    "clt": lambda d, low, high, delta: clt_pvalue(d),
}


def _tables(name: str, data: Path, n_train: int, seed: int, work: Path):  # type: ignore[no-untyped-def]
    file, config = LADDERS[name]
    rows = (data / "ladders-dev" / file).read_text().splitlines()
    perm = np.random.default_rng(seed).permutation(len(rows))
    train, test = work / f"{name}-{seed}-tr.jsonl", work / f"{name}-{seed}-te.jsonl"
    train.write_text("\n".join(rows[i] for i in perm[:n_train]) + "\n")
    test.write_text("\n".join(rows[i] for i in perm[n_train:]) + "\n")
    tr = leveled(prepare(ROOT / config, train, None, None))
    te = leveled(prepare(ROOT / config, test, None, None))
    assert tr is not None and te is not None
    return tr, te


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--train", type=int, nargs="+", default=[150, 200])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.90, 0.95])
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = []
    print("| ladder | n train | R | rule | cost/top on test: median [min-max] | seeds below R |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in LADDERS:
            for n_train in args.train:
                splits = [_tables(name, args.data, n_train, s, Path(tmp)) for s in range(args.seeds)]
                for target in args.targets:
                    for rule, pvalue in RULES.items():
                        costs, below = [], 0
                        for tr, te in splits:
                            top = len(tr.table.rungs) - 1
                            q_top, rows = tr.table.score[top], np.arange(tr.table.n)
                            m = len(families(top + 1))
                            best = None
                            for subset in families(top + 1):
                                for u in LEVELS:
                                    c, q = tr.simulate(subset, u, rows)
                                    if pvalue(q - target * q_top, -target, 1.0, args.delta / m) > args.delta / m:
                                        break
                                    if best is None or c.mean() < best[0]:
                                        best = (float(c.mean()), subset, u)
                            te_rows = np.arange(te.table.n)
                            top_c, top_q = te.table.call_cost[top].mean(), te.table.score[top].mean()
                            if best is None or best[0] >= tr.table.call_cost[top].mean():
                                costs.append(1.0)
                                continue
                            c, q = te.simulate(best[1], best[2], te_rows)
                            costs.append(float(c.mean() / top_c))
                            below += bool(q.mean() < target * top_q - 1e-12)
                        med = float(np.median(costs))
                        out.append({"ladder": name, "train": n_train, "target": target, "rule": rule,
                                    "median": med, "min": min(costs), "max": max(costs),
                                    "below": below / len(splits)})
                        print(f"| {name} | {n_train} | {target:g} | {rule} | {med:.1%} "
                              f"[{min(costs):.1%}-{max(costs):.1%}] | {below / len(splits):.0%} |",
                              flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
