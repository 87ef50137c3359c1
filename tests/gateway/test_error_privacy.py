"""Issue 22, item 12: client-facing errors do not say where things are.

The ledger's path, a PostgreSQL URL (user, host, port, database), the config file's absolute
path and an upstream's URL stay out of the gateway's answers: a client gets a stable code and a
short reason, and the server log (``cascade.error_detail``) keeps the detail. Through the real
gateway, built from a YAML file as ``cascade serve`` builds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from structlog.testing import capture_logs

from cascade import Cascade
from cascade.gateway.app import create_app, running
from cascade.testing import MockLLMServer
from tests.conftest import FAKE_OPENAI_KEY, live_config
from tests.gateway.test_attacks import ASK, KEY, post
from tests.ledger.ledger_db import PG_HOST, Db


@contextmanager
def served(db: Db, tmp_path: Path, **provider: Any) -> Iterator[tuple[str, Path]]:
    """A gateway built from an absolute YAML path; ANTHROPIC_API_KEY is unset."""
    with pytest.MonkeyPatch.context() as env, MockLLMServer() as upstream:
        env.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
        env.delenv("ANTHROPIC_API_KEY", raising=False)
        env.setenv("CASCADE_TEST_LEDGER_URL", db.url or "")
        config = live_config(upstream, ladder=["mini"], evaluators=[], attempts=1)
        config["ledger"] = ({"path": str(db.path)} if db.backend == "sqlite"
                            else {"url_env": "CASCADE_TEST_LEDGER_URL"})
        config["tasks"]["dear"] = {"ladder": ["sonnet"]}
        config["providers"]["openai"].update(provider)
        path = (tmp_path / "conf" / "cascade.yaml").resolve()
        path.parent.mkdir()
        path.write_text(yaml.safe_dump(config))
        engine = Cascade.from_yaml(path)
        try:
            with running(create_app(engine, api_keys=[KEY])) as url:
                yield url, path
        finally:
            engine.close()


def secrets_of(db: Db, config: Path) -> list[str]:
    """Every piece of text that would say where the ledger or the config is."""
    where = [str(config), str(config.parent), PG_HOST, "postgresql://"]
    if db.path is not None:
        where += [str(db.path), str(db.path.parent)]
    if db.schema is not None:
        where.append(db.schema)
    return where


def details(logs: list[dict[str, Any]]) -> str:
    return " ".join(str(e.get("error")) for e in logs if e["event"] == "cascade.error_detail")


def test_12_unknown_run_does_not_name_the_ledger(db: Db, tmp_path: Path) -> None:
    """Feedback for an unknown run: 400 run_not_found, neither the file nor the URL shown."""
    with capture_logs() as logs, served(db, tmp_path) as (url, config):
        response = httpx2.post(f"{url}/v1/feedback", json={"run_id": "nope", "score": 1},
                               headers={"authorization": f"Bearer {KEY}"}, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "run_not_found"
    assert "unknown run id 'nope'" in error["message"]
    for where in secrets_of(db, config):
        assert where not in response.text
    expected = str(db.path) if db.backend == "sqlite" else PG_HOST
    assert expected in details(logs)  # the operator can still tell which ledger


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Db:
    return Db("sqlite", path=tmp_path / "ledger.sqlite")


def test_12_config_error_does_not_name_the_config_file(sqlite_db: Db, tmp_path: Path) -> None:
    """A missing provider key: 500 config_error with the key path and the variable, not the
    config file's absolute path."""
    with capture_logs() as logs, served(sqlite_db, tmp_path) as (url, config):
        response = post(url, {"model": "dear", "messages": ASK})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "config_error"
    assert error["message"].startswith(  # the key path, not a placeholder for the file
        "gateway configuration error: providers.anthropic.api_key_env: ")
    assert "ANTHROPIC_API_KEY" in error["message"]
    for where in secrets_of(sqlite_db, config):
        assert where not in response.text
    assert str(config) in details(logs)


def test_12_upstream_url_is_not_shown(sqlite_db: Db, tmp_path: Path) -> None:
    """An unreachable upstream: 502 'cannot connect to <url>', its address in the log only."""
    with capture_logs() as logs, served(sqlite_db, tmp_path,
                                        base_url="http://127.0.0.1:9/v1") as (url, config):
        response = post(url, {"model": "faq", "messages": ASK})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "cascade_exhausted"
    assert "cannot connect to <url>" in error["message"]
    assert "127.0.0.1:9" not in response.text
    assert "http://127.0.0.1:9/v1" in details(logs)
    for where in secrets_of(sqlite_db, config):
        assert where not in response.text
