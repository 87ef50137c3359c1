"""What tripped a new user: each fix, as the user meets it."""

from __future__ import annotations

import builtins
import json
import logging
import re
import socket
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import tomllib
import yaml

import cascade
from cascade import Cascade, ConfigError, ProviderError
from cascade.cli import main
from cascade.demo import DATASET, DEMO_CONFIG
from cascade.providers.dataset import load_dataset
from cascade.testing import FakeProvider, MockLLMServer, Reply
from tests.conftest import live_config
from tests.engine.test_engine import config as fake_config

ROOT = Path(__file__).resolve().parents[2]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == cascade.__version__ == "0.2.0"
    assert capsys.readouterr().out == "cascade-ladder 0.2.0\n"


def _replay_config(folder: Path, ledger: str | None) -> Path:
    data = yaml.safe_load(DEMO_CONFIG.read_text())
    data["providers"]["recorded"]["dataset"] = str(DATASET)
    data["ledger"] = {"path": ledger}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_relative_ledger_path_and_report_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """ledger.path is relative to the config file; report --config reads that ledger."""
    monkeypatch.chdir(tmp_path)
    config = _replay_config(tmp_path / "sub", "spend.sqlite")
    query = load_dataset(DATASET)[0]
    assert main(["run", "sub/c.yaml", "math", "ignored", "--query-id", query.id]) == 0
    assert (tmp_path / "sub" / "spend.sqlite").exists()
    assert not (tmp_path / "spend.sqlite").exists()
    capsys.readouterr()
    assert main(["report", "--config", str(config.relative_to(tmp_path)), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runs"] == 1
    assert list(report["tasks"]) == ["math"]


def test_validate_checks_the_ledger_beside_the_config(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """validate checks sub/data (a folder here), not ./data relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    config = _replay_config(tmp_path / "sub", "data")
    (tmp_path / "sub" / "data").mkdir()
    assert main(["validate", "sub/c.yaml"]) == 2
    assert "sub/data' : it is a directory".replace(" :", ":") in capsys.readouterr().err


def test_base_url_without_scheme_is_a_config_error(server: MockLLMServer) -> None:
    data = live_config(server)
    data["providers"]["openai"]["base_url"] = "localhost:8000/v1"
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(data)
    assert info.value.location == "providers.openai.base_url"
    assert "must be an absolute http:// or https:// URL, e.g. http://localhost:8000/v1" in str(
        info.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.usefixtures("keys")
def test_connection_error_names_the_url(server: MockLLMServer) -> None:
    data = live_config(server, ladder=["mini"], attempts=1)
    port = _closed_port()
    data["providers"]["openai"]["base_url"] = f"http://user:pw@127.0.0.1:{port}/v1"
    with Cascade.from_dict(data, ledger=False) as engine, pytest.raises(ProviderError) as info:
        engine.complete("faq", "q")
    message = str(info.value)
    assert f"cannot connect to http://127.0.0.1:{port}/v1/chat/completions" in message
    assert "pw" not in message  # credentials in a URL are not repeated


@pytest.mark.usefixtures("keys")
@pytest.mark.parametrize(("suffix", "hinted"), [("", True), ("/v1", False)])
def test_404_without_v1_says_so(server: MockLLMServer, suffix: str, hinted: bool) -> None:
    data = live_config(server, ladder=["mini"], attempts=1)
    data["providers"]["openai"]["base_url"] = server.url + suffix
    server.script("gpt-4o-mini", [Reply(status=404, message="no such route")])
    with Cascade.from_dict(data, ledger=False) as engine, pytest.raises(ProviderError) as info:
        engine.complete("faq", "q")
    assert ("has no /v1 (OpenAI-compatible servers usually serve under /v1" in str(info.value)) \
        is hinted


def test_serve_without_server_extra(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    real_import = builtins.__import__

    def no_web(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in ("starlette", "uvicorn"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_web)
    assert main(["serve", str(DEMO_CONFIG)]) == 2
    err = capsys.readouterr().err
    assert err == ("error: cascade serve needs the [server] extra (starlette is not installed): "
                   "pip install -e '.[server]' in a clone of cascade-ladder\n")


def test_config_errors_name_every_problem(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load((ROOT / "configs/example.yaml").read_text())
    data["retry"]["attempts"] = 0
    data["models"]["mini"]["colour"] = "red"
    data["tasks"]["faq"]["accept"] = "most"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "more problem" not in err
    for where in ("retry.attempts", "models.mini.colour: unknown key", "tasks.faq.accept"):
        assert where in err


# -- the gateway ----------------------------------------------------------------------------------


@pytest.fixture
def gateway(server: MockLLMServer, keys: None) -> Any:
    pytest.importorskip("starlette")
    from tests.gateway.test_server import serving

    with serving(live_config(server)) as (url, _):
        yield url


def test_unknown_route_is_openai_shaped(gateway: str) -> None:
    response = httpx2.get(f"{gateway}/embeddings")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_route"
    assert "GET /v1/embeddings" in error["message"]
    assert httpx2.delete(f"{gateway}/chat/completions").json()["error"]["code"] == (
        "method_not_allowed")
    with openai.OpenAI(base_url=gateway, api_key="x", max_retries=0) as api, \
            pytest.raises(openai.NotFoundError, match="unknown route POST /v1/embeddings"):
        api.embeddings.create(model="faq", input="hi")


def test_gateway_body_errors_name_every_field(gateway: str) -> None:
    body = {"model": "faq", "messages": [{"role": "user", "content": "hi"}],
            "temperature": 9, "top_p": 7, "n": 3}
    message = httpx2.post(f"{gateway}/chat/completions", json=body).json()["error"]["message"]
    for field in ("temperature", "top_p", "n"):
        assert f"{field}: " in message
    assert "more problem" not in message


# -- a quiet library ------------------------------------------------------------------------------


def _run_fake() -> None:
    fake = FakeProvider("p", {"small": ["no"], "medium": ["a fine answer"]})
    with Cascade.from_dict(fake_config(), providers={"p": fake}, ledger=False) as engine:
        engine.complete("t", "question")


def test_library_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    _run_fake()
    assert capsys.readouterr() == ("", "")


def test_events_reach_the_stdlib_logger(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="cascade"):
        _run_fake()
    steps = [r for r in caplog.records if r.name == "cascade" and "cascade.step" in r.message]
    assert len(steps) == 2
    assert "decision='escalate'" in steps[0].message


def test_cli_log_flags(capsys: pytest.CaptureFixture[str]) -> None:
    query = load_dataset(DATASET)[0]
    args = ["run", str(DEMO_CONFIG), "math", "q", "--query-id", query.id]
    assert main(args) == 0
    assert "cascade.step" not in capsys.readouterr().err  # warning level by default
    assert main(["--log-level", "info", "--log-json", *args]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()
             if line.startswith("{")]
    assert [e["event"] for e in lines][:1] == ["cascade.step"]
    assert lines[0]["level"] == "info"
    assert main(["--log-level", "info", *args]) == 0
    assert re.search(r"\[info\s*\] cascade.step", capsys.readouterr().err)


def test_resolve_path() -> None:
    from cascade.config import resolve_path

    assert resolve_path("l.sqlite", "configs/x.yaml") == "configs/l.sqlite"
    assert resolve_path("/abs/l.sqlite", "configs/x.yaml") == "/abs/l.sqlite"
    assert resolve_path("l.sqlite", None) == "l.sqlite"
    assert resolve_path(":memory:", "configs/x.yaml") == ":memory:"
    assert resolve_path("postgresql://u@h/db", "configs/x.yaml") == "postgresql://u@h/db"


def test_report_config_does_not_create_the_ledger(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """report --config names the config's (missing) ledger file and creates nothing."""
    config = _replay_config(tmp_path / "sub", "spend.sqlite")
    assert main(["report", "--config", str(config)]) == 2
    assert "spend.sqlite" in capsys.readouterr().err
    assert not (tmp_path / "sub" / "spend.sqlite").exists()
