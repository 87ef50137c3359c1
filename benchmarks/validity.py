"""The validity simulation at full size: 2,000 calibrations per world, n and method.

    python benchmarks/validity.py --trials 2000 --jobs 2 --out benchmarks/results/validity.json

For each synthetic world of ``cascade.calibration.validity`` (a three-rung ladder whose every
candidate's true cost and quality are known from 200,000 draws), each n in 100, 300 and 1,000,
and each method (``pac`` with ``fixed`` and with ``holdout``, ``expected`` with ``fixed``): the
share of calibrations whose choice is truly below R x always-top (must be <= delta for pac),
the mean true shortfall E[q] - R E[q_top] (must be >= 0 for expected) and the median true
cost / always-top. Then the normal approximation (``clt``) against the betting p-value at the
null's boundary with rare large losses: d = -R with probability 1/n, else R/(n - 1), so that
E[d] = 0 exactly; how often each rejects at delta.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cascade.calibration.guarantee import betting_pvalue, clt_pvalue  # noqa: E402
from cascade.calibration.validity import WORLDS, run_trials  # noqa: E402

METHODS = (("pac", "fixed"), ("expected", "fixed"), ("pac", "holdout"))


def _one(job: tuple[int, int, str, str, int, float, float]) -> dict[str, object]:
    w, n, guarantee, scheme, trials, target, delta = job
    started = time.perf_counter()
    r = run_trials(WORLDS[w], n, trials, target=target, delta=delta, guarantee=guarantee,
                   scheme=scheme, seed=n)
    return {
        "world": r.world, "n": n, "guarantee": guarantee, "scheme": scheme, "trials": trials,
        "violation_rate": r.violation_rate, "mean_shortfall": r.mean_shortfall,
        "shortfall_se": float(np.std(r.shortfall) / math.sqrt(trials)),
        "median_cost": r.median_cost, "seconds": time.perf_counter() - started,
    }


def clt_at_the_boundary(sizes: list[int], trials: int, target: float, delta: float
                        ) -> list[dict[str, float]]:
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        p = 1 / n
        win = target * p / (1 - p)
        clt = bet = 0
        for t in range(trials):
            d = np.where(rng.random(n) < p, -target, win)
            clt += clt_pvalue(d) <= delta
            bet += betting_pvalue(d, -target, 1.0, delta, seed=t) <= delta
        rows.append({"n": n, "clt_rejects": clt / trials, "betting_rejects": bet / trials})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    jobs = [(w, n, g, s, args.trials, args.target, args.delta)
            for w in range(len(WORLDS)) for n in args.sizes for g, s in METHODS]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(_one, jobs))
    clt = clt_at_the_boundary([20, 100, 300, 1000, 3000], 2000, args.target, args.delta)
    print(f"R = {args.target}, delta = {args.delta}, {args.trials} trials per row; "
          f"{time.perf_counter() - started:.0f} s on {args.jobs} processes\n")
    print("| world | n | guarantee | scheme | violation rate | mean E[q] - R E[q_top] (se) "
          "| median true cost / top |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['world']} | {r['n']} | {r['guarantee']} | {r['scheme']} | "
              f"{r['violation_rate']:.3f} | {r['mean_shortfall']:+.4f} ({r['shortfall_se']:.4f}) "
              f"| {r['median_cost']:.3f} |")
    print("\n| n | clt rejects a true null | betting rejects a true null |\n|---|---|---|")
    for r in clt:
        print(f"| {r['n']} | {r['clt_rejects']:.3f} | {r['betting_rejects']:.3f} |")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "clt": clt, "args": vars(args)},
                                       indent=1, default=str))


if __name__ == "__main__":
    main()
