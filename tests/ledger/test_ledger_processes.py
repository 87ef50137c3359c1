"""Several real processes sharing one ledger, on SQLite and on PostgreSQL: budgets hold across
them, and a process killed -9 mid-load leaves no paid call without a row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from cascade import Ledger
from cascade.testing import MockLLMServer, Reply
from tests.ledger.ledger_db import Db
from tests.ledger.ledger_workers import worst_case

ROOT = Path(__file__).resolve().parents[2]


def where(db: Db) -> str:
    return str(db.path) if db.backend == "sqlite" else str(db.url)


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.ledger.ledger_workers", *args], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_budget_holds_across_four_processes(db: Db) -> None:
    """Four processes of two threads each spend against one $1 daily budget, started
    together: the recorded spend never exceeds it by more than one call's worst case."""
    budget = 1.0  # about 325 worst cases, about 430 real calls
    db.open().close()  # create the tables before the race
    workers = [spawn("budget", where(db), str(budget), "2") for _ in range(4)]
    for w in workers:
        assert w.stdout is not None and w.stdout.readline().strip() == "ready"
    for w in workers:
        assert w.stdin is not None
        w.stdin.write("go\n")
        w.stdin.flush()
    results = []
    for w in workers:
        out, _ = w.communicate(timeout=300)
        assert w.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    ((spent, rows, pending),) = db.rows(
        "SELECT SUM(cost_usd), COUNT(*), SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END)"
        " FROM steps WHERE decision <> 'skip'")
    assert [e for r in results for e in r["errors"]] == []
    assert pending == 0
    assert rows == sum(r["calls"] for r in results)
    assert all(r["calls"] > 0 for r in results)  # every process got a share: they overlapped
    assert spent <= budget + worst_case()
    assert spent > budget - 2 * worst_case()  # and the budget was used, not refused early


def test_kill_9_during_load_leaves_every_paid_call_recorded(db: Db) -> None:
    """A gateway-like process running 8 concurrent cascades is killed -9 mid-load. After the
    next open (which settles its pending rows as lost), every call the upstream saw has a row."""
    db.open().close()
    seen = threading.Event()
    with MockLLMServer() as server:
        def count(model: str, body: dict[str, object]) -> Reply:
            if len(server.requests) >= 60:
                seen.set()
            return Reply(text="a fine answer here", delay_s=0.01)

        server.responder = count
        server.default = Reply()  # so the responder answers every request
        worker = spawn("load", where(db), server.openai_url, "8")
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        assert seen.wait(timeout=120)
        os.kill(worker.pid, signal.SIGKILL)
        worker.communicate(timeout=30)
        calls = len(server.requests)
    ledger = Ledger(db.path) if db.backend == "sqlite" else Ledger(url=db.url)
    try:
        lost = len(ledger.recovered)
    finally:
        ledger.close()
    ((rows, settled, lost_rows, pending),) = db.rows(
        "SELECT COUNT(*), SUM(CASE WHEN status = 'settled' THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN status = 'lost' THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) FROM steps")
    assert pending == 0
    assert lost_rows == lost
    assert rows >= calls  # every call the server saw has a row
    assert settled <= calls  # a settled row is a call that came back
    assert rows - calls <= 8  # rows without a call: at most the ones about to be sent
    assert lost >= 1  # the kill did cut calls short
