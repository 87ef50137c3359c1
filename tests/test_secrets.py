"""A recognisable fake key goes through every error path and appears in no output at all."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from cascade import Cascade
from cascade.cli import main
from cascade.ledger.writer import flush_all
from cascade.testing import MockLLMServer, Reply
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, live_config
from tests.test_telemetry import otel  # noqa: F401  (the in-memory OTel exporter fixture)

KEYS = (FAKE_OPENAI_KEY, FAKE_ANTHROPIC_KEY)
FAULTS = [Reply(status=401, message=f"Incorrect API key provided: {FAKE_OPENAI_KEY}"),
          Reply(status=403, message=f"key {FAKE_ANTHROPIC_KEY} forbidden"),
          Reply(status=404, message=f"no model for {FAKE_OPENAI_KEY}"),
          Reply(status=429, headers={"retry-after": "0"}, message=f"slow down {FAKE_OPENAI_KEY}"),
          Reply(status=500, message=f"trace: Authorization: Bearer {FAKE_OPENAI_KEY}"),
          Reply(status=400, message=f"context too long for {FAKE_ANTHROPIC_KEY}"),
          Reply(body=f"<html>{FAKE_OPENAI_KEY}</html>")]


@pytest.mark.usefixtures("keys")
@pytest.mark.parametrize("fault", FAULTS, ids=lambda r: str(r.status if r.body is None else "body"))
def test_fault_paths_leak_no_key(fault: Reply, server: MockLLMServer, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Logs, ledger, exceptions, results, reprs and CLI output never contain the key."""
    # The CLI builds its own engine: give it a sleep that records instead of waiting.
    cli_sleeps: list[float] = []
    from_yaml = Cascade.from_yaml.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(Cascade, "from_yaml", classmethod(
        lambda cls, path, **kw: from_yaml(cls, path, sleep=cli_sleeps.append, **kw)))
    server.script("gpt-4o-mini", [fault])
    server.script("claude-sonnet-4-6", [fault])
    data = live_config(server, attempts=2, ledger=str(tmp_path / "l.sqlite"),
                       on_exhausted="raise")
    async_sleeps: list[float] = []

    async def asleep(seconds: float) -> None:
        async_sleeps.append(seconds)

    engine = Cascade.from_dict(data, sleep=lambda s: None, asleep=asleep)
    seen: list[str] = []
    with capture_logs() as logs:
        try:
            seen.append(repr(engine.complete("faq", "q")))
        except Exception as exc:  # noqa: BLE001  (whatever comes out is inspected)
            seen += [str(exc), repr(exc), repr(vars(exc))]

        async def run_async() -> None:
            try:
                await engine.acomplete("faq", "q")
            finally:
                await engine.aclose()

        try:
            asyncio.run(run_async())
        except Exception as exc:  # noqa: BLE001
            seen += [str(exc), repr(exc), repr(vars(exc))]
    seen += [repr(logs), repr(engine), repr(engine.providers), repr(engine.config)]
    flush_all()  # rows the ledger's writer thread has queued
    with sqlite3.connect(tmp_path / "l.sqlite") as conn:
        for table in ("steps", "runs"):
            seen.append(repr(conn.execute(f"SELECT * FROM {table}").fetchall()))  # noqa: S608
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    main(["--log-level", "debug", "run", str(config), "faq", "q"])
    if fault.status in (429, 500):  # retried: the backoff went through the injected sleep
        assert cli_sleeps
    main(["report", "--ledger", str(tmp_path / "l.sqlite"), "--json"])
    out, err = capsys.readouterr()
    seen += [out, err]
    text = "\n".join(seen)
    assert "error" in text  # the fault did surface
    for key in KEYS:
        assert key not in text


def test_unreachable_server_leaks_no_key(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Connection errors name the provider, not the key."""
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
    data: dict[str, Any] = {"providers": {"o": {"type": "openai",
                                                "base_url": "http://127.0.0.1:9/v1"}},
                            "models": {"m": {"provider": "o", "name": "m",
                                             "price": {"input": 1, "output": 1}}},
                            "retry": {"attempts": 1}, "tasks": {"t": {"ladder": ["m"]}}}
    with capture_logs() as logs, pytest.raises(Exception) as info:  # noqa: PT011
        Cascade.from_dict(data, ledger=False).complete("t", "q")
    text = str(info.value) + repr(logs) + capsys.readouterr().out
    assert "cannot connect" in text
    assert FAKE_OPENAI_KEY not in text


def test_a_known_key_inside_a_longer_one_does_not_expose_the_rest() -> None:
    """redact: with ``sk-test`` known, ``sk-test-SECRET-...`` is hidden whole, not cut to
    ``***-SECRET-...`` (which is no longer key-shaped, so it stayed in plain sight)."""
    from cascade.providers.base import redact

    text = redact(f"bad auth {FAKE_OPENAI_KEY} here", "sk-test")
    assert "SECRET" not in text and "0000" not in text
    assert redact("token sk-abcdef and mysecret", "mysecret") == "token sk-abcdef and ***"


def test_a_named_gateway_key_appears_in_no_output(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    otel: Any,  # noqa: F811  (the fixture imported above)
) -> None:
    """A named key, through create, success, 403, 429, feedback and revocation: its secret
    and the whole key are in no log event, ledger table, /metrics text, error body, OTel span
    or CLI output other than create's one line."""
    import httpx2

    from cascade.ledger.keys import split_token
    from tests.gateway.test_named_keys import ASK, gateway
    from tests.ledger.ledger_db import Db

    exporter, _ = otel
    db = Db("sqlite", path=tmp_path / "ledger.sqlite")
    seen: list[str] = []
    with capture_logs() as logs, gateway(db) as (url, _, clock, store):
        assert main(["keys", "create", "team-a", "--tasks", "faq", "--daily-usd", "1",
                     "--ledger", str(db.path)]) == 0
        key = capsys.readouterr().out.strip()
        secret = split_token(key)[1]  # type: ignore[index]
        assert main(["keys", "create", "poor", "--daily-usd", "0.0000001",
                     "--ledger", str(db.path)]) == 0
        poor = capsys.readouterr().out.strip()
        auth = {"authorization": f"Bearer {key}"}
        for model in ("faq", "other"):
            seen.append(httpx2.post(f"{url}/v1/chat/completions", headers=auth, timeout=30,
                                    json={"model": model, "messages": ASK}).text)
        seen.append(httpx2.post(f"{url}/v1/chat/completions", timeout=30,
                                headers={"authorization": f"Bearer {poor}"},
                                json={"model": "faq", "messages": ASK}).text)
        seen.append(httpx2.post(f"{url}/v1/feedback", headers=auth, timeout=30,
                                json={"run_id": "f" * 32, "score": 1}).text)
        seen.append(httpx2.get(f"{url}/metrics", headers=auth, timeout=30).text)
        assert main(["keys", "revoke", "team-a", "--ledger", str(db.path)]) == 0
        clock.now += 1
        seen.append(httpx2.post(f"{url}/v1/chat/completions", headers=auth, timeout=30,
                                json={"model": "faq", "messages": ASK}).text)
        for cmd in (["keys", "list"], ["keys", "show", "team-a"], ["report", "--by", "key"]):
            assert main([*cmd, "--ledger", str(db.path)]) == 0
        assert store.count() == 2
    out, err = capsys.readouterr()
    flush_all()
    with sqlite3.connect(db.path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        dump = [conn.execute(f"SELECT * FROM {t}").fetchall() for t in tables]
    spans = [(s.name, dict(s.attributes or {})) for s in exporter.get_finished_spans()]
    assert any(a.get("cascade.key.name") == "team-a" for _, a in spans)
    everything = "\n".join([*seen, out, err, repr(logs), repr(dump), repr(spans)])
    assert "task_not_allowed" in everything and "was revoked" in everything
    for material in (key, poor, secret, split_token(poor)[1]):  # type: ignore[index]
        assert material not in everything
