"""Issue 20 (keys): schema 8, the key store and per-key budgets, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from cascade.errors import KeyStoreError
from cascade.ledger import Ledger
from cascade.ledger.keys import KeyStore, hash_secret, split_token
from cascade.ledger.money import Accounts, Limit
from cascade.ledger.schema import VERSION
from cascade.types import CascadeResult, StepRecord
from tests.ledger.ledger_db import Db


@pytest.fixture
def store(db: Db) -> Iterator[KeyStore]:
    ledger = db.open()
    try:
        yield KeyStore(ledger, clock=lambda: 1_000.0)
    finally:
        ledger.close()


def _step(run_id: str, cost: float = 0.0) -> StepRecord:
    return StepRecord(
        run_id=run_id,
        task="t",
        step=1,
        model="m",
        provider="p",
        attempts=1,
        input_tokens=1,
        output_tokens=1,
        cost_usd=cost,
        latency_ms=1.0,
        decision="accept",
        ts=1_000.0,
    )


def test_a_fresh_ledger_has_keys_and_key_names(db: Db) -> None:
    """Schema 8: a keys table, and key_name on steps, runs and feedback."""
    db.open().close()
    assert db.rows("SELECT version FROM schema_version") == [(VERSION,)] == [(9,)]
    assert db.rows("SELECT COUNT(*) FROM keys") == [(0,)]
    for table in ("steps", "runs", "feedback"):
        assert db.rows(f"SELECT key_name FROM {table}") == []


def test_schema_7_gains_keys_and_key_names(db: Db) -> None:
    """A schema-7 ledger is upgraded in place: old rows read NULL, new rows carry the name."""
    ledger = db.open()
    try:
        ledger.record_run(CascadeResult("a", "m", True, 0.0, 1.0, "old", (), task="t"))
        ledger.record_step(_step("old"))
    finally:
        ledger.close()
    db.to_schema_7()
    ledger = db.open()
    try:
        assert ledger.schema_before == 7
        ledger.record_run(
            CascadeResult("a", "m", True, 0.0, 1.0, "new", (), task="t"), key_name="team-a"
        )
        ledger.record_step(_step("new"), key_name="team-a")
        KeyStore(ledger).create("team-a")
    finally:
        ledger.close()
    db.open().close()  # a second open finds the current schema and changes nothing
    assert db.rows("SELECT version FROM schema_version") == [(VERSION,)]
    assert db.rows("SELECT run_id, key_name FROM runs ORDER BY run_id") == [
        ("new", "team-a"),
        ("old", None),
    ]
    assert db.rows("SELECT run_id, key_name FROM steps ORDER BY run_id") == [
        ("new", "team-a"),
        ("old", None),
    ]
    assert db.rows("SELECT name FROM keys") == [("team-a",)]


def test_the_key_is_stored_as_a_salted_hash_only(store: KeyStore, db: Db) -> None:
    """Neither the key nor its secret is in the table; the hash matches salt + secret."""
    record, key = store.create("team-a", tasks=["faq"], daily_usd=5, rpm=10)
    key_id, secret = split_token(key) or ("", "")
    assert record.id == key_id
    rows = db.rows("SELECT id, name, salt, hash, tasks, daily_usd, rpm FROM keys")
    assert len(rows) == 1
    row = rows[0]
    assert key not in repr(row)
    assert secret not in repr(row)
    assert row[3] == hash_secret(row[2], secret)
    assert row[2]
    assert row[4:] == ('["faq"]', 5.0, 10)
    assert store.find(key) == record
    assert store.find(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert store.find(f"ck-{'0' * 12}-{secret}") is None


def test_two_keys_with_one_secret_hash_differently(store: KeyStore, db: Db) -> None:
    """The per-key salt: equal secrets would not give equal hashes."""
    store.create("a")
    store.create("b")
    salts = db.rows("SELECT salt FROM keys")
    assert len({s for (s,) in salts}) == 2
    assert hash_secret(salts[0][0], "x") != hash_secret(salts[1][0], "x")


@pytest.mark.parametrize(
    ("name", "limits", "param"),
    [
        ("team a", {}, "name"),
        ("", {}, "name"),
        ("ok", {"daily_usd": -1}, "daily_usd"),
        ("ok", {"monthly_usd": float("nan")}, "monthly_usd"),
        ("ok", {"rpm": 0}, "rpm"),
        ("ok", {"tpm": 1.5}, "tpm"),
        ("ok", {"tasks": []}, "tasks"),
        ("ok", {"colour": "red"}, "colour"),
        # beyond what the ledger can hold: 1e300 USD overflowed nano() in every reservation,
        # 10**20 rpm the SQLite INTEGER, a year-10000 expiry every command that prints it
        ("ok", {"rpm": 10**20}, "rpm"),
        ("ok", {"tpm": 2**53 + 1}, "tpm"),
        ("ok", {"daily_usd": 1e300}, "daily_usd"),
        ("ok", {"daily_usd": 0}, "daily_usd"),
        ("ok", {"monthly_usd": 10**400}, "monthly_usd"),
        ("ok", {"expires": 1e300}, "expires"),
        ("ok", {"expires": -1.0}, "expires"),
        ("ok", {"expires": float("inf")}, "expires"),
    ],
)
def test_bad_names_and_limits_are_refused(
    store: KeyStore, name: str, limits: dict[str, object], param: str
) -> None:
    """Each bad field is named; nothing is written."""
    with pytest.raises(KeyStoreError) as info:
        store.create(name, **limits)
    assert info.value.param == param
    assert store.list() == []


def test_duplicate_and_unknown_names_are_refused(store: KeyStore) -> None:
    """A second key of one name, or a change to a key that does not exist, is refused."""
    store.create("team-a")
    with pytest.raises(KeyStoreError, match="exists already"):
        store.create("team-a")
    with pytest.raises(KeyStoreError, match="no key named 'nope'"):
        store.update("nope", rpm=3)
    with pytest.raises(KeyStoreError, match="no key named 'nope'"):
        store.revoke("nope")


def test_update_changes_and_clears_limits(store: KeyStore) -> None:
    """None clears a limit; others stay as they were."""
    store.create("team-a", tasks=["faq"], daily_usd=5, rpm=10)
    store.clock = lambda: 2_000.0
    record = store.update("team-a", tasks=None, rpm=20)
    assert (record.tasks, record.daily_usd, record.rpm) == (None, 5.0, 20)
    assert (record.created, record.updated) == (1_000.0, 2_000.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("rpm", 10**20), ("tpm", 0), ("daily_usd", 1e300), ("monthly_usd", 1e10),
     ("expires", 1e300)],
)
def test_update_holds_the_same_bounds(store: KeyStore, field: str, value: object) -> None:
    """update refuses what create refuses, naming the field; the key is left as it was."""
    before = store.create("team-a", daily_usd=5, rpm=10)[0]
    with pytest.raises(KeyStoreError) as info:
        store.update("team-a", **{field: value})
    assert info.value.param == field
    assert store.get("team-a") == before


def test_limits_at_the_bounds_are_kept(store: KeyStore) -> None:
    """The largest budgets and rates and the last day of 9998 are accepted as given."""
    record = store.create("big", daily_usd=1e9, monthly_usd=1e9, rpm=2**53, tpm=2**53,
                          expires=253_370_764_799.0)[0]
    assert (record.daily_usd, record.rpm, record.tpm) == (1e9, 2**53, 2**53)
    assert record.expires == 253_370_764_799.0


def test_revoked_and_expired_states(store: KeyStore) -> None:
    """A revoked key stays revoked at its first revocation; expiry is at ``expires``."""
    store.create("gone")
    store.create("dated", expires=1_500.0)
    first = store.revoke("gone").revoked
    store.clock = lambda: 3_000.0
    assert store.revoke("gone").revoked == first == 1_000.0
    dated = store.get("dated")
    assert dated.state(1_499.0) == "active"
    assert dated.state(1_500.0) == "expired"
    assert store.get("gone").state(0.0) == "revoked"


def test_key_budget_refuses_in_the_reservation(db: Db) -> None:
    """A key's daily budget refuses a reservation that would pass it, naming that budget,
    while the same call without the key goes; the key's totals count its spend."""
    ledger = db.open()
    try:
        store = KeyStore(ledger)
        store.create("team-a", daily_usd=1.0)
        scope = store.get("team-a").scope
        accounts = Accounts(ledger, [Limit("global", "daily", 100.0)])
        kwargs = {
            "task": "t",
            "step": 1,
            "model_key": "m",
            "provider": "p",
            "spent": 0.0,
            "cap": None,
        }
        hold, refusal = accounts.reserve(run_id="r1", estimate=0.6, key=scope, **kwargs)
        assert hold is not None
        assert refusal is None
        hold, refusal = accounts.reserve(run_id="r2", estimate=0.6, key=scope, **kwargs)
        assert hold is None
        assert refusal is not None
        assert refusal.reason.startswith("key 'team-a' daily budget $1.00: ")
        assert refusal.limit_usd == 1.0
        hold, refusal = accounts.reserve(run_id="r3", estimate=0.6, **kwargs)
        assert refusal is None
        key_limit = Limit("team-a", "daily", 1.0, of_key=True)
        assert accounts.spent(key_limit) == pytest.approx(0.6)
        assert db.rows("SELECT run_id, key_name FROM steps ORDER BY run_id") == [
            ("r1", "team-a"),
            ("r3", None),
        ]
    finally:
        ledger.close()


def test_key_budget_holds_across_two_ledgers(db: Db) -> None:
    """Two processes' ledgers reserving for one key at once: the reservations never add up
    to more than the key's budget (each decision reads the shared totals in its transaction)."""
    if db.backend == "sqlite":
        pytest.skip("one writer at a time on SQLite; the PostgreSQL case is the one that races")
    first, second = db.open(), db.open()
    try:
        KeyStore(first).create("team-a", daily_usd=1.0)
        scope = KeyStore(second).get("team-a").scope
        granted: list[str] = []
        lock = threading.Lock()

        def spend(ledger: Ledger, who: str) -> None:
            accounts = Accounts(ledger, [])
            for i in range(20):
                hold, _ = accounts.reserve(
                    run_id=f"{who}{i}",
                    task="t",
                    step=1,
                    model_key="m",
                    provider="p",
                    estimate=0.07,
                    spent=0.0,
                    cap=None,
                    key=scope,
                )
                if hold is not None:
                    with lock:
                        granted.append(f"{who}{i}")

        threads = [
            threading.Thread(target=spend, args=(ledger, who))
            for ledger, who in ((first, "a"), (second, "b"), (first, "c"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(granted) == 14  # floor(1.0 / 0.07): every one that fits, no more
        total = db.rows("SELECT SUM(reserved_usd) FROM steps WHERE key_name = 'team-a'")[0][0]
        assert total <= 1.0
    finally:
        first.close()
        second.close()


def test_settlement_corrects_the_keys_totals(db: Db) -> None:
    """The key's totals hold the worst case while the call is in flight and its real cost once
    settled, to the nano-dollar, like the global and task totals."""
    ledger = db.open()
    try:
        accounts = Accounts(ledger, [])
        hold, _ = accounts.reserve(
            run_id="r1",
            task="t",
            step=1,
            model_key="m",
            provider="p",
            estimate=0.5,
            spent=0.0,
            cap=None,
            key=KeyStore(ledger).create("team-a")[0].scope,
        )
        assert hold is not None
        key_limit = Limit("team-a", "daily", 1.0, of_key=True)
        assert accounts.spent(key_limit) == pytest.approx(0.5)
        accounts.settle(hold, _step("r1", cost=0.125))
        assert accounts.spent(key_limit) == pytest.approx(0.125)
        assert accounts.spent(Limit("t", "monthly", 1.0)) == pytest.approx(0.125)
    finally:
        ledger.close()


def test_budget_status_lists_active_keys_budgets(db: Db) -> None:
    """``Accounts.status(keys=True)``: the config's budgets, then each active key's, with the
    key's spend this period; a revoked key's budgets are gone, and without ``keys`` none."""
    ledger = db.open()
    try:
        store = KeyStore(ledger)
        store.create("team-a", daily_usd=1.0, monthly_usd=5.0)
        store.create("team-b", daily_usd=2.0)
        store.create("no-budget")
        accounts = Accounts(ledger, [Limit("global", "daily", 100.0)])
        hold, _ = accounts.reserve(run_id="r1", task="t", step=1, model_key="m", provider="p",
                                   spent=0.0, cap=None, estimate=0.25,
                                   key=store.get("team-a").scope)
        assert hold is not None
        store.revoke("team-b")
        rows = {(r["scope"], r["period"]): (r["limit_usd"], r["spent_usd"])
                for r in accounts.status(keys=True)}
        assert rows == {
            ("global", "daily"): (100.0, pytest.approx(0.25)),
            ("key:team-a", "daily"): (1.0, pytest.approx(0.25)),
            ("key:team-a", "monthly"): (5.0, pytest.approx(0.25)),
        }
        assert [r["scope"] for r in accounts.status()] == ["global"]
    finally:
        ledger.close()
