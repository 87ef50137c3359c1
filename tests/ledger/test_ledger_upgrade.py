"""Where the ledger package meets the hardening and savings releases: the ``usage_estimated``
schema step, steps that call nothing (router and deadline skips), and checking a config's
``ledger:`` section without opening it.

The tests that take the ``db`` fixture run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from cascade import Cascade, ConfigError, ProviderError
from cascade.cli import main
from cascade.ledger import Ledger, buckets
from cascade.ledger.schema import VERSION
from cascade.replay.report import ledger_report
from cascade.testing import FakeProvider, make_completion
from cascade.types import CascadeResult, StepRecord
from tests.engine.test_engine import config
from tests.ledger.ledger_db import Db

ROOT = Path(__file__).resolve().parents[2]


def test_ledger_written_by_the_hardening_release_upgrades_in_place(tmp_path: Path) -> None:
    """A file written by the hardening release (release 0.1's tables plus ``usage_estimated``,
    no ``schema_version``) opens: rows, flags and totals kept, the report unchanged."""
    path = tmp_path / "old.sqlite"
    shutil.copy(ROOT / "tests" / "data" / "ledger_v1_usage.sqlite", path)
    db = Db("sqlite", path=path)
    assert db.rows("SELECT name FROM sqlite_master WHERE name = 'schema_version'") == []
    ledger = Ledger(path)
    try:
        assert ledger.schema_before == 1
        assert db.rows("SELECT version FROM schema_version") == [(VERSION,)]
        assert db.rows("SELECT step, cost_usd, usage_estimated, status FROM steps ORDER BY id") == [
            (1, 0.25, 0, "settled"), (2, 1.5, 1, "settled")]
        nov30 = buckets("faq", 1796040000.0)
        assert ledger.spent(nov30) == dict.fromkeys(nov30, 1.75)
        report = ledger_report(ledger)
        assert report["tasks"]["faq"]["usage_estimated"] == 1
        assert report["tasks"]["faq"]["models"]["big"]["usage_estimated"] == 1
        assert report["total_cost_usd"] == 1.75
    finally:
        ledger.close()


def test_release_0_1_ledger_gains_usage_estimated(tmp_path: Path) -> None:
    """The release-0.1 file reaches the same schema: old rows read as usage reported."""
    path = tmp_path / "old.sqlite"
    shutil.copy(ROOT / "tests" / "data" / "ledger_v1.sqlite", path)
    Ledger(path).close()
    db = Db("sqlite", path=path)
    assert db.rows("SELECT version FROM schema_version") == [(VERSION,)]
    assert db.rows("SELECT DISTINCT usage_estimated FROM steps") == [(0,)]


def test_schema_2_gains_usage_estimated(db: Db) -> None:
    """A ledger at schema 2 (the ledger package before the column) is upgraded in place, once."""
    db.open().close()
    db.drop_rollup()  # its triggers read the column
    db.execute("ALTER TABLE steps DROP COLUMN usage_estimated")
    db.execute("UPDATE schema_version SET version = 2")
    ledger = db.open()
    try:
        assert ledger.schema_before == 2
        ledger.record_step(StepRecord("r", "t", 1, "m", "p", 1, 1, 1, 0.5, 1.0, "accept",
                                      usage_estimated=True))
    finally:
        ledger.close()
    db.open().close()  # a second open finds the current schema and changes nothing
    assert db.rows("SELECT version FROM schema_version") == [(VERSION,)]
    assert db.rows("SELECT usage_estimated FROM steps") == [(1,)]


def test_settle_stores_usage_estimated(db: Db) -> None:
    """A reply without usage: its settled row says so, the report counts it (both backends)."""
    fake = FakeProvider("p", {"small": [make_completion("a fine long answer", input_tokens=7,
                                                        output_tokens=4, usage_estimated=True)]})
    data = config()
    data["ledger"] = db.section()
    data["budgets"] = {"daily_usd": 10.0}
    with Cascade.from_dict(data, providers={"p": fake}) as engine:
        engine.complete("t", "q")
        report = ledger_report(engine.ledger)  # type: ignore[arg-type]
    assert db.rows("SELECT decision, status, usage_estimated FROM steps") == [
        ("accept", "settled", 1)]
    assert report["tasks"]["t"]["usage_estimated"] == 1


def _router_config(db: Db) -> dict[str, Any]:
    # P(right) of rung "small" falls with the prompt's length, so a long prompt skips it.
    router = {"rungs": {"small": {"dense": ["prompt.words"], "weights": [-4.0], "mean": [2.0],
                                  "scale": [1.0], "bias": 0.0}}}
    data = config(ladder=["small", "medium"],
                  router={"model": router, "skip_below": {"small": 0.5}})
    data["ledger"] = db.section()
    data["budgets"] = {"daily_usd": 10.0}  # so the called rung reserves
    return data


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_router_skip_is_a_free_settled_row_without_reservation(db: Db, mode: str) -> None:
    """A skipped rung calls nothing: a settled row at cost 0 that reserved nothing; the called
    rung after it is reserved and settled, and the totals hold exactly the spend."""
    fake = FakeProvider("p", {"medium": [make_completion("a fine long answer", input_tokens=10,
                                                         output_tokens=4)]})
    prompt = " ".join(["long"] * 40)
    with Cascade.from_dict(_router_config(db), providers={"p": fake}) as engine:
        if mode == "sync":
            result = engine.complete("t", prompt)
        else:
            result = asyncio.run(engine.acomplete("t", prompt))
        assert engine.ledger is not None
        spent = engine.ledger.spent(buckets("t", result.steps[0].ts or 0.0))
    assert [s.decision for s in result.steps] == ["skip", "accept"]
    assert [c["model"] for c in fake.calls] == ["medium"]
    rows = db.rows("SELECT step, model, decision, status, cost_usd, reserved_usd FROM steps"
                   " ORDER BY step")
    assert rows[0] == (1, "small", "skip", "settled", 0.0, 0.0)
    assert rows[1][:4] == (2, "medium", "accept", "settled")
    assert rows[1][5] > rows[1][4] > 0  # reserved its worst case, settled at the real cost
    assert list(spent.values()) == [pytest.approx(result.cost_usd)] * 4


def test_deadline_skips_are_free_rows(db: Db) -> None:
    """A run whose deadline has passed skips its rungs: rows at cost 0, nothing reserved."""
    fake = FakeProvider("p", {})
    data = config(ladder=["small", "medium"])
    data["ledger"] = db.section()
    with Cascade.from_dict(data, providers={"p": fake}) as engine, \
            pytest.raises(ProviderError):
        engine.complete("t", "q", deadline_s=1e-9)
    assert fake.calls == []
    assert db.rows("SELECT step, decision, status, cost_usd, reserved_usd FROM steps"
                   " ORDER BY step") == [(1, "skip", "settled", 0.0, 0.0),
                                         (2, "skip", "settled", 0.0, 0.0)]
    assert db.rows("SELECT COALESCE(SUM(spent_nusd), 0) FROM totals") == [(0,)]


def test_validate_checks_the_ledger_section_without_opening_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset ledger.url_env is one line naming it; a set one is not connected to."""
    data = config()
    data["ledger"] = {"url_env": "CASCADE_TEST_LEDGER_URL"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.delenv("CASCADE_TEST_LEDGER_URL", raising=False)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "ledger.url_env: environment variable CASCADE_TEST_LEDGER_URL" in err
    monkeypatch.setenv("CASCADE_TEST_LEDGER_URL", "postgresql://bob:pw-SECRET@127.0.0.1:1/x")
    assert main(["validate", str(path)]) == 0
    assert "pw-SECRET" not in "".join(capsys.readouterr())


def test_unopenable_sqlite_ledger_names_ledger_path(tmp_path: Path) -> None:
    """A ledger file that SQLite cannot open (not a database) is a ConfigError at ledger.path."""
    bad = tmp_path / "not-a-db.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    data = config()
    data["ledger"] = {"path": str(bad)}
    with pytest.raises(ConfigError, match=r"ledger\.path: cannot open the ledger") as info:
        Cascade.from_dict(data, providers={"p": FakeProvider("p", {})})
    assert str(bad) in str(info.value)


def test_schema_4_gains_runs_key_id(db: Db) -> None:
    """A schema-4 ledger (no runs.key_id) is upgraded in place: old runs read NULL, new runs
    store the key id they were made with."""
    ledger = db.open()
    try:
        ledger.record_run(_result("old"))
    finally:
        ledger.close()
    db.execute("ALTER TABLE runs DROP COLUMN key_id")
    db.execute("UPDATE schema_version SET version = 4")
    ledger = db.open()
    try:
        assert ledger.schema_before == 4
        ledger.record_run(_result("new"), key_id="0123456789abcdef")
    finally:
        ledger.close()
    db.open().close()  # a second open finds the current schema and changes nothing
    assert db.rows("SELECT version FROM schema_version") == [(VERSION,)]
    assert db.rows("SELECT run_id, key_id FROM runs ORDER BY run_id") == [
        ("new", "0123456789abcdef"), ("old", None)]


def _result(run_id: str) -> CascadeResult:
    return CascadeResult("a", "m", True, 0.0, 1.0, run_id, (), task="t")


def test_schema_6_gains_content_logprob(db: Db) -> None:
    """A schema-6 ledger (no content.logprob) is upgraded in place: a floating-point column,
    old content rows read NULL, new answers store their mean token log-probability."""
    ledger = db.open()
    try:
        ledger.record_run(_result("old"), content=[(1, "answer", "m", "m-1", "a", None)])
    finally:
        ledger.close()
    db.execute("ALTER TABLE content DROP COLUMN logprob")
    db.execute("UPDATE schema_version SET version = 6")
    ledger = db.open()
    try:
        assert ledger.schema_before == 6
        ledger.record_run(_result("new"), content=[(1, "answer", "m", "m-1", "b", -0.25)])
    finally:
        ledger.close()
    db.open().close()  # a second open finds the current schema and changes nothing
    assert db.rows("SELECT version FROM schema_version") == [(VERSION,)]
    assert db.rows("SELECT run_id, text, logprob FROM content ORDER BY run_id") == [
        ("new", "b", -0.25), ("old", "a", None)]
    if db.backend == "sqlite":
        kind = db.rows("SELECT type FROM pragma_table_info('content') WHERE name = 'logprob'")
        assert kind == [("REAL",)]
    else:
        kind = db.rows("SELECT data_type FROM information_schema.columns WHERE table_schema = ?"
                       " AND table_name = 'content' AND column_name = 'logprob'", (db.schema,))
        assert kind == [("double precision",)]


def test_schema_7_gains_always_top_and_key_name(db: Db) -> None:
    """A schema-7 ledger is upgraded in place: runs gain top_usd, top_estimated and key_name
    (old runs read NULL and count in no saving), the rollup gains its top_* sums and their
    triggers, and new runs' figures reach the report."""
    ledger = db.open()
    try:
        ledger.record_run(_result("old"))
    finally:
        ledger.close()
    db.to_schema_7()
    ledger = db.open()
    try:
        assert ledger.schema_before == 7
        ledger.record_run(_result("new"), top=(0.25, True))
        ledger.record_run(_result("exact"), top=(0.5, False))
        ledger.record_run(_result("new2"), top=(0.125, True))
        report = ledger_report(ledger)
    finally:
        ledger.close()
    db.open().close()  # a second open finds the current schema and changes nothing
    assert db.rows("SELECT version FROM schema_version") == [(VERSION,)]
    assert db.rows("SELECT run_id, top_usd, top_estimated, key_name FROM runs ORDER BY run_id"
                   ) == [("exact", 0.5, 0, None), ("new", 0.25, 1, None),
                         ("new2", 0.125, 1, None), ("old", None, None, None)]
    assert (report["top_usd"], report["saved_usd"]) == (0.875, 0.875)
    assert (report["priced_runs"], report["top_exact_runs"]) == (3, 1)
