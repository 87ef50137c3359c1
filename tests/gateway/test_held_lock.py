"""Another process holds the SQLite write lock while requests arrive (issue 22, item 10).

Each request waits for the lock at most ``ledger.busy_timeout_s`` from its own arrival, then gets
503 ``ledger_unavailable``: it does not queue behind the waits of the requests before it (the
ledger has two threads for SQLite) until the gateway's own timeout answers 504.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from cascade import Cascade
from cascade.gateway.app import create_app, running
from cascade.testing import MockLLMServer
from tests.conftest import live_config
from tests.ledger.ledger_db import Db

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""

ASK = [{"role": "user", "content": "When are you open?"}]
REQUESTS = 16
BUSY_TIMEOUT_S = 1.0
# The gateway answers 504 after request_timeout_s plus 2 s of grace: 6 busy timeouts. Waiting
# one after the other (the base code), request k ended after k busy timeouts; two at a time (one
# per ledger thread), after k / 2. Each from its own arrival, all end after about one.
REQUEST_TIMEOUT_S = 4 * BUSY_TIMEOUT_S


def _ask(url: str) -> tuple[int, Any]:
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                       timeout=60) as api:
        try:
            api.chat.completions.create(model="faq", messages=ASK)  # type: ignore[arg-type]
        except openai.APIStatusError as exc:
            return exc.status_code, exc.code
    return 200, None


@pytest.mark.usefixtures("keys")
def test_each_request_waits_for_a_held_lock_from_its_own_arrival(
        tmp_path: Path, server: MockLLMServer) -> None:
    """Sixteen requests arrive while another process holds the write lock: every one gets 503
    ledger_unavailable (none a 504 after queuing behind the others' waits), and no model is
    called."""
    server.script("gpt-4o-mini", ["We open at nine every day"])
    db = Db("sqlite", path=tmp_path / "l.sqlite")
    data = live_config(server, ladder=["mini"], ledger=str(db.path))
    data["ledger"]["busy_timeout_s"] = BUSY_TIMEOUT_S
    data["server"] = {"request_timeout_s": REQUEST_TIMEOUT_S}
    engine = Cascade.from_dict(data)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db.path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with engine, running(create_app(engine, api_keys=[])) as url, \
                ThreadPoolExecutor(REQUESTS) as pool:
            outcomes = list(pool.map(lambda _: _ask(url), range(REQUESTS)))
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate(timeout=10)
    assert outcomes == [(503, "ledger_unavailable")] * REQUESTS
    assert server.requests == []
    assert db.rows("SELECT COUNT(*) FROM steps") == [(0,)]
