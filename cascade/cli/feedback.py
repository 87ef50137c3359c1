"""The learning commands of ``cascade``: ``feedback``, ``data export --from-ledger`` and
``router fit``, and the ledger side of ``calibrate --from-ledger`` (see docs/learning.md;
``report --drift`` is in ``cascade.cli.drift``)."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cascade.cli.where import ledger_at_url, ledger_file, open_for_cli, where_args
from cascade.errors import ConfigError, DatasetError, FeedbackError
from cascade.formatting import plural

if TYPE_CHECKING:
    from cascade.ledger import Ledger

__all__ = ["MIN_LABELLED", "ledger_train", "register", "register_data"]

# The default calibration fits on half of the labelled queries and certifies on the other half,
# 20 at least each; below that no method can say anything.
MIN_LABELLED = 40


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
        raise FeedbackError(
            f"must be a number in [0, 1] (got {args.score!r})", param="score"
        ) from None
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
    until = parse_since(args.until, "--until") if args.until else None
    ledger = _open(args.from_ledger, args.url_env, "--from-ledger")
    try:
        summary = export_ledger(ledger, args.out, task=args.task, since=since, until=until)
    finally:
        ledger.close()
    sources = ", ".join(f"{k}: {v}" for k, v in sorted(summary.sources.items())) or "none"
    print(
        f"{args.out}: {plural(summary.written, 'query')} from "
        f"{plural(summary.runs_with_content, 'run')} logged with content "
        f"({summary.unlabelled} without a label left out); scores by {sources}"
    )
    if summary.runs_with_content == 0:
        print("note: only runs logged with content can be exported (logging: {content: true})")
    return 0


@contextmanager
def ledger_train(
    config_path: str,
    *,
    task: str | None,
    url_env: str | None = None,
    since: str | None = None,
    until: str | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> Iterator[tuple[str, str]]:
    """The labelled runs of the config's ledger (or ``--url-env``'s) as a temporary replay
    file, for ``calibrate --from-ledger``: yields the file and the task.

    Raises:
        ConfigError: no ledger, no run logged with content, or a bad task or date.
        DatasetError: no labelled run, or fewer than ``MIN_LABELLED``.
    """
    from cascade.calibration.inputs import resolve_task
    from cascade.config import load_config
    from cascade.providers.dataset import write_dataset
    from cascade.replay.export import parse_since, task_rows

    config = load_config(config_path)
    task = resolve_task(config, [], task, config_path)
    start = parse_since(since) if since else None
    end = parse_since(until, "--until") if until else None
    ledger = (
        ledger_at_url(url_env)
        if url_env
        else open_for_cli(argparse.Namespace(url_env=None, ledger=None, config=config_path))
    )
    try:
        rows = task_rows(config, task, ledger, since=start, until=end)
        where = ledger.where
    finally:
        ledger.close()
    period = " in that period" if since or until else ""
    if rows.runs_with_content == 0:
        raise ConfigError(
            f"no run of task {task!r} in {where} was logged with content{period}, so there is "
            "nothing to calibrate on: enable logging: {content: true} in the config (prompts "
            "and answers are stored nowhere else), then collect traffic and feedback",
            path=config_path,
            location="logging",
        )
    left = (
        f"{plural(len(rows.unlabelled), 'run')} without a label, "
        f"{rows.incomplete} without the top rung's answer or with an unscored answer"
    )
    if config.tasks[task].shadow_labels:
        left += (
            f", {rows.balanced} escalated without a user score dropped for balance (kept at "
            f"shadow_rate {config.tasks[task].shadow_rate:g}, like the runs shadowed)"
        )
    if not rows.labelled:
        hint = (
            ""
            if config.tasks[task].shadow_labels
            else (
                f", or set tasks.{task}.shadow_labels: true to count agreement with the top "
                "rung as a label (short final answers)"
            )
        )
        raise DatasetError(
            f"{where}: no labelled run of task {task!r}{period} "
            f"({plural(rows.runs_with_content, 'run')} logged with content: {left}); score "
            f"answers with cascade feedback RUN_ID SCORE or POST /v1/feedback{hint}"
        )
    if len(rows.labelled) < MIN_LABELLED:
        raise DatasetError(
            f"{where}: {plural(len(rows.labelled), 'labelled run')} of task {task!r}{period}, "
            f"too few to calibrate (need {MIN_LABELLED}; a guarantee that saves money usually "
            f"needs a few hundred); {left}"
        )
    sources = ", ".join(f"{k}: {v}" for k, v in sorted(rows.sources.items()))
    say(
        f"{where}: {plural(len(rows.labelled), 'labelled run')} of task {task} (scores by "
        f"{sources}); left out: {left}"
    )
    with tempfile.TemporaryDirectory(prefix="cascade-calibrate-") as folder:
        # named for the guarantee's sentence: "quality on traffic like <name> stays ..."
        train = Path(folder) / "the ledger's labelled runs"
        write_dataset(train, rows.labelled)
        try:
            yield str(train), task
        except DatasetError as exc:  # name the ledger, not a file that is about to vanish
            raise DatasetError(str(exc).replace(str(train), f"labelled runs of {where}")) from exc


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
        raise ConfigError(
            f"{exc} (add tasks.T.examples, or --from-ledger)", path=args.config, location="tasks"
        ) from exc
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
    print(
        f"{out}: task_router.model = {model_file.name} "
        f"(fitted on {plural(len(examples), 'example')}: "
        + ", ".join(f"{t} {n}" for t, n in sorted(counts.items()))
        + ")"
    )
    return 0


def register(sub: Any) -> None:
    """Add ``feedback`` and ``router fit``."""
    fb = sub.add_parser(
        "feedback",
        help="store a score in [0, 1] for a run's answer",
        description="Store a user's score for the answer of a run (its run_id, as the result "
        "and the x-cascade-run-id header give it) in the ledger's feedback table.",
    )
    fb.add_argument("run_id")
    fb.add_argument("score", help="a number in [0, 1]")
    fb.add_argument("--comment", help="free text kept with the score")
    where_args(fb)
    fb.set_defaults(handler=cmd_feedback)

    router = sub.add_parser(
        "router",
        help="the task router of task auto",
        description="The task router that task auto uses.",
    )
    commands = router.add_subparsers(dest="router_command", required=True, metavar="COMMAND")
    fit = commands.add_parser(
        "fit",
        help="fit the task router from tasks.T.examples (and the ledger)",
        description="Fit a classifier over hashed word and character n-grams of the prompt "
        "from tasks.T.examples and, with --from-ledger, the prompts of runs logged with "
        "content. Writes it as JSON beside the config and sets task_router.model.",
    )
    fit.add_argument("config", help="YAML config file (rewritten unless --out)")
    fit.add_argument("--from-ledger", help="SQLite ledger whose history adds examples")
    fit.add_argument("--url-env", help="variable holding a PostgreSQL ledger URL instead")
    fit.add_argument("--out", help="write the config here instead of in place")
    fit.add_argument("--buckets", type=int, default=1024, help="hash buckets (default 1024)")
    fit.set_defaults(handler=cmd_router_fit)


def register_data(data_sub: Any) -> None:
    """Add ``data export`` to ``cascade data``."""
    export = data_sub.add_parser(
        "export",
        help="write the replay format from a ledger's runs logged with content",
        description="Write one replay line per run logged with content: every rung that "
        "answered (escalations, shadows), scored by feedback or shadow agreement, with "
        "meta.score_sources saying how each score was obtained.",
    )
    export.add_argument("--from-ledger", help="SQLite ledger file")
    export.add_argument("--url-env", help="variable holding a PostgreSQL ledger URL instead")
    export.add_argument("--task", help="only this task")
    export.add_argument("--since", help="only runs from this date (YYYY-MM-DD, UTC) on")
    export.add_argument("--until", help="only runs before this date (YYYY-MM-DD, UTC)")
    export.add_argument("out", help="output JSONL")
    export.set_defaults(handler=cmd_export)
