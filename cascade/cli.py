"""The ``cascade`` command. Every failure is one clear line on stderr and a non-zero exit code.

Exit codes: 0 success, 1 the cascade ran but failed (provider faults, exhausted ladder),
2 a usage or configuration mistake (bad config, missing API key, bad dataset, a refused
parameter such as ``--max-tokens`` above the model's ``max_output_tokens``).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cascade import cli_replay, server_cli
from cascade.config import load_config, resolve_path
from cascade.engine import Cascade
from cascade.errors import (
    CascadeError,
    CascadeExhausted,
    ConfigError,
    DatasetError,
    ProviderError,
    RequestError,
)
from cascade.ledger import Ledger, check_ledger_path
from cascade.limits import Limits
from cascade.logs import configure_cli
from cascade.report import ledger_report

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]
DEFAULT_LEDGER = "cascade-ledger.sqlite"


def _version() -> str:
    from cascade import __version__

    return __version__


def _say(message: str) -> None:
    print(message, file=sys.stderr)


# -- commands -------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {}
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        params["temperature"] = args.temperature
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    with Cascade.from_yaml(args.config) as engine:
        try:
            result = engine.complete(args.task, prompt, query_id=args.query_id, **params)
        except CascadeExhausted as exc:
            result = exc.result
            print(result.text)
            _say(_summary(result) + " (no rung passed: on_exhausted is raise)")
            return 1
    if args.json:
        print(json.dumps(_result_json(result), indent=2))
    else:
        print(result.text)
        _say(_summary(result))
    return 0


def _summary(result: Any) -> str:
    status = "accepted" if result.accepted else "NOT accepted (last answer returned)"
    return (
        f"model={result.model} steps={len(result.steps)} cost=${result.cost_usd:.6f} "
        f"latency={result.latency_ms:.0f}ms {status}"
    )


def _result_json(result: Any) -> dict[str, Any]:
    return {
        "text": result.text,
        "model": result.model,
        "accepted": result.accepted,
        "cost_usd": result.cost_usd,
        "latency_ms": result.latency_ms,
        "run_id": result.run_id,
        "json": result.json,
        "steps": [s.as_event() for s in result.steps],
    }


def cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if config.ledger.path:
        check_ledger_path(resolve_path(config.ledger.path, args.config), config_path=args.config)
    # An in-memory ledger: validating must not create the real one, but budgets need one.
    engine = Cascade(config, path=args.config, ledger=Ledger(":memory:"))
    warnings = server_cli.unset_key_warnings(config)
    for name in sorted(set(config.tasks) & set(config.models)):
        warnings.append(f"warning: {name!r} is both a task and a model key")
    for line in warnings:
        _say(line)
    for key, model in config.models.items():
        p = model.price
        cached = "" if p.cached_input is None else f", cached input ${p.cached_input:g}"
        print(
            f"  model {key} ({model.name}): ${p.input:g} input, ${p.output:g} output{cached} "
            f"per 1M tokens; price from {config.price_source(key)}"
        )
    rungs = sum(len(t.rungs) for t in engine.tasks.values())
    print(
        f"{args.config}: OK ({len(config.tasks)} tasks, {rungs} rungs, "
        f"{len(config.models)} models, {len(config.providers)} providers)"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else None
    if args.ledger is not None:
        path = Path(args.ledger)
    elif config is not None and config.ledger.path:
        path = Path(resolve_path(config.ledger.path, args.config))  # the file that config writes
    else:
        path = Path(DEFAULT_LEDGER)
    if not path.exists():
        raise ConfigError(
            "ledger file not found (run something first, or pass --ledger)", path=str(path)
        )
    try:
        ledger = Ledger(path)
        report = ledger_report(ledger)
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"not a cascade ledger: {exc}", path=str(path)) from exc
    try:
        if config is not None:
            guard = Limits(config, ledger).guard
            report["budgets"] = guard.status() if guard else []
    finally:
        ledger.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    print(f"{path}: {report['runs']} runs, ${report['total_cost_usd']:.6f} total")
    table = Table()
    for column in ("task", "model", "runs/calls", "cost USD", "escalation", "accepted"):
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
        )
        for model, m in t["models"].items():
            table.add_row("", model, str(m["calls"]), f"{m['cost_usd']:.6f}", "", "")
    Console().print(table)
    for task, t in report["tasks"].items():
        if t["usage_estimated"]:
            print(
                f"{task}: {t['usage_estimated']} step(s) billed at an estimate "
                "(the provider reported no usage)"
            )
    for budget in report.get("budgets", []):
        scope = "global" if budget["scope"] == "global" else f"task {budget['scope']}"
        share = budget["spent_usd"] / budget["limit_usd"] if budget["limit_usd"] else 1.0
        print(
            f"{budget['period']} budget ({scope}): ${budget['spent_usd']:.6f} of "
            f"${budget['limit_usd']:.2f} ({share:.1%})"
        )
    return 0


# -- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade",
        description="Cascade routing for LLM calls: cheapest model first, "
        "escalate when the answer fails its checks, and record every step's cost.",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="structured log level on stderr (info shows every step)",
    )
    parser.add_argument("--log-json", action="store_true", help="log as JSON lines")
    parser.add_argument("--version", action="version", version=f"cascade-ladder {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run one prompt through a task's ladder",
        description="Print the answer, then a one-line summary on stderr.",
    )
    run.add_argument("config", help="YAML config file")
    run.add_argument("task", help="task name from the config")
    run.add_argument("prompt", help="the prompt text, or - to read it from stdin")
    run.add_argument("--max-tokens", type=int, help="override max_tokens for every rung")
    run.add_argument("--temperature", type=float, help="override temperature for every rung")
    run.add_argument("--json", action="store_true", help="print the full result as JSON")
    run.add_argument(
        "--query-id",
        help="the query's id in a replay dataset (replay configs look recorded answers up by it)",
    )
    run.set_defaults(handler=cmd_run)

    validate = sub.add_parser(
        "validate",
        help="check a config file without calling any model",
        description="Load and build the config; warn about unset API "
        "key variables. Exit 2 on any config error.",
    )
    validate.add_argument("config", help="YAML config file")
    validate.set_defaults(handler=cmd_validate)

    report = sub.add_parser(
        "report",
        help="spend, calls and escalation rate from the ledger",
        description="Summarise the ledger per task and per model.",
    )
    report.add_argument(
        "--ledger", help=f"ledger file (default: --config's ledger.path, else {DEFAULT_LEDGER})"
    )
    report.add_argument("--json", action="store_true", help="print JSON for scripts")
    report.add_argument(
        "--config", help="read ledger.path from this config and show spend against its budgets"
    )
    report.set_defaults(handler=cmd_report)

    cli_replay.register(sub)
    server_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cascade`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_cli(args.log_level, args.log_json)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (ConfigError, DatasetError, RequestError) as exc:
        _say(f"error: {exc}")
        return 2
    except (ProviderError, CascadeError) as exc:
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except BrokenPipeError:
        # The reader (head, less) went away; that is not our failure.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
