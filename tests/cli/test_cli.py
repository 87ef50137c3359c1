"""The cascade command: answers, one-line errors with exit codes, help on every command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cascade.cli import main
from cascade.testing import MockLLMServer, Reply
from tests.conftest import live_config


def write_config(tmp_path: Path, server: MockLLMServer, **kwargs: object) -> Path:
    data = live_config(server, ledger=str(tmp_path / "ledger.sqlite"), **kwargs)  # type: ignore[arg-type]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.usefixtures("keys")
def test_run_prints_answer_and_summary(tmp_path: Path, server: MockLLMServer,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """run prints the answer on stdout and model, steps and cost on stderr."""
    server.script("gpt-4o-mini", ["no"])
    server.script("claude-sonnet-4-6", [Reply("we open at nine", input_tokens=10,
                                              output_tokens=4)])
    code = main(["run", str(write_config(tmp_path, server)), "faq", "When do you open?"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out == "we open at nine\n"
    assert "model=sonnet steps=2 cost=$0.000092" in err  # 10*3/1e6 + 4*15/1e6 + mini's step


@pytest.mark.usefixtures("keys")
def test_run_json(tmp_path: Path, server: MockLLMServer,
                  capsys: pytest.CaptureFixture[str]) -> None:
    """run --json prints the whole result with its steps."""
    server.script("gpt-4o-mini", ["a good answer"])
    assert main(["run", str(write_config(tmp_path, server)), "faq", "q", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "mini"
    assert data["steps"][0]["decision"] == "accept"


def test_missing_key_one_line_exit_2(tmp_path: Path, server: MockLLMServer,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A missing API key is one line naming the variable, exit code 2."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code = main(["run", str(write_config(tmp_path, server)), "faq", "q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "OPENAI_API_KEY is not set" in err
    assert "Traceback" not in err


def test_bad_config_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config error is printed as one line with file and key path, exit code 2."""
    path = tmp_path / "bad.yaml"
    data = yaml.safe_load((Path(__file__).parent.parent.parent / "configs/example.yaml").read_text())
    data["tasks"]["faq"]["ladder"] = ["mini", "sonet"]
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}: tasks.faq.ladder[1]: unknown model 'sonet' (defined: mini, sonnet)\n"


def test_validate_ok_warns_unset_keys(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """validate succeeds and lists unset key variables as warnings."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "x")
    assert main(["validate", "configs/example.yaml"]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out
    assert "OPENAI_API_KEY is not set" in err
    assert "ANTHROPIC_API_KEY" not in err


def test_missing_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing config is one line, exit 2."""
    assert main(["validate", "nope.yaml"]) == 2
    assert capsys.readouterr().err == "error: nope.yaml: config file not found\n"


@pytest.mark.usefixtures("keys")
def test_provider_failure_exit_1(tmp_path: Path, server: MockLLMServer,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """When no rung answers, run prints one line and exits 1."""
    server.script("gpt-4o-mini", [Reply(status=404)])
    server.script("claude-sonnet-4-6", [Reply(status=404)])
    assert main(["run", str(write_config(tmp_path, server)), "faq", "q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: task 'faq': no rung produced an answer")
    assert err.count("\n") == 1


@pytest.mark.usefixtures("keys")
def test_report_json(tmp_path: Path, server: MockLLMServer,
                     capsys: pytest.CaptureFixture[str]) -> None:
    """report --json reads the ledger the runs wrote."""
    server.script("gpt-4o-mini", ["no", "a good answer"])
    server.script("claude-sonnet-4-6", ["a good answer"])
    config = str(write_config(tmp_path, server))
    main(["run", config, "faq", "q1"])
    main(["run", config, "faq", "q2"])
    capsys.readouterr()
    assert main(["report", "--ledger", str(tmp_path / "ledger.sqlite"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tasks"]["faq"]["runs"] == 2
    assert report["tasks"]["faq"]["escalation_rate"] == 0.5
    assert set(report["tasks"]["faq"]["models"]) == {"mini", "sonnet"}
    assert report["total_cost_usd"] > 0


def test_report_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """report prints a table for people."""
    from cascade import Ledger
    Ledger(tmp_path / "l.sqlite").close()
    assert main(["report", "--ledger", str(tmp_path / "l.sqlite")]) == 0
    assert "0 runs" in capsys.readouterr().out


def test_report_missing_ledger(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing ledger is one line, exit 2."""
    assert main(["report", "--ledger", "missing.sqlite"]) == 2
    assert "ledger file not found" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["run"], ["validate"], ["report"]])
def test_help_everywhere(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """--help works on every command."""
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert "usage: cascade" in capsys.readouterr().out
