"""``GET /metrics`` under a large ledger or a hostile client (issue 22, item 8).

A scrape renders the drift gauges as the last background refresh read them: it runs no SQL and
never waits for the ledger; a refresh starts at most once per ``server.metrics_refresh_s`` (an
injected clock here), reads only the rollup, and its gauges equal ``drift_report``'s numbers,
which equal a scan of every row (``tests/ledger/test_rollup.py``).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cascade import Cascade
from cascade.gateway.app import create_app, running
from cascade.gateway.drift import DRIFT_WEEKS
from cascade.ledger.backends import SqliteBackend
from cascade.ledger.drift import DriftRow, drift_report, week_of
from cascade.ledger.rollup import read_rollup
from cascade.ledger.triggers import WEEK_S
from cascade.testing import MockLLMServer
from tests.conftest import live_config
from tests.ledger.ledger_db import Db
from tests.ledger.test_rollup import T0, write_random_ledger

KEY = "metrics-key"
NOW = T0 + 10 * WEEK_S  # the data's first weeks are older than the gauges' eight
REFRESH_S = 15.0
GAUGES = {"acceptance_rate": "cascade_drift_acceptance_rate",
          "accepted_score": "cascade_drift_accepted_score",
          "evidence": "cascade_drift_evidence",
          "cost_per_run": "cascade_drift_cost_per_run_usd",
          "shadow_cost_usd": "cascade_drift_shadow_cost_usd",
          "flagged": "cascade_drift_flagged"}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SpyTx:
    def __init__(self, tx: Any, spy: SpyBackend):
        self._tx, self._spy = tx, spy

    def execute(self, sql: str, params: Any = ()) -> Any:
        self._spy.sql.append(sql)
        rows = self._tx.execute(sql, params)
        self._spy.rows += len(rows)
        return rows

    def rowcount(self, sql: str, params: Any = ()) -> int:
        self._spy.sql.append(sql)
        return int(self._tx.rowcount(sql, params))


class SpyBackend:
    """The ledger's backend, recording every statement the ledger's reads and transactions run
    (the writer thread keeps the real one: its writes are not what a scrape reads)."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.sql: list[str] = []
        self.rows = 0  # rows the statements returned

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def read(self, sql: str, params: Any = ()) -> Any:
        self.sql.append(sql)
        rows = self._inner.read(sql, params)
        self.rows += len(rows)
        return rows

    @contextmanager
    def transaction(self) -> Iterator[SpyTx]:
        with self._inner.transaction() as tx:
            yield SpyTx(tx, self)


def _engine(server: MockLLMServer, db: Db) -> Cascade:
    data = live_config(server, ladder=["mini"])
    data["ledger"] = db.section()
    data["tasks"]["faq"]["quality_target"] = 0.7
    data["server"] = {"metrics_refresh_s": REFRESH_S}
    return Cascade.from_dict(data)


def _scrape(url: str) -> dict[tuple[str, tuple[str, str, str]], float]:
    reply = httpx2.get(f"{url}/metrics", headers={"authorization": f"Bearer {KEY}"}, timeout=10)
    assert reply.status_code == 200
    found = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            if sample.name.startswith("cascade_drift_"):
                labels = (sample.labels["task"], sample.labels["rung"], sample.labels["week"])
                found[(sample.name, labels)] = sample.value
    return found


def _expected(rows: list[DriftRow]) -> dict[tuple[str, tuple[str, str, str]], float]:
    return {(name, (r.task, r.rung, r.week)): float(getattr(r, key))
            for r in rows for key, name in GAUGES.items() if getattr(r, key) is not None}


def _until(condition: Any) -> bool:
    deadline = time.monotonic() + 30
    tick = threading.Event()
    while time.monotonic() < deadline:
        if condition():
            return True
        tick.wait(0.01)
    return False


@pytest.mark.usefixtures("keys")
def test_gauges_equal_drift_report_and_scrapes_read_nothing(
        db: Db, server: MockLLMServer) -> None:
    """A random ledger: the gauges equal ``drift_report``'s rows of the last eight weeks; forty
    scrapes in one refresh interval run no SQL at all; the next interval's scrapes start one
    refresh, which reads the rollup and never the steps, runs or feedback."""
    engine = _engine(server, db)
    assert engine.ledger is not None
    write_random_ledger(engine.ledger, random.Random(11))
    spy = SpyBackend(engine.ledger.backend)
    engine.ledger.backend = spy
    app = create_app(engine, api_keys=[KEY])
    drift, clock = app.state.drift, Clock()
    drift.clock, drift.now = clock, lambda: NOW
    with engine, running(app) as url:
        assert drift.refreshes == 1  # at start-up
        want = _expected(drift_report(engine.ledger, targets={"faq": 0.7},
                                      since=NOW - DRIFT_WEEKS * WEEK_S))
        assert want
        every_week = {r.week for r in drift_report(engine.ledger)}
        assert {labels[2] for _, labels in want} < every_week  # some are too old for the gauges
        spy.sql.clear()
        for _ in range(40):
            assert _scrape(url) == want
        assert spy.sql == []
        assert drift.refreshes == 1
        # A new row, then the next interval: one refresh for all its scrapes.
        with engine.ledger.backend.transaction() as tx:
            tx.execute("INSERT INTO runs (run_id, ts, task, model, accepted, cost_usd,"
                       " latency_ms, steps) VALUES ('late', ?, 'faq', 'mini', 1, 0.5, 1, 1)",
                       (NOW,))
        spy.sql.clear()
        spy.rows = 0
        clock.now += REFRESH_S
        for _ in range(40):
            _scrape(url)
        assert _until(lambda: not drift.refreshing)
        assert drift.refreshes == 2
        assert spy.sql
        tables = {t for sql in spy.sql for t in re.findall(r"\b(?:FROM|JOIN|INTO)\s+(\w+)", sql)}
        assert tables <= {"rollup", "rollup_log", "gone"}, spy.sql
        # rows read: one per task, rung and week at most, plus the fold's (a scan of the base
        # code returned one per step)
        assert spy.rows <= len(read_rollup(engine.ledger, by_week=True)) + 1
        rows = drift_report(engine.ledger, targets={"faq": 0.7},
                            since=NOW - DRIFT_WEEKS * WEEK_S)
        assert _scrape(url) == _expected(rows)
        late = ("cascade_drift_cost_per_run_usd", ("faq", "mini", week_of(NOW)))
        assert late not in want
        assert _expected(rows)[late] == 0.5


@pytest.mark.usefixtures("keys")
def test_a_scrape_never_waits_for_the_ledger(tmp_path: Any, server: MockLLMServer) -> None:
    """While the ledger cannot be read (another thread holds its connection), a scrape that
    starts a refresh still answers at once, with the gauges of the last refresh; the refresh
    completes once the ledger is free."""
    db = Db("sqlite", path=tmp_path / "l.sqlite")
    engine = _engine(server, db)
    assert engine.ledger is not None
    write_random_ledger(engine.ledger, random.Random(12), runs=40)
    app = create_app(engine, api_keys=[KEY])
    drift, clock = app.state.drift, Clock()
    drift.clock, drift.now = clock, lambda: NOW
    backend = engine.ledger.backend
    assert isinstance(backend, SqliteBackend)
    with engine, running(app) as url:
        before = _scrape(url)
        assert before
        backend._lock.acquire()  # as a long transaction of this process would
        try:
            clock.now += REFRESH_S
            assert _scrape(url) == before  # answered while the ledger is held
            assert drift.refreshing
        finally:
            backend._lock.release()
        assert _until(lambda: not drift.refreshing)
        assert drift.refreshes == 2
