"""``cascade calibrate CONFIG --from-ledger``: calibrate on the ledger's labels, no export step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascade.cli import main
from cascade.config import load_config
from tests.ledger.ledger_db import Db
from tests.replay.ledger_traffic import serve_traffic

pytestmark = pytest.mark.usefixtures("keys")

CALIBRATE = ["--target-quality", "0.9"]


def _body(path: Path) -> str:
    """The calibrated YAML without its comment header (which names the command)."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.startswith("#"))


def test_from_ledger_calibrates_as_export_then_calibrate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The calibrated config equals the one calibrated on `data export`'s file of the ledger."""
    ledger = tmp_path / "ledger.sqlite"
    traffic = serve_traffic(tmp_path, {"path": str(ledger)}, 60, {0: 1.0, 1: 0.5},
                            shadow_rate=1.0, shadow_labels=True)
    (tmp_path / "direct").mkdir()
    (tmp_path / "via_file").mkdir()
    direct, report = tmp_path / "direct/calibrated.yaml", tmp_path / "direct.json"
    assert main(["calibrate", str(traffic.config), "--from-ledger", *CALIBRATE,
                 "--out", str(direct), "--json", str(report)]) == 0
    captured = capsys.readouterr()
    assert "60 labelled runs of task faq" in captured.err
    assert "traffic like the ledger's labelled runs stays" in captured.out
    assert json.loads(report.read_text())["train"]["n"] == 60
    load_config(direct)  # a config that loads
    exported, via_file = tmp_path / "prod.jsonl", tmp_path / "via_file/calibrated.yaml"
    assert main(["data", "export", "--from-ledger", str(ledger), str(exported)]) == 0
    assert main(["calibrate", str(traffic.config), str(exported), *CALIBRATE,
                 "--out", str(via_file)]) == 0
    assert _body(direct) == _body(via_file).replace("traffic like prod.jsonl",
                                                    "traffic like the ledger's labelled runs")
    assert _body(direct) != _body(traffic.config)  # calibration changed the task


def test_feedback_only_trains_on_the_rated_runs(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without shadow_labels, the rated runs are the train set (PostgreSQL through --url-env)."""
    rated = {i: float(i % 3 != 0) for i in range(45)}
    traffic = serve_traffic(tmp_path, db.section(), 55, rated, shadow_rate=1.0)
    where: list[str] = []
    if db.backend == "postgres":
        monkeypatch.setenv("CAL_LEDGER_URL", db.url or "")
        where = ["--url-env", "CAL_LEDGER_URL"]
    out, report = tmp_path / "calibrated.yaml", tmp_path / "result.json"
    code = main(["calibrate", str(traffic.config), "--from-ledger", *where, *CALIBRATE,
                 "--out", str(out), "--json", str(report)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "45 labelled runs" in err
    assert "10 runs without a label" in err
    result = json.loads(report.read_text())
    assert result["train"]["n"] == 45
    load_config(out)


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: ")
    assert "Traceback" not in err
    return err


def test_no_content_says_to_enable_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A ledger without stored content is one line naming logging: {content: true}."""
    traffic = serve_traffic(tmp_path, {"path": str(tmp_path / "l.sqlite")}, 2, {0: 1.0},
                            content=False, shadow_rate=1.0)
    err = _error(["calibrate", str(traffic.config), "--from-ledger", *CALIBRATE,
                  "--out", str(tmp_path / "o.yaml")], capsys)
    assert "logging: {content: true}" in err
    assert not (tmp_path / "o.yaml").exists()


def test_no_label_says_how_to_get_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Runs with content but no user score: one line naming feedback and shadow_labels."""
    traffic = serve_traffic(tmp_path, {"path": str(tmp_path / "l.sqlite")}, 3, shadow_rate=1.0)
    err = _error(["calibrate", str(traffic.config), "--from-ledger", *CALIBRATE,
                  "--out", str(tmp_path / "o.yaml")], capsys)
    assert "no labelled run of task 'faq'" in err
    assert "3 runs without a label" in err
    assert "cascade feedback" in err
    assert "tasks.faq.shadow_labels: true" in err


def test_too_few_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Fewer labelled runs than calibration needs: one line with the count and the need."""
    traffic = serve_traffic(tmp_path, {"path": str(tmp_path / "l.sqlite")}, 5, {0: 1.0, 2: 0.0},
                            shadow_rate=1.0)
    err = _error(["calibrate", str(traffic.config), "--from-ledger", *CALIBRATE,
                  "--out", str(tmp_path / "o.yaml")], capsys)
    assert "2 labelled runs of task 'faq'" in err
    assert "too few to calibrate (need 40" in err


@pytest.mark.parametrize(("extra", "says"), [
    (["train.jsonl", "--from-ledger"], "not both"),
    ([], "give a TRAIN file"),
    (["train.jsonl", "--url-env", "X"], "--url-env choose(s) what --from-ledger reads"),
])
def test_train_or_ledger_exactly_one(
    extra: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TRAIN and --from-ledger are exclusive, and ledger flags need --from-ledger."""
    err = _error(["calibrate", "cascade.yaml", *extra, *CALIBRATE,
                  "--out", str(tmp_path / "o.yaml")], capsys)
    assert says in err
