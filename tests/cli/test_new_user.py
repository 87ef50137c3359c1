"""What a new user tripped over (issue 19, points 2 to 6): loud failover, rungs that can never
run, one rule for where the ledger is, a complete ``run --json``, a task router to be fitted."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from structlog.testing import capture_logs

from cascade import Cascade, RunWarning
from cascade.cli import main
from cascade.gateway.app import create_app, running
from cascade.testing import MockLLMServer, Reply
from tests.conftest import FAKE_OPENAI_KEY, live_config
from tests.models.test_task_router import MATH, fitted

NOT_FOUND = Reply(status=404, message="The model `gpt-4o-mni` does not exist")


def _write(tmp_path: Path, data: dict[str, Any], name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# -- 2. a mistyped model name fails over loudly -------------------------------------------------


@pytest.mark.usefixtures("keys")
def test_404_fails_over_with_a_warning_in_result_and_log(server: MockLLMServer) -> None:
    """The next rung answers, and the result and the log both say the config is wrong."""
    server.script("gpt-4o-mini", [NOT_FOUND])
    server.script("claude-sonnet-4-6", ["We open at nine every day."])
    with Cascade.from_dict(live_config(server, attempts=3), ledger=False) as engine, \
            capture_logs() as logs:
        result = engine.complete("faq", "When do you open?")
    assert result.model == "sonnet"
    assert result.warnings == (RunWarning(
        "mini", "model_not_found",
        "models.mini.name: provider 'openai' does not know model 'gpt-4o-mini' (HTTP 404); "
        "the run failed over to the next rung"),)
    assert len(server.calls("gpt-4o-mini")) == 1  # a 404 is not retried
    events = [e for e in logs if e["event"] == "cascade.misconfigured"]
    assert [(e["log_level"], e["model"], e["status_code"]) for e in events] == [
        ("warning", "mini", 404)]


@pytest.mark.usefixtures("keys")
def test_a_provider_fault_is_no_warning(server: MockLLMServer) -> None:
    """A 500 is the provider's trouble, not the config's: no warning."""
    server.script("gpt-4o-mini", [Reply(status=500)] * 3)
    with Cascade.from_dict(live_config(server, attempts=1), ledger=False) as engine:
        result = engine.complete("faq", "When do you open?")
    assert result.model == "sonnet" and result.warnings == ()


@pytest.mark.usefixtures("keys")
def test_cli_prints_the_warning_on_stderr(tmp_path: Path, server: MockLLMServer,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """cascade run exits 0 with the answer, and says `warning:` on stderr (and in --json)."""
    server.script("gpt-4o-mini", [NOT_FOUND, NOT_FOUND])
    path = _write(tmp_path, live_config(server, ledger=str(tmp_path / "l.sqlite")))
    assert main(["run", str(path), "faq", "When do you open?"]) == 0
    err = capsys.readouterr().err
    assert "warning: models.mini.name: provider 'openai' does not know model" in err
    assert main(["run", str(path), "faq", "When do you open?", "--json"]) == 0
    captured = capsys.readouterr()
    assert [w["code"] for w in json.loads(captured.out)["warnings"]] == ["model_not_found"]
    assert "warning: models.mini.name" in captured.err


@pytest.mark.usefixtures("keys")
def test_gateway_header_and_counter(server: MockLLMServer) -> None:
    """x-cascade-warnings names the rung; cascade_misconfigured_total{model} counts it."""
    server.script("gpt-4o-mini", [NOT_FOUND, "We open at nine every day."])
    with Cascade.from_dict(live_config(server), ledger=False) as engine, \
            running(create_app(engine)) as url:
        reply = httpx2.post(f"{url}/v1/chat/completions", json={
            "model": "faq", "messages": [{"role": "user", "content": "When do you open?"}]})
        assert reply.status_code == 200
        assert reply.headers["x-cascade-warnings"].startswith("models.mini.name: ")
        plain = httpx2.post(f"{url}/v1/chat/completions", json={
            "model": "faq", "messages": [{"role": "user", "content": "When do you open?"}]})
        assert "x-cascade-warnings" not in plain.headers
        metrics = httpx2.get(f"{url}/metrics").text
    assert 'cascade_misconfigured_total{model="mini"} 1.0' in metrics


@pytest.mark.usefixtures("keys")
def test_validate_probe_reports_each_model_and_records_the_calls(
    tmp_path: Path, server: MockLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """One max_tokens=1 call per model: the typo is FAILED (exit 1), each call is in the ledger."""
    server.script("gpt-4o-mini", [NOT_FOUND, "ok"])  # the second probe finds it fixed
    ledger = tmp_path / "l.sqlite"
    path = _write(tmp_path, live_config(server, ledger=str(ledger)))
    assert main(["validate", str(path), "--probe"]) == 1
    out = capsys.readouterr().out
    assert "probe mini: FAILED: " in out and "404" in out
    assert "probe sonnet: ok: answers" in out and "probe mid: ok: answers" in out
    assert {c["body"].get("max_tokens", c["body"].get("max_completion_tokens"))
            for c in server.calls()} == {1}
    with sqlite3.connect(ledger) as db:
        tasks = {row[0] for row in db.execute("SELECT task FROM runs")}
    assert tasks == {"__probe__mini", "__probe__mid", "__probe__sonnet"}
    assert main(["validate", str(path), "--probe"]) == 0


@pytest.mark.usefixtures("keys")
def test_validate_without_probe_calls_nothing(tmp_path: Path, server: MockLLMServer) -> None:
    """Plain validate stays offline and writes no ledger."""
    path = _write(tmp_path, live_config(server, ledger=str(tmp_path / "l.sqlite")))
    assert main(["validate", str(path)]) == 0
    assert server.calls() == [] and not (tmp_path / "l.sqlite").exists()


# -- 3. a rung that can never run ---------------------------------------------------------------


@pytest.mark.usefixtures("keys")
def test_validate_warns_about_a_rung_its_cap_never_allows(
    tmp_path: Path, server: MockLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """max_cost_usd 0.02 with sonnet's $15/M output and 4096 tokens: named, with the numbers."""
    data = live_config(server, max_cost_usd=0.02)
    data["models"]["sonnet"].pop("params")
    assert main(["validate", str(_write(tmp_path, data))]) == 0
    err = capsys.readouterr().err
    assert ("warning: tasks.faq: rung sonnet can never run: its worst case $0.06146 "
            "(4096 output tokens at $15/1M) > tasks.faq.max_cost_usd $0.02") in err
    assert "rung mini" not in err


@pytest.mark.usefixtures("keys")
def test_validate_warns_about_a_rung_the_budget_never_allows(
    tmp_path: Path, server: MockLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daily budget below a rung's smallest worst case is named too."""
    data = live_config(server)
    data["budgets"] = {"daily_usd": 0.001}
    assert main(["validate", str(_write(tmp_path, data))]) == 0
    err = capsys.readouterr().err
    assert "rung mini can never run" in err and "daily budget of global $0.001" in err


@pytest.mark.usefixtures("keys")
def test_run_summary_names_the_skip_and_its_reason(
    tmp_path: Path, server: MockLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The one-line summary says which rung was skipped and why."""
    server.script("gpt-4o-mini", ["no"])  # fails length (min_words 3): sonnet would be next
    data = live_config(server, max_cost_usd=0.02, ledger=str(tmp_path / "l.sqlite"))
    data["models"]["sonnet"].pop("params")
    assert main(["run", str(_write(tmp_path, data)), "faq", "q"]) == 0
    err = capsys.readouterr().err
    assert "skipped sonnet: spent $" in err and "worst case $0.06146 > max_cost_usd $0.02" in err


# -- 4. one rule for where the ledger is --------------------------------------------------------


def _replay_config(folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"providers": {"rec": {"type": "replay"}},
            "models": {"m": {"provider": "rec", "name": "m", "price": {"input": 1, "output": 1}}},
            "ledger": {"path": "spend.sqlite"},
            "tasks": {"t": {"ladder": ["m"]}}}


def test_report_finds_the_ledger_of_cascade_yaml_and_of_cascade_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """./cascade.yaml, then $CASCADE_CONFIG, name the ledger when no flag does."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CASCADE_CONFIG", raising=False)
    sub = tmp_path / "configs"
    config = _write(sub, _replay_config(sub))
    with Cascade.from_yaml(config):
        pass  # opening creates configs/spend.sqlite, as a first run does
    capsys.readouterr()
    assert main(["report"]) == 2
    err = capsys.readouterr().err
    assert "tried $CASCADE_CONFIG (unset), ./cascade.yaml (absent)" in err and "--config" in err
    monkeypatch.setenv("CASCADE_CONFIG", str(config))
    assert main(["report", "--json"]) == 0
    monkeypatch.delenv("CASCADE_CONFIG")
    (tmp_path / "cascade.yaml").write_text(config.read_text().replace(
        "spend.sqlite", str(sub / "spend.sqlite")))
    assert main(["report", "--json"]) == 0


def test_missing_ledger_of_the_config_names_the_path_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error names the file it looked for and whose ledger that is."""
    monkeypatch.chdir(tmp_path)
    config = _write(tmp_path, _replay_config(tmp_path))
    assert main(["report", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"tried {tmp_path / 'spend.sqlite'}, the ledger of {config}" in err


# -- 5. run --json carries everything a script needs --------------------------------------------


@pytest.mark.usefixtures("keys")
def test_run_json_has_task_finish_reason_tool_calls_and_warnings(
    tmp_path: Path, server: MockLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The JSON names the task, finish reason, tool calls and warnings."""
    server.script("gpt-4o-mini", [Reply(text="Open nine to five daily.", tool_calls=[
        {"id": "call_1", "name": "lookup", "arguments": "{\"q\": 1}"}])])
    data = live_config(server, ledger=str(tmp_path / "l.sqlite"), evaluators=[])
    assert main(["run", str(_write(tmp_path, data)), "faq", "q", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "faq" and out["task_probability"] is None
    assert out["finish_reason"] == "tool_calls"
    assert out["tool_calls"] == [{"id": "call_1", "name": "lookup", "arguments": "{\"q\": 1}"}]
    assert out["warnings"] == []


def test_run_summary_names_the_task_auto_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With task auto, the summary line starts with the chosen task and its probability."""
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
    with MockLLMServer() as server:
        path = fitted(tmp_path)
        data = yaml.safe_load(path.read_text())
        data["providers"]["p"]["base_url"] = server.openai_url
        path.write_text(yaml.safe_dump(data))
        assert main(["run", str(path), "auto", MATH[-1]]) == 0
    err = capsys.readouterr().err
    assert err.startswith("task=math (auto, p=") and " model=m " in err


# -- 6. a task router without a model fails validate --------------------------------------------


def test_validate_fails_a_task_router_without_a_fitted_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not at the first auto run: validate exits 2 and names task_router.model and the fix."""
    data = _replay_config(tmp_path)
    data["task_router"] = {"default_task": "t"}
    path = _write(tmp_path, data)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: task_router.model: task_router has no fitted model" in err
    assert f"cascade router fit {path}" in err
