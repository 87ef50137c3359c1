"""What every certified calibration reads first: the config, the task, its train queries and
every rung's recorded answer to them (``AnswerTable``), with the refusals the replay needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cascade.calibration.calibrated_file import anchor_paths
from cascade.calibration.inputs import check_simulable, load_task_records, resolve_task
from cascade.calibration.policy_table import AnswerTable, candidate_specs
from cascade.config import CascadeConfig, load_config
from cascade.errors import ConfigError, DatasetError
from cascade.providers.dataset import ReplayRecord, load_dataset

__all__ = ["Loaded", "Prepared", "load_task", "prepare"]


@dataclass(frozen=True, slots=True)
class Loaded:
    """A config and a task's train (and test) queries, checked for replay."""

    cfg: CascadeConfig
    raw: dict[str, Any]
    shown: str
    task: str
    records: list[ReplayRecord]
    test_records: list[ReplayRecord] | None


def load_task(
    config_path: str | Path, train: str | Path, test: str | Path | None, task: str | None
) -> Loaded:
    """The config, its YAML mapping (paths anchored to its folder) and the task's queries.

    Raises:
        ConfigError: the config is invalid, or uses what replay cannot simulate.
        DatasetError: a dataset is malformed or holds no query of the task.
    """
    shown = str(config_path)
    cfg = load_config(config_path)
    raw = anchor_paths(
        yaml.safe_load(Path(config_path).read_text(encoding="utf-8")),
        Path(config_path).resolve().parent,
    )
    all_train = load_dataset(train)
    task = resolve_task(cfg, all_train, task, shown)
    check_simulable(cfg, task, shown)
    records = [r for r in all_train if (r.task or task) == task]
    if not records:
        raise DatasetError(f"{train}: no query of task {task!r} (train set)")
    test_records = load_task_records(Path(test), task, "test") if test is not None else None
    return Loaded(cfg, raw, shown, task, records, test_records)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A task ready to calibrate.

    Attributes:
        cfg / raw: The parsed config and its YAML mapping (paths anchored to its folder).
        shown: The config's path as the user gave it (for error messages).
        task: The task calibrated.
        records / test_records: Its train queries, and the test file's (if any).
        specs: Each rung's candidate evaluators as written in the YAML.
        recipe: The ``agreement`` recipe the candidates use, if any.
        table: Every rung's recorded answer to every train query.
    """

    cfg: CascadeConfig
    raw: dict[str, Any]
    shown: str
    task: str
    records: list[ReplayRecord]
    test_records: list[ReplayRecord] | None
    specs: list[list[dict[str, Any]]]
    recipe: str | None
    table: AnswerTable


def prepare(
    config_path: str | Path, train: str | Path, test: str | Path | None, task: str | None
) -> Prepared:
    """Load and check everything a certified calibration needs.

    Raises:
        ConfigError: the config is invalid or uses what replay cannot simulate (a router of its
            own, an evaluator that re-asks the model, budgets...).
        DatasetError: a dataset is malformed or holds no query of the task.
    """
    loaded = load_task(config_path, train, test, task)
    cfg, raw, shown, task = loaded.cfg, loaded.raw, loaded.shown, loaded.task
    records, test_records = loaded.records, loaded.test_records
    if cfg.tasks[task].router is not None:
        raise ConfigError(
            "calibration fits its own router; remove this one to calibrate",
            path=shown,
            location=f"tasks.{task}.router",
        )
    specs = candidate_specs(raw, task)
    recipe = next(
        (s.get("recipe") for rung in specs for s in rung if s.get("type") == "agreement"), None
    )
    table = AnswerTable(cfg, records, task, recipe, shown)
    for i, rung in enumerate(table.rungs):
        if any(
            "repair_message" in s.hooks and getattr(s.evaluator, "repair_attempts", 0)
            for s in rung.slots
        ):
            raise ConfigError(
                "an evaluator that re-asks the model (repair_attempts > 0) cannot be replayed; "
                "set repair_attempts: 0 to calibrate",
                path=shown,
                location=f"tasks.{task}.ladder[{i}].evaluators",
            )
    return Prepared(cfg, raw, shown, task, records, test_records, specs, recipe, table)
