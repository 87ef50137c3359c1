"""The ``cascade`` command. Every failure is one clear line on stderr and a non-zero exit code.

Exit codes: 0 success, 1 the cascade ran but failed (provider faults, exhausted ladder),
2 a usage or configuration mistake (bad config, missing API key, bad dataset, a refused
parameter such as ``--max-tokens`` above the model's ``max_output_tokens``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cascade.errors import (
    CascadeError,
    CascadeExhausted,
    ConfigError,
    DatasetError,
    ProviderError,
    RequestError,
)
from cascade.formatting import to_json, usd

if TYPE_CHECKING:
    from cascade.config import CascadeConfig

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
        replayed = _replay_providers(engine.config, args.task)
        if replayed and args.query_id is None:
            # said before the call: otherwise every rung fails with the library's complete(...,
            # query_id=), which names no flag
            _say(
                f"error: task {args.task!r} answers from recordings (replay provider "
                f"{', '.join(replayed)}); pass --query-id ID, the query's id in the dataset"
            )
            return 2
        try:
            result = engine.complete(args.task, prompt, query_id=args.query_id, **params)
        except CascadeExhausted as exc:
            result = exc.result
            print(result.text)
            _warn(result)
            _say(_summary(result) + " (no rung passed: on_exhausted is raise)")
            return 1
    _warn(result)
    if args.json:
        print(to_json(_result_json(result), indent=2))
    else:
        print(result.text)
        _say(_summary(result))
    return 0


def _warn(result: Any) -> None:
    """Misconfigurations the run failed over, one ``warning:`` line each, even with --json."""
    for warning in result.warnings:
        _say(f"warning: {warning.message}")


def _replay_providers(config: CascadeConfig, task: str) -> list[str]:
    """The replay providers on the ladder of ``task`` (of every task, for ``auto``)."""
    tasks = [config.tasks[task]] if task in config.tasks else []
    if task == "auto":
        tasks = list(config.tasks.values())
    used = {config.models[rung.model].provider for t in tasks for rung in t.ladder}
    return sorted(p for p in used if config.providers[p].type == "replay")


def _summary(result: Any) -> str:
    status = "accepted" if result.accepted else "NOT accepted (last answer returned)"
    # A skipped rung says why, so a cap that can never be met does not pass unnoticed.
    skips = "".join(
        f"; skipped {s.model}: {s.error}" for s in result.steps if s.decision == "skip" and s.error
    )
    # With task auto, the task the router chose (and how sure it was) leads the line.
    chosen = (
        f"task={result.task} (auto, p={result.task_probability:.2f}) "
        if result.task_probability is not None
        else ""
    )
    return (
        f"{chosen}model={result.model} steps={len(result.steps)} cost={usd(result.cost_usd)} "
        f"latency={result.latency_ms:.0f}ms {status}{skips}"
    )


def _result_json(result: Any) -> dict[str, Any]:
    return {
        "text": result.text,
        "model": result.model,
        "accepted": result.accepted,
        "cost_usd": result.cost_usd,
        "latency_ms": result.latency_ms,
        "run_id": result.run_id,
        "task": result.task,
        "task_probability": result.task_probability,
        "finish_reason": result.finish_reason,
        "tool_calls": [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in result.tool_calls
        ],
        "warnings": [
            {"model": w.model, "code": w.code, "message": w.message} for w in result.warnings
        ],
        "json": result.json,
        "steps": [s.as_event() for s in result.steps],
    }


# -- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from cascade.cli import feedback as cli_feedback
    from cascade.cli import keys as cli_keys
    from cascade.cli import ledger as cli_ledger
    from cascade.cli import replay as cli_replay
    from cascade.cli import serve as cli_serve
    from cascade.cli import validate as cli_validate

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

    cli_validate.register(sub)
    cli_ledger.register(sub)
    cli_replay.register(sub)
    cli_feedback.register(sub)
    cli_serve.register(sub)
    cli_keys.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cascade`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # --version and --help end here, before logging is loaded
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
