"""``cascade report --drift``: accepted quality per task, rung and week, against the targets."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cascade.cli.console import print_wide
from cascade.cli.where import default_config
from cascade.formatting import plural, to_json, usd

if TYPE_CHECKING:
    from cascade.ledger import Ledger
    from cascade.ledger.drift import DriftRow

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["cmd_drift"]

COLUMNS = (
    "task",
    "rung",
    "week",
    "answers",
    "accepted",
    "score",
    "evidence",
    "cost/run",
    "shadow $",
    "target",
    "",
)


def cmd_drift(args: argparse.Namespace, ledger: Ledger) -> int:
    """``cascade report --drift`` (the ledger is opened and closed by ``cmd_report``)."""
    from cascade.config import load_config
    from cascade.ledger.drift import drift_report

    targets: dict[str, float] = {}
    config_path = default_config(args)
    if config_path:
        for name, task in load_config(config_path).tasks.items():
            if task.quality_target is not None:
                targets[name] = task.quality_target
    if args.target is not None:
        targets = {name: args.target for name in _tasks(ledger)}
    rows = drift_report(ledger, targets=targets, min_evidence=args.min_evidence)
    if args.json:
        print(to_json([r.as_dict() for r in rows], indent=2))
        return 0
    print(f"{ledger.where}: drift per task, rung and week")
    print_wide(_table(rows))  # eleven columns
    for r in rows:
        if r.flagged:
            print(
                f"flagged: {r.task} / {r.rung} in {r.week}: accepted quality "
                f"{r.accepted_score:.3f} < target {r.target:g} "
                f"({plural(r.evidence, 'score')}: {r.evidence_user} from users, "
                f"{r.evidence_shadow} from shadows)"
            )
    return 0


def _table(rows: list[DriftRow]) -> Table:
    from rich.table import Table

    table = Table()
    for column in COLUMNS:
        table.add_column(
            column, justify="left" if column in ("task", "rung", "week") else "right", no_wrap=True
        )
    for r in rows:
        table.add_row(
            r.task,
            r.rung,
            r.week,
            str(r.answers),
            "-" if r.acceptance_rate is None else f"{r.acceptance_rate:.1%}",
            "-" if r.accepted_score is None else f"{r.accepted_score:.3f}",
            str(r.evidence),
            "-" if r.cost_per_run is None else usd(r.cost_per_run),
            usd(r.shadow_cost_usd),
            "-" if r.target is None else f"{r.target:g}",
            "FLAGGED" if r.flagged else "",
        )
    return table


def _tasks(ledger: Ledger) -> list[str]:
    return [str(r["task"]) for r in ledger.query("SELECT DISTINCT task FROM runs")]
