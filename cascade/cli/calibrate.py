"""``cascade calibrate``: the cheapest cascade that keeps quality >= R x always-top, on a
train file or on the labelled runs of a config's ledger."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cascade.cli.console import fmt, quiet, ratio, say
from cascade.formatting import to_json, usd

__all__ = ["cmd_calibrate", "register"]


def _target_refused(target: float, delta: float) -> str | None:
    """Why ``--target-quality``/``--delta`` cannot be run as given, before any data is read."""
    if not 0 < target < math.inf:
        return "--target-quality must be a positive fraction of always-top's quality, e.g. 0.9"
    # quality scores are in [0, 1], so R >= 2 asks the cascade to double always-top's quality:
    # nobody means that, while 90 for 90% is a common slip
    if target >= 2:
        use = f"use {target / 100:g}" if target <= 100 else "e.g. 0.9"
        return (
            f"--target-quality {target:g} looks like a percentage; it is a fraction of "
            f"always-top's quality: {use}"
        )
    if not 0 < delta < 1:
        return f"--delta {delta:g} is not a probability between 0 and 1 (0.1 means 90% confidence)"
    return None


def _bound_refused(bound: str) -> str | None:
    if bound == "clt":
        return (
            "--bound clt was removed: the normal approximation is not valid at any sample size "
            "when losses are rare and large (it rejected a true null 36% of the time in "
            "benchmarks/validity.py); use the default, --bound betting"
        )
    return None


def _source_refused(args: argparse.Namespace) -> str | None:
    """Why the train data is named wrongly: a TRAIN file or --from-ledger, exactly one."""
    if args.from_ledger and args.train:
        return "give a TRAIN file or --from-ledger, not both"
    if not args.from_ledger and not args.train:
        return "give a TRAIN file (a replay dataset) or --from-ledger (the config's ledger)"
    if not args.from_ledger:
        given = [
            f
            for f, v in (
                ("--url-env", args.url_env),
                ("--since", args.since),
                ("--until", args.until),
            )
            if v
        ]
        if given:
            return f"{', '.join(given)} choose(s) what --from-ledger reads; add --from-ledger"
    return None


@contextmanager
def _train(args: argparse.Namespace) -> Iterator[tuple[str, str | None]]:
    """The train file and task: TRAIN as given, or the ledger's labelled runs."""
    if not args.from_ledger:
        yield args.train, args.task
        return
    from cascade.cli.feedback import ledger_train

    with ledger_train(
        args.config,
        task=args.task,
        url_env=args.url_env,
        since=args.since,
        until=args.until,
        say=say,
    ) as (train, task):
        yield train, task


def cmd_calibrate(args: argparse.Namespace) -> int:
    from cascade.calibration.calibrate import calibrate, write_calibrated

    refused = (
        _source_refused(args)
        or _target_refused(args.target_quality, args.delta)
        or _bound_refused(args.bound)
    )
    if refused:
        say(f"error: {refused}")
        return 2
    if args.target_quality >= 1:
        # said before the run: the run itself would only end in "keep the top rung alone"
        say(
            f"note: --target-quality {args.target_quality:g} asks for always-top's quality or "
            "more; no finite sample certifies matching the top model unless the cascade truly "
            "beats it, so expect to keep the top rung alone. Try --target-quality 0.98 or lower."
        )
    quiet()
    with _train(args) as (train, task):
        result = calibrate(
            args.config,
            train,
            target_quality=args.target_quality,
            test=args.test,
            task=task,
            say=say,
            method=args.method,
            delta=args.delta,
            fit_fraction=args.fit_fraction,
            seed=args.seed,
            text_features=args.text_features,
            bound=args.bound,
            scheme=args.scheme,
            guarantee=args.guarantee,
        )
    report = result.as_json()
    if args.json:
        Path(args.json).write_text(to_json(report, indent=2))
        say(f"wrote {args.json}")
    if result.status != "ok":
        say(f"calibration failed: {result.message}")
        return 1
    for label, numbers in (("train", result.train), ("test", result.test)):
        if not numbers:
            continue
        top = numbers["baselines"]["always_top"]
        ci = numbers.get("quality_ratio_ci95") or [None, None]
        print(
            f"{label}: n={numbers['n']} cost/query {usd(numbers['cost_per_query'])} "
            f"({fmt(ratio(numbers['cost_per_query'], top['cost_per_query']), '.1%')} "
            "of always-top), "
            f"quality {numbers['quality']:.4f} "
            f"({fmt(ratio(numbers['quality'], top['quality']), '.1%')} of always-top, "
            f"95% CI {fmt(ci[0], '.1%')}..{fmt(ci[1], '.1%')}), "
            f"escalation {', '.join(f'{e:.1%}' for e in numbers['escalation_rate']) or '-'}"
        )
    print(result.message)
    if result.guarantee is not None:
        g = result.guarantee
        if g["certified_cheaper_than_top"]:  # the top rung alone needs no certificate
            print(f"guarantee: {g['statement']}")
        if args.verbose:
            tested = (
                f"{g['bound']} bound, delta = {g['delta']:g}; "
                if g["guarantee"] == "pac"
                else "expected loss <= 0; "
            )
            chosen = f", chosen p = {g['p_value']:.4g}" if g["guarantee"] == "pac" else ""
            print(
                f"method: {g['method']}, {g['scheme']}, {tested}fitted on {g['fit_queries']} "
                f"train queries, certified on {g['certify_queries']}; {g['certified']} of "
                f"{g['candidates']} candidate policies certified{chosen}; assumes future "
                "queries are drawn like the train file's"
            )
    elif args.verbose:
        print(f"method: {result.guard}")
    write_calibrated(result, args.out, command="cascade " + " ".join(sys.argv[1:]))
    say(f"wrote {args.out}")
    if args.plot:
        from cascade.replay.plot import plot_tradeoff

        plot_tradeoff(
            {result.task: result.test or result.train},
            args.plot,
            frontier={result.task: result.frontier},
            data="test" if result.test else "train",
        )
        say(f"wrote {args.plot}")
    return 0


def register(sub: Any) -> None:
    cal = sub.add_parser(
        "calibrate",
        help="choose the cheapest cascade policy that meets a quality target, with a guarantee",
        description="Learn a quality_model per rung (from the rungs' candidate evaluators, "
        "log-probabilities, agreement and answer shape) and a prompt-only router on part of "
        "TRAIN, search which rungs to keep and every threshold, then certify the choice on "
        "the rest of TRAIN by Learn-then-Test: with probability >= 1 - delta the expected "
        "quality is >= R x always-top's. --method thresholds runs the earlier per-evaluator "
        "threshold search instead.",
    )
    cal.add_argument("config", help="YAML config file")
    cal.add_argument("train", nargs="?", help="labelled replay dataset to tune on")
    cal.add_argument(
        "--from-ledger",
        action="store_true",
        help="tune on the labelled runs of the config's ledger instead of TRAIN (runs logged "
        "with content; labels: user feedback, and agreement with the top rung where the task "
        "sets shadow_labels: true)",
    )
    cal.add_argument("--url-env", help="with --from-ledger: variable holding a PostgreSQL URL")
    cal.add_argument("--since", help="with --from-ledger: runs from this date (UTC) on")
    cal.add_argument("--until", help="with --from-ledger: runs before this date (UTC)")
    cal.add_argument(
        "--target-quality",
        type=float,
        required=True,
        metavar="R",
        help="required quality as a fraction of always-top quality, e.g. 0.95",
    )
    cal.add_argument("--test", help="held-out replay dataset to report on")
    cal.add_argument("--out", required=True, help="where to write the calibrated YAML")
    cal.add_argument("--task", help="task to calibrate (default: the only one)")
    cal.add_argument("--json", metavar="OUT", help="also write the full result as JSON")
    cal.add_argument("--plot", metavar="OUT.png", help="plot the trade-off and frontier")
    cal.add_argument(
        "--method",
        choices=["policy", "thresholds"],
        default="policy",
        help="policy (default): learned estimates + Learn-then-Test; thresholds: the earlier "
        "one-threshold-per-rung search with a heuristic guard",
    )
    cal.add_argument(
        "--delta",
        type=float,
        default=0.1,
        help="allowed probability that the quality target is missed (default 0.1)",
    )
    cal.add_argument(
        "--bound",
        choices=["betting", "clt"],
        default="betting",
        help="betting: a p-value valid at every sample size (the normal approximation, clt, "
        "was removed: it is not valid at any size when losses are rare and large)",
    )
    cal.add_argument(
        "--guarantee",
        choices=["pac", "expected"],
        default="pac",
        help="pac (default): with probability 1 - delta, quality >= R x always-top's; "
        "expected: on average over calibration sets (conformal risk control), cheaper",
    )
    cal.add_argument(
        "--fit-fraction",
        type=float,
        default=0.5,
        help="share of TRAIN used to fit and search; the rest certifies (default 0.5)",
    )
    cal.add_argument(
        "--scheme",
        choices=["auto", "fixed", "holdout", "crossfit"],
        default="auto",
        help="auto (default): fixed when the cheaper rungs have a bounded threshold (logprob, "
        "self_confidence, agreement, llm_judge), else holdout; fixed: one level of those "
        "thresholds per family of kept rungs, certified on every train query; holdout: learn "
        "a quality model on one part, certify on the other; crossfit: approximate (the "
        "certificate does not cover the refit model)",
    )
    cal.add_argument("--seed", type=int, default=0, help="seed of the fit/certify split")
    cal.add_argument(
        "--verbose",
        action="store_true",
        help="also print how the guarantee was obtained (method, bound, sizes, p-value)",
    )
    cal.add_argument(
        "--text-features",
        action="store_true",
        help="also hash the prompt's word n-grams into the estimates (needs more data)",
    )
    cal.set_defaults(handler=cmd_calibrate)
