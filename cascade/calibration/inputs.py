"""The checks and loading shared by both calibration methods (thresholds and policy)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cascade.config import CascadeConfig
from cascade.errors import ConfigError, DatasetError
from cascade.providers.dataset import ReplayRecord, load_dataset

__all__ = ["check_simulable", "load_task_records", "resolve_task"]


def resolve_task(
    cfg: CascadeConfig, records: Sequence[ReplayRecord], task: str | None, path: str
) -> str:
    if task is not None:
        if task not in cfg.tasks:
            raise ConfigError(
                f"unknown task {task!r} (defined: {', '.join(cfg.tasks)})",
                path=path,
                location="tasks",
            )
        return task
    if len(cfg.tasks) == 1:
        return next(iter(cfg.tasks))
    named = {r.task for r in records if r.task in cfg.tasks}
    if len(named) == 1:
        return named.pop()
    raise ConfigError(
        # the CLI's flag first: that is who reads this most (task= is the Python keyword)
        f"calibration tunes one task at a time; pass --task (task= from Python), one of "
        f"{', '.join(cfg.tasks)}",
        path=path,
        location="tasks",
    )


def check_simulable(cfg: CascadeConfig, task: str, path: str) -> None:
    """Refuse settings the simulator does not model, rather than report numbers it cannot keep."""
    settings = cfg.tasks[task]
    if settings.on_exhausted != "return_last":
        raise ConfigError(
            "calibration needs on_exhausted: return_last (the top rung answers "
            "regardless; with raise, replay has no answer to score)",
            path=path,
            location=f"tasks.{task}.on_exhausted",
        )
    why = {
        "max_cost_usd": "a per-run cost cap skips rungs on worst-case estimates",
        "cache": "cached answers would stand in for the replayed ones",
        "budgets": "period budgets depend on the ledger's history, not on the queries",
    }
    for key, reason in why.items():
        if getattr(settings, key) is not None:
            raise ConfigError(
                f"calibration cannot simulate {key} ({reason}); remove it from "
                "the config to calibrate, and add it back afterwards",
                path=path,
                location=f"tasks.{task}.{key}",
            )
    if cfg.budgets is not None:
        raise ConfigError(
            f"calibration cannot simulate budgets ({why['budgets']}); remove it "
            "from the config to calibrate, and add it back afterwards",
            path=path,
            location="budgets",
        )


def load_task_records(path: Path, task: str, name: str) -> list[ReplayRecord]:
    records = [r for r in load_dataset(path) if (r.task or task) == task]
    if not records:
        raise DatasetError(f"{path}: no query of task {task!r} ({name} set)")
    return records
