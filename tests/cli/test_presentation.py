"""What the commands print: the drift table, readable dollars, JSON numbers, counts in words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cascade import Ledger
from cascade.cli import main
from cascade.demo import DATASET, DEMO_CONFIG
from cascade.ledger.drift import drift_report, week_of
from cascade.testing import MockLLMServer, Reply
from tests.conftest import live_config
from tests.ledger.ledger_db import Db
from tests.replay.test_export_drift import T0, WEEK, _synthetic
from tests.replay.test_export_drift import config as drift_config

NOISY = "3.6000000000000003e-06"  # 4 input tokens at $0.15 + 5 output at $0.60 per 1M, in floats


def table_rows(out: str) -> list[list[str]]:
    """The cells of a rich table's body rows (heavy-headed box: body rows start with │)."""
    return [[cell.strip() for cell in line.strip().strip("│").split("│")]
            for line in out.splitlines() if line.startswith("│")]


def floats(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in floats(v)]
    if isinstance(value, list):
        return [f for v in value for f in floats(v)]
    return []


def assert_12_digits(value: Any) -> None:
    """Every float in a JSON document reads back the same at 12 significant digits."""
    long = [f for f in floats(value) if float(f"{f:.12g}") != f]
    assert long == []


# -- report --drift ----------------------------------------------------------------------------


@pytest.fixture
def drift_ledger(tmp_path: Path) -> tuple[Path, Path]:
    db = Db("sqlite", path=tmp_path / "ledger.sqlite")
    ledger = db.open()
    try:
        _synthetic(ledger, [0.95, 0.5])
    finally:
        ledger.close()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(drift_config(db, quality_target=0.9)))
    return tmp_path / "ledger.sqlite", cfg


def test_drift_is_a_table(drift_ledger: tuple[Path, Path],
                          capsys: pytest.CaptureFixture[str]) -> None:
    """report --drift draws a rich table, one row per task, rung and week, no cell folded."""
    ledger, cfg = drift_ledger
    assert main(["report", "--drift", "--ledger", str(ledger), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("┃"))
    assert [c.strip() for c in header.strip("┃").split("┃")] == [
        "task", "rung", "week", "answers", "accepted", "score", "evidence", "cost/run",
        "shadow $", "target", ""]
    first, second = week_of(T0), week_of(T0 + WEEK)
    assert table_rows(out) == [
        ["t", "small", first, "30", "80.0%", "0.933", "30", "$0.001", "$0.00", "0.9", ""],
        ["t", "small", second, "30", "80.0%", "0.500", "30", "$0.001", "$0.00", "0.9", "FLAGGED"],
    ]
    assert f"flagged: t / small in {second}: accepted quality 0.500 < target 0.9 (30 scores: " \
           "30 from users, 0 from shadows)" in out


def test_drift_json_is_the_rows(drift_ledger: tuple[Path, Path],
                                capsys: pytest.CaptureFixture[str]) -> None:
    """report --drift --json is still the list of rows, field for field (floats at 12 digits)."""
    ledger, cfg = drift_ledger
    assert main(["report", "--drift", "--ledger", str(ledger), "--config", str(cfg),
                 "--json"]) == 0
    opened = Ledger(ledger)
    try:
        rows = drift_report(opened, targets={"t": 0.9}, min_evidence=20)
    finally:
        opened.close()
    assert json.loads(capsys.readouterr().out) == [
        {k: float(f"{v:.12g}") if isinstance(v, float) else v for k, v in r.as_dict().items()}
        for r in rows]


# -- dollars -----------------------------------------------------------------------------------


def one_rung_config(tmp_path: Path, server: MockLLMServer, **extra: Any) -> Path:
    data = live_config(server, ladder=["mini"], ledger=str(tmp_path / "ledger.sqlite"))
    del data["providers"]["anthropic"]
    data["models"] = {"mini": data["models"]["mini"]}
    data.update(extra)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_report_shows_a_small_budget_as_it_is(tmp_path: Path, server: MockLLMServer,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A half-cent budget reads $0.005, not $0.01; what was spent, $0.00, not $0.000000."""
    cfg = one_rung_config(tmp_path, server, budgets={"daily_usd": 0.005})
    Ledger(tmp_path / "ledger.sqlite").close()
    assert main(["report", "--ledger", str(tmp_path / "ledger.sqlite"), "--config",
                 str(cfg)]) == 0
    assert "daily budget (global): $0.00 of $0.005 (0.0%)" in capsys.readouterr().out


def test_validate_lists_budgets_and_caps(tmp_path: Path, server: MockLLMServer,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """validate prints every budget and per-request cap it checked, with readable decimals."""
    cfg = one_rung_config(tmp_path, server, budgets={"daily_usd": 0.005})
    data = yaml.safe_load(cfg.read_text())
    data["tasks"]["faq"].update(budgets={"monthly_usd": 1.5}, max_cost_usd=0.0025)
    cfg.write_text(yaml.safe_dump(data))
    assert main(["validate", str(cfg)]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert "daily budget (global): $0.005" in lines
    assert "monthly budget (task faq): $1.50" in lines
    assert "task faq: max_cost_usd $0.0025 per request" in lines


# -- JSON numbers ------------------------------------------------------------------------------


@pytest.mark.usefixtures("keys")
def test_costs_in_json_have_12_significant_digits(tmp_path: Path, server: MockLLMServer,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """run --json, report --json and --log-json write 3.6e-06, not 3.6000000000000003e-06."""
    server.script("gpt-4o-mini", [Reply("a good answer", input_tokens=4, output_tokens=5)] * 2)
    cfg = str(one_rung_config(tmp_path, server))
    assert main(["run", cfg, "faq", "q", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["cost_usd"] == 3.6e-06
    assert NOISY not in out
    assert main(["report", "--config", cfg, "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["total_cost_usd"] == 3.6e-06
    assert NOISY not in out
    assert main(["--log-level", "info", "--log-json", "run", cfg, "faq", "q"]) == 0
    err = capsys.readouterr().err
    (step,) = [json.loads(line) for line in err.splitlines() if '"cascade.step"' in line]
    assert step["cost_usd"] == 3.6e-06
    assert NOISY not in err


def test_bench_json_has_12_significant_digits(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """bench --json rounds every float it writes (means of recorded costs carry float noise)."""
    assert main(["bench", str(DEMO_CONFIG), str(DATASET), "--json", str(tmp_path / "b.json")]) == 0
    assert_12_digits(json.loads((tmp_path / "b.json").read_text()))


# -- counts in words ---------------------------------------------------------------------------


def test_validate_counts_in_the_singular(tmp_path: Path, server: MockLLMServer,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """One of each: "1 task, 1 rung, 1 model, 1 provider", never "1 tasks"."""
    cfg = one_rung_config(tmp_path, server)
    assert main(["validate", str(cfg)]) == 0
    assert f"{cfg}: OK (1 task, 1 rung, 1 model, 1 provider)" in capsys.readouterr().out


@pytest.mark.usefixtures("keys")
def test_report_counts_one_run(tmp_path: Path, server: MockLLMServer,
                               capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(one_rung_config(tmp_path, server))
    assert main(["run", cfg, "faq", "a question"]) == 0
    capsys.readouterr()
    assert main(["report", "--config", cfg]) == 0
    assert ": 1 run, $" in capsys.readouterr().out


def test_bench_of_one_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A one-query bench is titled "1 query"."""
    import gzip

    one = tmp_path / "one.jsonl"
    with gzip.open(DATASET, "rt") as fh:
        one.write_text(fh.readline())
    assert main(["bench", str(DEMO_CONFIG), str(one)]) == 0
    out = capsys.readouterr().out
    assert "task math: 1 query, ladder" in out
    assert "\n1 query replayed at " in out
