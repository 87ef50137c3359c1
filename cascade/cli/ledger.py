"""``cascade report`` and ``cascade ledger recover``: reading and repairing a ledger.

Both find the ledger the same way: ``--ledger FILE`` (SQLite), ``--url-env NAME`` (the variable
holding a PostgreSQL URL), or the ``ledger:`` section of ``--config``; by default the file
``cascade-ledger.sqlite``. A PostgreSQL URL is never printed: output names user, host, port and
database only.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cascade.errors import ConfigError, LedgerError

if TYPE_CHECKING:
    from cascade.ledger import Ledger

__all__ = ["cmd_recover", "cmd_report", "open_for_cli", "register", "where_args"]

DEFAULT_LEDGER = "cascade-ledger.sqlite"


def open_for_cli(args: argparse.Namespace) -> Ledger:
    """The ledger the command line names.

    Raises:
        ConfigError: no such file, an unset variable, or a file that is not a ledger.
        LedgerError: the database cannot be reached.
    """
    from cascade.config import load_config, resolve_path
    from cascade.ledger import Ledger, open_ledger

    if args.url_env:
        url = os.environ.get(args.url_env, "")
        if not url:
            raise ConfigError(f"environment variable {args.url_env} is not set",
                              location="--url-env")
        return Ledger(url=url)
    if args.ledger is None and args.config:
        config = load_config(args.config).ledger
        if not config.postgres and config.path:
            # Reading must not create an empty ledger where the config's runs never wrote.
            path = Path(resolve_path(config.path, args.config))
            if not path.exists():
                raise ConfigError("ledger file not found (run something first)",
                                  path=str(path))
        ledger = open_ledger(config, config_path=args.config)
        if ledger is None:
            raise ConfigError("the config turns the ledger off (ledger.path: null)",
                              path=args.config, location="ledger")
        return ledger
    path = Path(args.ledger or DEFAULT_LEDGER)
    if not path.exists():
        raise ConfigError(
            "ledger file not found (run something first, or pass --ledger)", path=str(path)
        )
    try:
        return Ledger(path)
    except LedgerError as exc:
        raise ConfigError(f"not a cascade ledger: {exc.message}", path=str(path)) from exc


def cmd_report(args: argparse.Namespace) -> int:
    from cascade.cli.drift import cmd_drift
    from cascade.config import load_config
    from cascade.engine.limits import Limits
    from cascade.replay.report import ledger_report

    ledger = open_for_cli(args)
    if getattr(args, "drift", False):
        try:
            return cmd_drift(args, ledger)
        finally:
            ledger.close()
    try:
        report = ledger_report(ledger)
        if args.config:
            guard = Limits(load_config(args.config), ledger).guard
            report["budgets"] = guard.status() if guard else []
    finally:
        ledger.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print_report(ledger.where, report)
    return 0


def _print_report(where: str, report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    print(f"{where}: {report['runs']} runs, ${report['total_cost_usd']:.6f} total")
    table = Table()
    for column in ("task", "model", "runs/calls", "cost USD", "escalation", "accepted",
                   "unfinished"):
        table.add_column(column, justify="left" if column in ("task", "model") else "right")
    for task, t in report["tasks"].items():
        accepted = "-" if t["accepted_rate"] is None else f"{t['accepted_rate']:.1%}"
        table.add_row(
            task,
            "(all)",
            str(t["runs"]),
            f"{t['cost_usd']:.6f}",
            f"{t['escalation_rate']:.1%}",
            accepted,
            str(t["unfinished"]),
        )
        for model, m in t["models"].items():
            table.add_row("", model, str(m["calls"]), f"{m['cost_usd']:.6f}", "", "",
                          str(m["unfinished"]))
    Console().print(table)
    for task, t in report["tasks"].items():
        if t["usage_estimated"]:
            print(f"{task}: {t['usage_estimated']} step(s) billed at an estimate "
                  "(the provider reported no usage)")
    for task, t in report["tasks"].items():
        if t.get("shadow_calls"):
            print(f"{task}: {t['shadow_calls']} shadow call(s) cost ${t['shadow_cost_usd']:.6f} "
                  "(included above; not part of any run's cost)")
    if report["unfinished"]:
        print(f"{report['unfinished']} unfinished call(s) (pending, or lost by a process that "
              "died or was cancelled) are counted at their reserved worst case")
    for budget in report.get("budgets", []):
        scope = "global" if budget["scope"] == "global" else f"task {budget['scope']}"
        share = budget["spent_usd"] / budget["limit_usd"] if budget["limit_usd"] else 1.0
        print(
            f"{budget['period']} budget ({scope}): ${budget['spent_usd']:.6f} of "
            f"${budget['limit_usd']:.2f} ({share:.1%})"
        )


def cmd_recover(args: argparse.Namespace) -> int:
    """Settle the pending rows of dead processes as lost (opening the ledger does it)."""
    ledger = open_for_cli(args)
    try:
        lost = ledger.recovered
        pending = ledger.query("SELECT COUNT(*) AS n FROM steps WHERE status = 'pending'")
    finally:
        ledger.close()
    cost = sum(float(r["reserved_usd"]) for r in lost)
    print(f"{ledger.where}: settled {len(lost)} pending step(s) of dead processes as lost "
          f"(${cost:.6f} at their reserved worst case); {int(pending[0]['n'])} pending step(s) "
          "of live processes left alone")
    return 0


def where_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ledger", help=f"SQLite ledger file (default: {DEFAULT_LEDGER})")
    parser.add_argument("--url-env", help="variable holding a PostgreSQL ledger URL")
    parser.add_argument("--config", help="read the ledger from this config's ledger: section "
                        "(report: also show spend against its budgets)")


def register(sub: Any) -> None:
    """Add ``report`` and ``ledger recover`` to the ``cascade`` command's subparsers."""
    report = sub.add_parser(
        "report",
        help="spend, calls and escalation rate from the ledger",
        description="Summarise the ledger per task and per model.",
    )
    where_args(report)
    report.add_argument("--json", action="store_true", help="print JSON for scripts")
    report.add_argument("--drift", action="store_true", help="per task, rung and week: "
                        "acceptance, accepted quality from feedback, cost per run; flags weeks "
                        "below tasks.T.quality_target (from --config) or --target")
    report.add_argument("--target", type=float, help="with --drift: the quality target")
    report.add_argument("--min-evidence", type=int, default=20,
                        help="with --drift: scores needed to flag a week (default 20)")
    report.set_defaults(handler=cmd_report)

    ledger = sub.add_parser("ledger", help="ledger maintenance",
                            description="Maintenance commands for the ledger.")
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
