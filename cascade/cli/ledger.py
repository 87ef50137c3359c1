"""``cascade report`` and ``cascade ledger recover``: reading and repairing a ledger.

Both find the ledger the same way: ``--ledger FILE`` (SQLite), ``--url-env NAME`` (the variable
holding a PostgreSQL URL), or the ``ledger:`` section of ``--config``; by default the file
``cascade-ledger.sqlite``. A PostgreSQL URL is never printed: output names user, host, port and
database only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cascade.cli.console import print_wide
from cascade.cli.drift import cmd_drift
from cascade.cli.where import default_config, open_for_cli, where_args
from cascade.formatting import plural, to_json, usd

__all__ = ["cmd_recover", "cmd_report", "register"]


def cmd_report(args: argparse.Namespace) -> int:
    from cascade.config import load_config
    from cascade.engine.limits import Limits
    from cascade.replay.report import ledger_report

    if getattr(args, "html", None):
        if getattr(args, "drift", False):
            print("cascade report: --drift prints its table in the terminal; the --html page "
                  "has its own drift panel: give one or the other", file=sys.stderr)
            return 2
        clash = [flag for flag, given in (("--json", getattr(args, "json", False)),
                                          ("--by key", getattr(args, "by", "task") == "key"))
                 if given]
        if clash:
            verb = "selects" if len(clash) == 1 else "select"
            print(f"cascade report: {' and '.join(clash)} {verb} the terminal report; --html "
                  "writes the page (its --key narrows it to one key): give one or the other",
                  file=sys.stderr)
            return 2
        return cmd_report_html(args)
    filters = [f"--{f}" for f in ("since", "until", "task", "key") if getattr(args, f, None)]
    if filters:
        print(f"cascade report: {', '.join(filters)} select what --html FILE shows; "
              "add --html FILE", file=sys.stderr)
        return 2
    ledger = open_for_cli(args)
    if getattr(args, "drift", False):
        try:
            return cmd_drift(args, ledger)
        finally:
            ledger.close()
    if getattr(args, "by", None) == "key":
        try:
            return _by_key(args, ledger)
        finally:
            ledger.close()
    try:
        report = ledger_report(ledger)
        config_path = default_config(args)
        if config_path:
            accounts = Limits(load_config(config_path), ledger).accounts
            report["budgets"] = accounts.status(keys=True)
    finally:
        ledger.close()
    if args.json:
        print(to_json(report, indent=2))
        return 0
    _print_report(ledger.where, report)
    return 0


def _by_key(args: argparse.Namespace, ledger: Any) -> int:
    from rich.console import Console
    from rich.table import Table

    from cascade.report.keys import key_report

    report = key_report(ledger)
    if args.json:
        print(to_json(report, indent=2))
        return 0
    total = sum(k["cost_usd"] for k in report["keys"].values())
    print(f"{ledger.where}: {plural(len(report['keys']), 'key')}, {usd(total)} total")
    table = Table()
    for column in ("key", "runs", "accepted", "calls", "cost USD", "saved USD", "unfinished"):
        table.add_column(column, justify="left" if column == "key" else "right")
    for name, k in report["keys"].items():
        saved = k.get("saved_usd")
        table.add_row(name or "(unnamed)", str(k["runs"]), str(k["accepted"]), str(k["calls"]),
                      usd(k["cost_usd"]), "-" if saved is None else usd(saved),
                      str(k["unfinished"]))
    Console().print(table)
    return 0


def cmd_report_html(args: argparse.Namespace) -> int:
    """``cascade report --html FILE``: the page of a period, one self-contained file."""
    from cascade.report.page import PlotlyMissing, report_page
    from cascade.report.period import Period, parse_since

    period = Period(
        since=parse_since(args.since) if args.since else None,
        until=parse_since(args.until, "--until") if args.until else None,
        task=args.task, key=args.key,
    )
    if period.since is not None and period.until is not None and period.since >= period.until:
        print(f"cascade report: --since {args.since} is not before --until {args.until}: the "
              "period is empty", file=sys.stderr)
        return 2
    ledger = open_for_cli(args)
    try:
        page = report_page(ledger, period, **page_context(args, ledger))
    except PlotlyMissing as exc:
        print(f"cascade report: {exc}", file=sys.stderr)
        return 1
    finally:
        ledger.close()
    out = Path(args.html)
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        print(f"cascade report: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"report: wrote {out} ({len(page.encode()) / 1e6:.1f} MB; {period.describe()})")
    return 0


def page_context(args: argparse.Namespace, ledger: Any) -> dict[str, Any]:
    """What the page reads from the config, when there is one: budgets, targets, ladders."""
    from cascade.config import load_config
    from cascade.engine.limits import Limits

    config_path = default_config(args)
    if not config_path:
        return {}
    config = load_config(config_path)
    return {
        "budgets": Limits(config, ledger).accounts.status(keys=True),
        "targets": {n: t.quality_target for n, t in config.tasks.items()
                    if t.quality_target is not None},
        "rungs": {n: [r.model for r in t.ladder] for n, t in config.tasks.items()},
    }


def _print_report(where: str, report: dict[str, Any]) -> None:
    from rich.table import Table

    print(f"{where}: {plural(report['runs'], 'run')}, {usd(report['total_cost_usd'])} total")
    table = Table()
    for column in (
        "task",
        "model",
        "runs/calls",
        "cost USD",
        "escalation",
        "accepted",
        "unfinished",
        "saved USD",
        "saved",
        "feedback",
        "agreement",
    ):
        table.add_column(column, justify="left" if column in ("task", "model") else "right")
    for task, t in report["tasks"].items():
        table.add_row(
            task,
            "(all)",
            str(t["runs"]),
            usd(t["cost_usd"]),
            f"{t['escalation_rate']:.1%}",
            _share(t["accepted_rate"]),
            str(t["unfinished"]),
            *_savings(t),
        )
        for model, m in t["models"].items():
            table.add_row(
                "", model, str(m["calls"]), usd(m["cost_usd"]), "", _share(m["accepted_rate"]),
                str(m["unfinished"]), *_savings(m),
            )
    print_wide(table)
    if report["priced_runs"]:
        print(
            f"saved against always-top: {usd(report['saved_usd'])} "
            f"({_share(report['saved_share'])} of {usd(report['top_usd'])}) over "
            f"{plural(report['priced_runs'], 'run')}, {report['top_exact_runs']} of them exact "
            "(the top rung ran), the rest estimated (docs/dashboard.md); saved, feedback and "
            "agreement of a model are over the runs it answered"
        )
    for task, t in report["tasks"].items():
        shadowed = t.get("shadowed")
        if shadowed:
            print(
                f"{task}: on {plural(shadowed['runs'], 'shadowed run')} the top rung's own bill "
                f"gives a saving of {usd(shadowed['saved_usd'])}; the estimate said "
                f"{usd(shadowed['estimated_saved_usd'])}"
            )
    for key, k in report.get("keys", {}).items():
        print(
            f"key {key}: {plural(k['runs'], 'run')}, {usd(k['cost_usd'])}, saved "
            f"{usd(k['saved_usd'])} ({_share(k['saved_share'])}), accepted "
            f"{_share(k['accepted_rate'])}, feedback {_score(k['feedback_mean'])}, agreement "
            f"{_share(k['shadow_agreement'])}"
        )
    for task, t in report["tasks"].items():
        if t["usage_estimated"]:
            print(
                f"{task}: {t['usage_estimated']} step(s) billed at an estimate "
                "(the provider reported no usage)"
            )
    for task, t in report["tasks"].items():
        if t.get("shadow_calls"):
            print(
                f"{task}: {t['shadow_calls']} shadow call(s) cost {usd(t['shadow_cost_usd'])} "
                "(included above; not part of any run's cost)"
            )
    if report["unfinished"]:
        print(
            f"{report['unfinished']} unfinished call(s) (pending, or lost by a process that "
            "died or was cancelled) are counted at their reserved worst case"
        )
    for budget in report.get("budgets", []):
        scope = "global" if budget["scope"] == "global" else f"task {budget['scope']}"
        share = budget["spent_usd"] / budget["limit_usd"] if budget["limit_usd"] else 1.0
        print(
            f"{budget['period']} budget ({scope}): {usd(budget['spent_usd'])} of "
            f"{usd(budget['limit_usd'])} ({share:.1%})"
        )


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _savings(row: dict[str, Any]) -> tuple[str, str, str, str]:
    """The saved, feedback and agreement cells of a task's or model's row."""
    if not row.get("priced_runs"):
        return "-", "-", _score(row["feedback_mean"]), _share(row["shadow_agreement"])
    return (usd(row["saved_usd"]), _share(row["saved_share"]), _score(row["feedback_mean"]),
            _share(row["shadow_agreement"]))


def cmd_recover(args: argparse.Namespace) -> int:
    """Settle the pending rows of dead processes as lost (opening the ledger does it)."""
    ledger = open_for_cli(args)
    try:
        lost = ledger.recovered
        pending = ledger.query("SELECT COUNT(*) AS n FROM steps WHERE status = 'pending'")
    finally:
        ledger.close()
    cost = sum(float(r["reserved_usd"]) for r in lost)
    print(
        f"{ledger.where}: settled {len(lost)} pending step(s) of dead processes as lost "
        f"({usd(cost)} at their reserved worst case); {int(pending[0]['n'])} pending step(s) "
        "of live processes left alone"
    )
    return 0


def register(sub: Any) -> None:
    """Add ``report`` and ``ledger recover`` to the ``cascade`` command's subparsers."""
    report = sub.add_parser(
        "report",
        help="spend, calls and escalation rate from the ledger",
        description="Summarise the ledger per task and per model.",
    )
    where_args(report)
    report.add_argument("--json", action="store_true", help="print JSON for scripts")
    report.add_argument(
        "--drift",
        action="store_true",
        help="per task, rung and week: "
        "acceptance, accepted quality from feedback, cost per run; flags weeks "
        "below tasks.T.quality_target (from --config) or --target",
    )
    report.add_argument("--target", type=float, help="with --drift: the quality target")
    report.add_argument(
        "--by",
        choices=["task", "key"],
        default="task",
        help="group by task and model (default) or by gateway key name (named keys: "
        "cascade keys)",
    )
    report.add_argument(
        "--html",
        metavar="FILE",
        help="write the report as one self-contained HTML page (charts of spend, savings, "
        "escalation, latency, errors, drift and budgets; opens offline; docs/dashboard.md)",
    )
    report.add_argument("--since", help="with --html: from this date (YYYY-MM-DD or ISO, UTC)")
    report.add_argument("--until", help="with --html: up to this date (excluded)")
    report.add_argument("--task", help="with --html: this task only")
    report.add_argument("--key", help="with --html: the runs of this gateway key name only")
    report.add_argument(
        "--min-evidence",
        type=int,
        default=20,
        help="with --drift: scores needed to flag a week (default 20)",
    )
    report.set_defaults(handler=cmd_report)

    ledger = sub.add_parser(
        "ledger", help="ledger maintenance", description="Maintenance commands for the ledger."
    )
    commands = ledger.add_subparsers(dest="ledger_command", required=True, metavar="COMMAND")
    recover = commands.add_parser(
        "recover",
        help="settle the pending steps of dead processes as lost",
        description="A step row is written as pending before its model call and settled after "
        "it. Rows left pending by a process that died are settled as lost at their reserved "
        "worst case (opening the ledger does this too); live processes' rows are left alone.",
    )
    where_args(recover)
    recover.set_defaults(handler=cmd_recover)
