"""The ``cascade`` command. Every failure is one clear line on stderr and a non-zero exit code.

Exit codes: 0 success, 1 the cascade ran but failed (provider faults, exhausted ladder),
2 a usage or configuration mistake (bad config, missing API key, bad dataset, a refused
parameter such as ``--max-tokens`` above the model's ``max_output_tokens``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cascade.cli import feedback as cli_feedback
from cascade.cli import ledger as cli_ledger
from cascade.cli import replay as cli_replay
from cascade.cli import serve as cli_serve
from cascade.errors import (
    CascadeError,
    CascadeExhausted,
    ConfigError,
    DatasetError,
    ProviderError,
    RequestError,
)

__all__ = ["main"]

# Each command imports what it runs inside its handler: the engine, pydantic, structlog and the
# SDKs cost about a second, which ``--version`` and ``--help`` must not pay (``benchmarks/
# cli_startup.py``; tests/cli/test_startup.py checks which modules each command loads).

Handler = Callable[[argparse.Namespace], int]


def _version() -> str:
    from cascade import __version__

    return __version__


def _say(message: str) -> None:
    print(message, file=sys.stderr)


# -- commands -------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from cascade.engine import Cascade

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
    from cascade.config import load_config
    from cascade.engine import Cascade
    from cascade.ledger import Ledger, check_ledger_config

    config = load_config(args.config)
    check_ledger_config(config.ledger, config_path=args.config)
    # An in-memory ledger: validating must not create the real one, but budgets need one.
    engine = Cascade(config, path=args.config, ledger=Ledger(":memory:"))
    warnings = cli_serve.unset_key_warnings(config)
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

    cli_ledger.register(sub)
    cli_replay.register(sub)
    cli_feedback.register(sub)
    cli_serve.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cascade`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from cascade.logs import configure_cli

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


