"""The replay commands of ``cascade``: ``bench``, ``calibrate`` and ``data import``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cascade.errors import ConfigError
from cascade.formatting import install_hint, plural, to_json, usd

__all__ = ["register"]

# Where ``cascade demo`` writes by default: one folder, named in its output and in the
# repository's .gitignore, so a demo run in a clone leaves nothing to commit.
DEMO_FOLDER = Path("cascade-demo")
DEMO_PLOT = DEMO_FOLDER / "tradeoff.png"


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_bench(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for name, t in report["tasks"].items():
        ladder = " -> ".join(t["ladder"])
        table = Table(title=f"task {name}: {plural(t['n'], 'query')}, ladder {ladder}")
        for column in ("", "cost/query USD", "quality", "cost vs top", "quality vs top"):
            table.add_column(column, justify="left" if not column else "right")
        top = t["baselines"]["always_top"]
        rows = [
            ("cascade", t),
            ("always top", top),
            ("always first", t["baselines"]["always_first"]),
            ("oracle", t["baselines"]["oracle"]),
        ]
        for label, row in rows:
            cost_ratio = (
                row["cost_per_query"] / top["cost_per_query"] if top["cost_per_query"] else None
            )
            quality_ratio = row["quality"] / top["quality"] if top["quality"] else None
            table.add_row(
                label,
                f"{row['cost_per_query']:.7f}",
                f"{row['quality']:.4f}",
                _fmt(cost_ratio, ".1%"),
                _fmt(quality_ratio, ".1%"),
            )
        console.print(table)
        shares = ", ".join(
            f"{k} {s:.1%}" for k, s in zip(t["ladder"], t["accepted_share"], strict=True)
        )
        escal = ", ".join(
            f"past {k} {e:.1%}" for k, e in zip(t["ladder"], t["escalation_rate"], strict=False)
        )
        console.print(f"  answered at: {shares}")
        console.print(
            f"  escalation: {escal or '-'}; returned unaccepted: "
            f"{t['unaccepted_share']:.1%}; failed queries: {t['failed']}; "
            f"error steps: {t['error_steps']}"
        )
        lat = t["latency_ms"]
        console.print(
            "  recorded latency ms: "
            + (
                "not recorded"
                if lat is None
                else f"p50 {lat['p50']:.0f}, p95 {lat['p95']:.0f}, p99 {lat['p99']:.0f}"
            )
        )
        ovh = t["engine_overhead_ms"]
        console.print(f"  engine overhead ms: p50 {ovh['p50']:.3f}, p99 {ovh['p99']:.3f}")
    qps = report.get("queries_per_second")
    if qps:
        console.print(f"{plural(report['queries'], 'query')} replayed at {qps:,.0f} queries/s")


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from cascade.replay.bench import run_bench

    _quiet()
    with Progress(transient=True, disable=not sys.stderr.isatty()) as bar:
        job = bar.add_task("replaying", total=None)
        result = run_bench(
            args.config,
            args.dataset,
            task=args.task,
            progress=lambda done, total: bar.update(job, completed=done, total=total),
        )
    report = result.as_json()
    for warning in result.warnings:
        _say(f"warning: {warning}")
    print_bench(report)
    if args.json:
        Path(args.json).write_text(to_json(report, indent=2))
        _say(f"wrote {args.json}")
    if args.plot:
        from cascade.replay.plot import plot_tradeoff

        plot_tradeoff(
            report["tasks"], args.plot, frontier=_frontier(args.frontier), data=report["split"]
        )
        _say(f"wrote {args.plot}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Replay the bundled GSM8K recordings through the real engine: no key, no network."""
    from cascade.demo import DATASET, DEMO_CONFIG, NOTICE
    from cascade.replay.bench import run_bench

    _quiet()
    report = run_bench(DEMO_CONFIG, DATASET).as_json()
    print(
        f"cascade demo: {report['queries']} GSM8K questions ({report['split']} split) with "
        "answers recorded from Mixtral-8x7B and GPT-4 (RouteLLM, Apache-2.0; see "
        f"{NOTICE.name} in {NOTICE.parent}).\nThe ladder tries Mixtral first and escalates to "
        f"GPT-4 when the worked answer fails text-only checks ({DEMO_CONFIG})."
    )
    print_bench(report)
    for name, t in report["tasks"].items():
        top, oracle = t["baselines"]["always_top"], t["baselines"]["oracle"]
        print(
            f"{name}: the cascade escalated {t['escalation_rate'][0]:.1%} of queries and cost "
            f"{_fmt(_ratio(t['cost_per_query'], top['cost_per_query']), '.1%')} of always-GPT-4 "
            f"for {_fmt(_ratio(t['quality'], top['quality']), '.1%')} of its quality; the oracle "
            f"(escalate exactly when Mixtral is wrong) costs "
            f"{_fmt(_ratio(oracle['cost_per_query'], top['cost_per_query']), '.1%')} for "
            f"{_fmt(_ratio(oracle['quality'], top['quality']), '.1%')}."
        )
    if args.json:
        Path(args.json).write_text(to_json(report, indent=2))
        print(f"report: wrote {args.json}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"plot: not drawn (matplotlib is not installed: {install_hint('plot')})")
        return 0
    from cascade.replay.plot import plot_tradeoff

    plot = Path(args.plot)
    try:
        if plot == DEMO_PLOT:
            DEMO_FOLDER.mkdir(exist_ok=True)
        plot_tradeoff(report["tasks"], plot, data=report["split"])
    except OSError as exc:  # a read-only folder: the numbers above stand on their own
        print(f"plot: not written ({exc}); pass --plot PATH to choose where")
        return 0
    print(f"plot: wrote {plot.name} in the folder {plot.resolve().parent}")
    return 0


def _frontier(path: str | None) -> dict[str, Any] | None:
    """The calibration curve saved by ``cascade calibrate --json``, to draw beside the bench."""
    if not path:
        return None
    try:
        saved = json.loads(Path(path).read_text())
        return {saved["task"]: [tuple(p) for p in saved["frontier"]]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"not a calibration result from cascade calibrate --json: {exc}", path=path
        ) from exc


def _quiet() -> None:
    """Replays log every step; a calibration run wants only its own report."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    library = logging.getLogger("cascade")
    library.setLevel(max(library.getEffectiveLevel(), logging.WARNING))


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
        say=_say,
    ) as (train, task):
        yield train, task


def cmd_calibrate(args: argparse.Namespace) -> int:
    from cascade.calibration.calibrate import calibrate, write_calibrated

    refused = _source_refused(args) or _target_refused(args.target_quality, args.delta)
    if refused:
        _say(f"error: {refused}")
        return 2
    if args.target_quality >= 1:
        # said before the run: the run itself would only end in "keep the top rung alone"
        _say(
            f"note: --target-quality {args.target_quality:g} asks for always-top's quality or "
            "more; no finite sample certifies matching the top model unless the cascade truly "
            "beats it, so expect to keep the top rung alone. Try --target-quality 0.98 or lower."
        )
    _quiet()
    with _train(args) as (train, task):
        result = calibrate(
            args.config,
            train,
            target_quality=args.target_quality,
            test=args.test,
            task=task,
            say=_say,
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
        _say(f"wrote {args.json}")
    if result.status != "ok":
        _say(f"calibration failed: {result.message}")
        return 1
    for label, numbers in (("train", result.train), ("test", result.test)):
        if not numbers:
            continue
        top = numbers["baselines"]["always_top"]
        ci = numbers.get("quality_ratio_ci95") or [None, None]
        print(
            f"{label}: n={numbers['n']} cost/query {usd(numbers['cost_per_query'])} "
            f"({_fmt(_ratio(numbers['cost_per_query'], top['cost_per_query']), '.1%')} "
            "of always-top), "
            f"quality {numbers['quality']:.4f} "
            f"({_fmt(_ratio(numbers['quality'], top['quality']), '.1%')} of always-top, "
            f"95% CI {_fmt(ci[0], '.1%')}..{_fmt(ci[1], '.1%')}), "
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
                else "risk 0 with the n + 1 correction; "
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
    _say(f"wrote {args.out}")
    if args.plot:
        from cascade.replay.plot import plot_tradeoff

        plot_tradeoff(
            {result.task: result.test or result.train},
            args.plot,
            frontier={result.task: result.frontier},
            data="test" if result.test else "train",
        )
        _say(f"wrote {args.plot}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from cascade.replay.importers import IMPORTERS, import_dataset

    summary = import_dataset(
        args.name,
        args.source if args.source is not None else IMPORTERS[args.name].default_url,
        args.out,
        split=args.split,
        seed=args.seed,
        say=lambda line: _say(f"assumed: {line}"),
    )
    print(
        f"wrote {plural(summary.records, 'query')} to {summary.out} "
        f"({plural(summary.skipped, 'source row')} skipped; models: {', '.join(summary.models)})"
    )
    return 0


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="benchmark the bundled GSM8K recordings: no API key, no network",
        description="Replay 300 bundled GSM8K questions (answers recorded from Mixtral-8x7B "
        "and GPT-4 by RouteLLM) through the real engine, as cascade bench does, and print the "
        "escalation rate, cost and quality against always-top and the oracle.",
    )
    demo.add_argument(
        "--plot",
        metavar="OUT.png",
        default=str(DEMO_PLOT),
        help=f"where to write the cost/quality plot (default {DEMO_PLOT}; needs matplotlib)",
    )
    demo.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    demo.set_defaults(handler=cmd_demo)

    bench = sub.add_parser(
        "bench",
        help="replay recorded answers through a cascade and measure it",
        description="Replay every query of a dataset through the real engine, with every "
        "provider swapped for recordings, and report escalation, cost and quality against "
        "always-top, always-first and the oracle.",
    )
    bench.add_argument("config", help="YAML config file")
    bench.add_argument("dataset", help="replay dataset (JSONL)")
    bench.add_argument("--task", help="task for queries that do not name one")
    bench.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    bench.add_argument("--plot", metavar="OUT.png", help="write a cost/quality plot (matplotlib)")
    bench.add_argument(
        "--frontier",
        metavar="CALIBRATION.json",
        help="draw the calibration curve saved by cascade calibrate --json",
    )
    bench.set_defaults(handler=cmd_bench)

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
        choices=["betting"],
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

    data = sub.add_parser("data", help="dataset tools", description="Dataset tools.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    imp = data_sub.add_parser(
        "import",
        help="convert a public dataset into the replay format",
        description="Convert routellm-gsm8k, routerbench or alpacaeval into replay JSONL. "
        "SOURCE is a local folder or the dataset's public URL. Every estimate made (tokens, "
        "prices, dropped rows) is printed.",
    )
    imp.add_argument("name", choices=["routellm-gsm8k", "routerbench", "alpacaeval"])
    imp.add_argument(
        "source",
        nargs="?",
        help="local folder or URL (default: the dataset's public URL; give a folder offline)",
    )
    imp.add_argument("out", help="output JSONL file")
    imp.add_argument("--split", choices=["train", "test", "all"], default="all")
    imp.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    imp.set_defaults(handler=cmd_import)

    from cascade.cli.feedback import register_data

    register_data(data_sub)
