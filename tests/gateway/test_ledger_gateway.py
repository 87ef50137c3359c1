"""The gateway and the ledger: fail closed with 503, and never block the event loop on it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from cascade import Cascade
from cascade.gateway.app import create_app, running
from cascade.testing import MockLLMServer, Reply
from tests.conftest import live_config
from tests.ledger.ledger_db import Db

ASK = {"model": "faq", "messages": [{"role": "user", "content": "When are you open?"}]}

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


def gateway_engine(server: MockLLMServer, db: Db) -> Cascade:
    data = live_config(server, ladder=["mini"])
    data["ledger"] = db.section()
    return Cascade.from_dict(data)


@pytest.mark.usefixtures("keys")
def test_gateway_fails_closed_with_503(db: Db, server: MockLLMServer) -> None:
    """When the ledger refuses the write-ahead row, the gateway answers 503
    ledger_unavailable and the upstream is never called."""
    server.script("gpt-4o-mini", ["We open at nine every day"])
    engine = gateway_engine(server, db)
    if db.backend == "sqlite":
        db.execute("CREATE TRIGGER full BEFORE INSERT ON steps BEGIN "
                   "SELECT RAISE(ABORT, 'database or disk is full'); END;")
    else:
        db.execute("ALTER TABLE steps ADD CONSTRAINT disk_full CHECK (false) NOT VALID")
    with engine, running(create_app(engine, api_keys=[])) as url:
        reply = httpx2.post(f"{url}/v1/chat/completions", json=ASK, timeout=30)
    assert reply.status_code == 503
    error = reply.json()["error"]
    assert error["code"] == "ledger_unavailable"
    assert "no (further) model call was made" in error["message"]
    assert str(db.path or "") not in error["message"] or db.backend != "sqlite"
    assert reply.headers["x-should-retry"] == "false"
    assert server.requests == []


@pytest.mark.usefixtures("keys")
def test_gateway_fails_closed_after_a_settlement_could_not_be_written(
        db: Db, server: MockLLMServer) -> None:
    """The first answer is returned, but its settlement (written behind it) is refused: the
    next request gets 503 ledger_unavailable and reaches no upstream."""
    server.script("gpt-4o-mini", ["We open at nine every day"])
    engine = gateway_engine(server, db)
    if db.backend == "sqlite":
        db.execute("CREATE TRIGGER nosettle BEFORE UPDATE ON steps BEGIN "
                   "SELECT RAISE(ABORT, 'disk I/O error'); END;")
    else:
        db.execute("ALTER TABLE steps ADD CONSTRAINT nosettle CHECK (status <> 'settled')"
                   " NOT VALID")
    with engine, running(create_app(engine, api_keys=[])) as url:
        first = httpx2.post(f"{url}/v1/chat/completions", json=ASK, timeout=30)
        assert engine.ledger is not None
        engine.ledger.flush()  # the writer has tried the settlement and given it up
        second = httpx2.post(f"{url}/v1/chat/completions", json=ASK, timeout=30)
    assert first.status_code == 200
    assert second.status_code == 503
    assert second.json()["error"]["code"] == "ledger_unavailable"
    assert len(server.requests) == 1
    assert db.rows("SELECT status FROM steps") == [("pending",)]


@pytest.mark.usefixtures("keys")
def test_healthz_answers_while_another_process_holds_the_write_lock(
        tmp_path: Path, server: MockLLMServer) -> None:
    """Another process holds the SQLite write lock: a chat request waits for it off the event
    loop, so /healthz keeps answering while the lock is held; once it is freed the request
    completes. (How fast /healthz answers meanwhile: benchmarks/ledger_bench.py healthz.)"""
    server.script("gpt-4o-mini", ["We open at nine every day"])
    db = Db("sqlite", path=tmp_path / "l.sqlite")
    engine = gateway_engine(server, db)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db.path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    outcome: dict[str, Any] = {}
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        app = create_app(engine, api_keys=[])
        with engine, running(app) as url:
            chat = threading.Thread(target=lambda: outcome.update(reply=httpx2.post(
                f"{url}/v1/chat/completions", json=ASK, timeout=60)))
            chat.start()
            # The run is in flight once the gateway holds its task; it then waits for the lock.
            assert _until(lambda: bool(app.state.gateway.inflight))
            # The holder lets go only when told, below: had the ledger's wait blocked the event
            # loop, /healthz could answer only after that, and these requests would time out.
            for _ in range(5):
                assert httpx2.get(f"{url}/healthz", timeout=30).status_code == 200
            assert chat.is_alive()  # the chat request is still waiting for the lock
            assert server.requests == []  # and nothing was sent before its row was written
            assert holder.poll() is None  # the lock is still held
            assert holder.stdin is not None
            holder.stdin.write("release\n")
            holder.stdin.flush()
            chat.join(timeout=60)
        assert outcome["reply"].status_code == 200
        assert len(server.requests) == 1
        assert db.rows("SELECT status FROM steps") == [("settled",)]
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate(timeout=10)


def _until(condition: Any, timeout: float = 10.0) -> bool:
    """Poll a condition (it flips within milliseconds) with an event wait between tries."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while time.monotonic() < deadline:
        if condition():
            return True
        tick.wait(0.005)
    return False


@pytest.mark.usefixtures("keys")
def test_serve_workers_share_one_budget(tmp_path: Path, server: MockLLMServer) -> None:
    """``cascade serve --workers 2``: the workers reserve in one ledger, so together they
    allow exactly as many requests as the daily budget fits, then answer 429. The workers keep
    the config's ``server:`` limits too (a body over ``max_body_bytes`` is refused)."""
    import os
    import signal
    from concurrent.futures import ThreadPoolExecutor

    import yaml

    from cascade.ledger.money import estimate_input_tokens

    ask = {**ASK, "max_tokens": 10}
    prompt_tokens = estimate_input_tokens(ASK["messages"])  # type: ignore[arg-type]
    worst = (prompt_tokens * 0.15 + 10 * 0.60) / 1e6
    server.default = Reply(
        text="We open at nine every day", input_tokens=prompt_tokens, output_tokens=10,
        delay_s=0.05)
    data = live_config(server, ladder=["mini"], ledger=str(tmp_path / "l.sqlite"))
    data["budgets"] = {"daily_usd": worst * 5.5}
    data["server"] = {"max_body_bytes": 4096}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen([sys.executable, "-m", "cascade.cli", "serve", str(cfg), "--port",
                             "0", "--workers", "2"], stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2], env={**os.environ})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "2 workers" in line, line
        url = line.split()[4]
        assert _until(lambda: _healthy(url), timeout=60)
        with ThreadPoolExecutor(12) as pool:
            replies = list(pool.map(lambda _: httpx2.post(f"{url}/v1/chat/completions",
                                                          json=ask, timeout=60), range(12)))
        codes = sorted(r.status_code for r in replies)
        assert codes == [200] * 5 + [429] * 7, [r.text for r in replies]
        big = {**ask, "messages": [{"role": "user", "content": "x" * 5000}]}
        for _ in range(4):  # each worker, whichever takes the connection
            refused = httpx2.post(f"{url}/v1/chat/completions", json=big, timeout=60)
            assert refused.status_code == 413, refused.text
            assert "server.max_body_bytes" in refused.text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    db = Db("sqlite", path=tmp_path / "l.sqlite")
    ((spent,),) = db.rows("SELECT SUM(cost_usd) FROM steps")
    assert spent <= worst * 5.5
    assert len(server.requests) == 5
    assert db.rows("SELECT COUNT(*) FROM steps WHERE status <> 'settled'") == [(0,)]


def _healthy(url: str) -> bool:
    try:
        return httpx2.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx2.HTTPError:
        return False
