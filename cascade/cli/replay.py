"""The replay commands of ``cascade``: ``demo``, ``bench`` and ``data import`` (``calibrate`` is in
``cli.calibrate``)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from cascade.cli.calibrate import register as calibrate_register
from cascade.cli.console import fmt, quiet, ratio, say
from cascade.errors import ConfigError
from cascade.formatting import install_hint, plural, to_json

__all__ = ["register"]

# Where ``cascade demo`` writes by default: one folder, named in its output and in the
# repository's .gitignore, so a demo run in a clone leaves nothing to commit.
DEMO_FOLDER = Path("cascade-demo")
DEMO_PLOT = DEMO_FOLDER / "tradeoff.png"
DEMO_HTML = DEMO_FOLDER / "report.html"


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
                fmt(cost_ratio, ".1%"),
                fmt(quality_ratio, ".1%"),
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

    quiet()
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
        say(f"warning: {warning}")
    print_bench(report)
    if args.json:
        Path(args.json).write_text(to_json(report, indent=2))
        say(f"wrote {args.json}")
    if args.plot:
        from cascade.replay.plot import plot_tradeoff

        plot_tradeoff(
            report["tasks"], args.plot, frontier=_frontier(args.frontier), data=report["split"]
        )
        say(f"wrote {args.plot}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Replay the bundled GSM8K recordings through the real engine: no key, no network."""
    from cascade.demo import DATASET, DEMO_CONFIG, NOTICE
    from cascade.ledger import Ledger
    from cascade.replay.bench import run_bench

    quiet()
    with tempfile.TemporaryDirectory() as folder:
        # The replay's ledger, for the HTML report only (the numbers printed do not read it).
        ledger = Ledger(Path(folder) / "demo-ledger.sqlite")
        try:
            report = run_bench(DEMO_CONFIG, DATASET, ledger=ledger).as_json()
            page = _demo_page(ledger, args.html)
        finally:
            ledger.close()
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
            f"{fmt(ratio(t['cost_per_query'], top['cost_per_query']), '.1%')} of always-GPT-4 "
            f"for {fmt(ratio(t['quality'], top['quality']), '.1%')} of its quality; the oracle "
            f"(escalate exactly when Mixtral is wrong) costs "
            f"{fmt(ratio(oracle['cost_per_query'], top['cost_per_query']), '.1%')} for "
            f"{fmt(ratio(oracle['quality'], top['quality']), '.1%')}."
        )
    if args.json:
        Path(args.json).write_text(to_json(report, indent=2))
        print(f"report: wrote {args.json}")
    print(page)
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


def _demo_page(ledger: Any, out: str) -> str:
    """Write the HTML report of the demo's replay; returns the line that says where (or why
    not)."""
    from cascade.config import load_config
    from cascade.demo import DEMO_CONFIG
    from cascade.report.page import PlotlyMissing, report_page
    from cascade.report.period import Period

    config = load_config(DEMO_CONFIG)
    try:
        page = report_page(ledger, Period(), where="cascade demo's replay of GSM8K", rungs={
            n: [r.model for r in t.ladder] for n, t in config.tasks.items()})
    except PlotlyMissing as exc:
        return f"html: not written ({exc})"
    path = Path(out)
    try:
        if path == DEMO_HTML:
            DEMO_FOLDER.mkdir(exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        return f"html: not written ({exc}); pass --html PATH to choose where"
    return (f"html: wrote {path.name} in the folder {path.resolve().parent} (spend, savings "
            "against always-GPT-4, escalation and latency of this replay; open it in a browser)")


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


def cmd_import(args: argparse.Namespace) -> int:
    from cascade.replay.importers import IMPORTERS, import_dataset

    summary = import_dataset(
        args.name,
        args.source if args.source is not None else IMPORTERS[args.name].default_url,
        args.out,
        split=args.split,
        seed=args.seed,
        say=lambda line: say(f"assumed: {line}"),
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
    demo.add_argument(
        "--html",
        metavar="OUT.html",
        default=str(DEMO_HTML),
        help=f"where to write the HTML report of the replay (default {DEMO_HTML}; needs plotly)",
    )
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

    calibrate_register(sub)

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
