"""The learning commands of ``cascade``: ``feedback``, ``data export --from-ledger`` and
``router fit`` (see docs/learning.md; ``report --drift`` is in ``cascade.cli.drift``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cascade.cli.where import ledger_at_url, ledger_file, open_for_cli, where_args
from cascade.errors import ConfigError, FeedbackError
from cascade.formatting import plural

if TYPE_CHECKING:
    from cascade.ledger import Ledger

__all__ = ["register", "register_data"]


def _open(path: str | None, url_env: str | None, what: str) -> Ledger:
    """The ledger ``--from-ledger``/``--url-env`` name (no default here: exports are explicit)."""
    if url_env:
        return ledger_at_url(url_env)
    if path is None or not Path(path).exists():
        raise ConfigError("ledger file not found", path=path, location=what)
    return ledger_file(Path(path))


def cmd_feedback(args: argparse.Namespace) -> int:
    from cascade.ledger.feedback import add_feedback

    try:
        score: Any = float(args.score)
    except ValueError:
        raise FeedbackError(f"must be a number in [0, 1] (got {args.score!r})",
                            param="score") from None
    ledger = open_for_cli(args)
    try:
        row = add_feedback(ledger, args.run_id, score, args.comment)
    finally:
        ledger.close()
    print(f"{ledger.where}: feedback {row.score:g} stored for run {row.run_id}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cascade.replay.export import export_ledger, parse_since

    since = parse_since(args.since) if args.since else None
    ledger = _open(args.from_ledger, args.url_env, "--from-ledger")
    try:
        summary = export_ledger(ledger, args.out, task=args.task, since=since)
    finally:
        ledger.close()
    sources = ", ".join(f"{k}: {v}" for k, v in sorted(summary.sources.items())) or "none"
    print(f"{args.out}: {plural(summary.written, 'query')} from "
          f"{plural(summary.runs_with_content, 'run')} logged with content "
          f"({summary.unlabelled} without a label left out); scores by {sources}")
    if summary.runs_with_content == 0:
        print("note: only runs logged with content can be exported (logging: {content: true})")
    return 0


def cmd_router_fit(args: argparse.Namespace) -> int:
    import yaml

    from cascade.config import load_config
    from cascade.models.task_router import config_examples, fit_classifier, ledger_examples

    config = load_config(args.config)
    examples = config_examples(config)
    if args.from_ledger or args.url_env:
        ledger = _open(args.from_ledger, args.url_env, "--from-ledger")
        try:
            examples += ledger_examples(ledger, config.tasks)
        finally:
            ledger.close()
    try:
        model = fit_classifier(examples, buckets=args.buckets)
    except ValueError as exc:
        raise ConfigError(f"{exc} (add tasks.T.examples, or --from-ledger)",
                          path=args.config, location="tasks") from exc
    config_path = Path(args.config)
    out = Path(args.out) if args.out else config_path
    model_file = out.with_name(out.stem + ".task_router.json")
    model_file.write_text(model.model_dump_json())
    raw = yaml.safe_load(config_path.read_text())
    section = dict(raw.get("task_router") or {})
    section["model"] = model_file.name
    raw["task_router"] = section
    out.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    load_config(out)  # what was written must load
    counts: dict[str, int] = {}
    for _, task in examples:
        counts[task] = counts.get(task, 0) + 1
    print(f"{out}: task_router.model = {model_file.name} "
          f"(fitted on {plural(len(examples), 'example')}: "
          + ", ".join(f"{t} {n}" for t, n in sorted(counts.items())) + ")")
    return 0


def register(sub: Any) -> None:
    """Add ``feedback`` and ``router fit``."""
    fb = sub.add_parser(
        "feedback", help="store a score in [0, 1] for a run's answer",
        description="Store a user's score for the answer of a run (its run_id, as the result "
        "and the x-cascade-run-id header give it) in the ledger's feedback table.")
    fb.add_argument("run_id")
    fb.add_argument("score", help="a number in [0, 1]")
    fb.add_argument("--comment", help="free text kept with the score")
    where_args(fb)
    fb.set_defaults(handler=cmd_feedback)

    router = sub.add_parser("router", help="the task router of task auto",
                            description="The task router that task auto uses.")
    commands = router.add_subparsers(dest="router_command", required=True, metavar="COMMAND")
    fit = commands.add_parser(
        "fit", help="fit the task router from tasks.T.examples (and the ledger)",
        description="Fit a classifier over hashed word and character n-grams of the prompt "
        "from tasks.T.examples and, with --from-ledger, the prompts of runs logged with "
        "content. Writes it as JSON beside the config and sets task_router.model.")
    fit.add_argument("config", help="YAML config file (rewritten unless --out)")
    fit.add_argument("--from-ledger", help="SQLite ledger whose history adds examples")
    fit.add_argument("--url-env", help="variable holding a PostgreSQL ledger URL instead")
    fit.add_argument("--out", help="write the config here instead of in place")
    fit.add_argument("--buckets", type=int, default=1024, help="hash buckets (default 1024)")
    fit.set_defaults(handler=cmd_router_fit)


def register_data(data_sub: Any) -> None:
    """Add ``data export`` to ``cascade data``."""
    export = data_sub.add_parser(
        "export", help="write the replay format from a ledger's runs logged with content",
        description="Write one replay line per run logged with content: every rung that "
        "answered (escalations, shadows), scored by feedback or shadow agreement, with "
        "meta.score_sources saying how each score was obtained.")
    export.add_argument("--from-ledger", help="SQLite ledger file")
    export.add_argument("--url-env", help="variable holding a PostgreSQL ledger URL instead")
    export.add_argument("--task", help="only this task")
    export.add_argument("--since", help="only runs from this date (YYYY-MM-DD, UTC) on")
    export.add_argument("out", help="output JSONL")
    export.set_defaults(handler=cmd_export)
