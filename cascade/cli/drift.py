"""``cascade report --drift``: accepted quality per task, rung and week, against the targets."""

from __future__ import annotations

import argparse
import json

from cascade.cli.where import default_config
from cascade.config import load_config
from cascade.ledger import Ledger
from cascade.ledger.drift import drift_report

__all__ = ["cmd_drift"]


def cmd_drift(args: argparse.Namespace, ledger: Ledger) -> int:
    """``cascade report --drift`` (the ledger is opened and closed by ``cmd_report``)."""
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
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    print(f"{ledger.where}: drift per task, rung and week")
    header = ("task", "rung", "week", "answers", "accepted", "score", "evidence",
              "cost/run", "shadow $", "target", "")
    print("  ".join(header))
    for r in rows:
        print("  ".join([
            r.task, r.rung, r.week, str(r.answers),
            "-" if r.acceptance_rate is None else f"{r.acceptance_rate:.1%}",
            "-" if r.accepted_score is None else f"{r.accepted_score:.3f}",
            str(r.evidence),
            "-" if r.cost_per_run is None else f"{r.cost_per_run:.6f}",
            f"{r.shadow_cost_usd:.6f}",
            "-" if r.target is None else f"{r.target:g}",
            "FLAGGED" if r.flagged else "",
        ]))
    for r in rows:
        if r.flagged:
            print(f"flagged: {r.task} / {r.rung} in {r.week}: accepted quality "
                  f"{r.accepted_score:.3f} < target {r.target:g} ({r.evidence} scores: "
                  f"{r.evidence_user} from users, {r.evidence_shadow} from shadows)")
    return 0


def _tasks(ledger: Ledger) -> list[str]:
    return [str(r["task"]) for r in ledger.query("SELECT DISTINCT task FROM runs")]
