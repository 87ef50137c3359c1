"""Issue 20 (keys), through the real gateway and the ``openai`` SDK, on both ledger backends:
named keys from the ledger (``server.ledger_keys: true``), their tasks, budgets, revocation
by another replica, metrics labels and the access log; and no key material in any output."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import openai
import pytest
from structlog.testing import capture_logs

from cascade import Cascade
from cascade.errors import LedgerError
from cascade.gateway.app import create_app, running
from cascade.gateway.state import Gateway
from cascade.ledger.keys import KeyStore, split_token
from cascade.testing import MockLLMServer
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, live_config
from tests.gateway.test_attacks import ASK, MINI
from tests.gateway.test_feedback_keys import Clock
from tests.ledger.ledger_db import Db

UNNAMED = "gw-unnamed-key-5e1f"
ADMIN = "gw-admin-key-3d0b"  # /metrics with named keys is for admin keys


@contextmanager
def gateway(
    db: Db, api_keys: tuple[str, ...] = (), **server: Any
) -> Iterator[tuple[str, Gateway, Clock, KeyStore]]:
    """Tasks faq and other; named keys on; the key cache's clock is the test's."""
    with pytest.MonkeyPatch.context() as env, MockLLMServer() as upstream:
        env.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
        env.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)
        config = live_config(upstream, ladder=["mini"], evaluators=[], attempts=1)
        config["tasks"]["other"] = {"ladder": ["mini"]}
        config["ledger"] = db.section()
        env.setenv("NAMED_KEYS_TEST_ADMIN", ADMIN)
        config["server"] = {"ledger_keys": True, "admin_keys_env": "NAMED_KEYS_TEST_ADMIN",
                            **server}
        upstream.script(MINI, ["We are open from nine to five"])
        engine = Cascade.from_dict(config)
        try:
            assert engine.ledger is not None
            store = KeyStore(engine.ledger)
            app = create_app(engine, api_keys=list(api_keys))
            clock = Clock()
            app.state.gateway.ledger_keys.clock = clock
            with running(app) as url:
                yield url, app.state.gateway, clock, store
        finally:
            engine.close()


def chat(url: str, key: str, model: str = "faq") -> httpx2.Response:
    return httpx2.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": ASK},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_named_keys_need_auth_even_without_unnamed_keys(db: Db) -> None:
    """With ledger keys on and no server.api_keys_env keys, a request without a key, with a
    made-up key, or with a wrong secret gets 401; a created key is served."""
    with gateway(db) as (url, gw, _, store):
        _, key = store.create("team-a")
        assert gw.has_keys
        assert (
            httpx2.post(
                f"{url}/v1/chat/completions", json={"model": "faq", "messages": ASK}, timeout=30
            ).status_code
            == 401
        )
        assert chat(url, "ck-0123456789ab-nope").status_code == 401
        wrong = chat(url, key[:-2] + ("xy" if not key.endswith("xy") else "zz"))
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        assert chat(url, key).status_code == 200


def test_unnamed_keys_keep_working_unlimited(db: Db) -> None:
    """A server.api_keys_env key is served for every task, and its rows carry no key name."""
    with gateway(db, api_keys=(UNNAMED,)) as (url, _, _, store):
        store.create("team-a", tasks=["faq"])
        served = chat(url, UNNAMED, "other")
        assert served.status_code == 200
        run_id = served.headers["x-cascade-run-id"]
        assert db.rows("SELECT key_name FROM runs WHERE run_id = ?", (run_id,)) == [(None,)]


def test_a_key_limited_to_tasks_gets_403_for_the_others(db: Db) -> None:
    """403 task_not_allowed through the SDK (not retried); the models list shows its tasks."""
    with gateway(db) as (url, _, _, store):
        _, key = store.create("faq-only", tasks=["faq"])
        with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=2) as api:
            with pytest.raises(openai.PermissionDeniedError) as info:
                api.chat.completions.create(model="other", messages=ASK)  # type: ignore[arg-type]
            assert info.value.code == "task_not_allowed"
            assert "key 'faq-only' may not use task 'other'" in info.value.message
            ok = api.chat.completions.create(model="faq", messages=ASK)  # type: ignore[arg-type]
            assert ok.choices[0].message.content
            assert [m.id for m in api.models.list()] == ["cascade/faq"]
        assert db.rows("SELECT task FROM runs") == [("faq",)]


def test_every_row_and_the_metrics_name_the_key(db: Db) -> None:
    """Steps, the run and its feedback carry the key's name; /metrics labels series with it;
    the access log names it; none of them holds the key."""
    with gateway(db, api_keys=(UNNAMED,)) as (url, gw, _, store):
        _, key = store.create("team-a")
        with capture_logs() as logs:
            run_id = chat(url, key).headers["x-cascade-run-id"]
            chat(url, UNNAMED)
            scored = httpx2.post(
                f"{url}/v1/feedback",
                json={"run_id": run_id, "score": 1},
                headers={"authorization": f"Bearer {key}"},
                timeout=30,
            )
            assert scored.status_code == 200
        assert db.rows("SELECT key_name, status FROM steps WHERE run_id = ?", (run_id,)) == [
            ("team-a", "settled")
        ]
        assert db.rows("SELECT key_name FROM runs WHERE run_id = ?", (run_id,)) == [("team-a",)]
        assert db.rows("SELECT key_name FROM feedback") == [("team-a",)]
        assert gw.metrics.key_labels
        text = httpx2.get(
            f"{url}/metrics", headers={"authorization": f"Bearer {ADMIN}"}, timeout=30
        ).text
        assert 'cascade_requests_total{key="team-a",status="accepted",task="faq"} 1.0' in text
        assert 'cascade_requests_total{key="",status="accepted",task="faq"} 1.0' in text
        access = [e for e in logs if e["event"] == "cascade.access"]
        assert [e.get("key") for e in access] == ["team-a", None, "team-a"]
        secret = split_token(key)[1]  # type: ignore[index]
        assert secret not in text
        assert secret not in repr(logs)


def test_metrics_key_labels_can_be_turned_off(db: Db) -> None:
    """server.metrics_key_labels: false keeps the series without a key label."""
    with gateway(db, metrics_key_labels=False) as (url, gw, _, store):
        _, key = store.create("team-a")
        chat(url, key)
        assert not gw.metrics.key_labels
        text = gw.metrics.render().decode()
        assert 'cascade_requests_total{status="accepted",task="faq"} 1.0' in text


def test_a_revocation_by_another_replica_is_seen_within_the_cache_time(db: Db) -> None:
    """Another process revokes the key: this gateway serves it from its cache for less than
    0.5 s, then reads the row again and answers 401 saying the key was revoked."""
    with gateway(db) as (url, gw, clock, store):
        _, key = store.create("team-a")
        assert chat(url, key).status_code == 200
        reads = gw.ledger_keys.reads  # type: ignore[union-attr]
        other = db.open()  # the other replica's ledger
        try:
            KeyStore(other).revoke("team-a")
        finally:
            other.close()
        clock.now += 0.49
        assert chat(url, key).status_code == 200  # cached: no ledger read
        assert gw.ledger_keys.reads == reads  # type: ignore[union-attr]
        clock.now += 0.02
        refused = chat(url, key)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "api_key_revoked"
        assert "'team-a' was revoked" in refused.json()["error"]["message"]
        assert key not in refused.text


def test_an_expired_key_is_refused_saying_so(db: Db) -> None:
    """A key past its expiry gets 401 api_key_expired, checked on every request."""
    with gateway(db) as (url, _, _, store):
        _, key = store.create("old", expires=time.time() - 1)
        refused = chat(url, key)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "api_key_expired"
        assert "'old' has expired" in refused.json()["error"]["message"]


def test_a_keys_budget_is_429_naming_it(db: Db) -> None:
    """A key whose daily budget cannot hold the call's worst case: 429 budget_exceeded naming
    the key's budget; another key is unaffected."""
    with gateway(db) as (url, _, _, store):
        _, poor = store.create("poor", daily_usd=0.0001)
        _, rich = store.create("rich")
        refused = chat(url, poor)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "budget_exceeded"
        assert "key 'poor' daily budget $0.00" in refused.json()["error"]["message"]
        assert chat(url, rich).status_code == 200


def test_an_unreadable_key_row_is_503_not_a_crash(db: Db) -> None:
    """When the ledger cannot be read for a key whose cached row is stale, the request fails
    closed with 503 ledger_unavailable."""
    with gateway(db) as (url, gw, _, store):
        _, key = store.create("team-a")
        keys = gw.ledger_keys
        assert keys is not None

        def down(key_id: str) -> None:
            raise LedgerError("the ledger is down", backend=db.backend)

        keys.store.fetch = down  # type: ignore[method-assign]
        refused = chat(url, key)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "ledger_unavailable"


def test_the_key_cache_drops_its_oldest_entry_when_full(tmp_path: Any) -> None:
    """A flood of made-up ids keeps the cache at its size by dropping the entry read longest
    ago: the newest entries stay cached (no ledger read), the oldest is read again."""
    from cascade.gateway.keys import LedgerKeys
    from cascade.ledger import Ledger

    ledger = Ledger(tmp_path / "keys.sqlite")
    try:
        _, real = KeyStore(ledger).create("team-a")
        keys = LedgerKeys(ledger, clock=lambda: 0.0, max_entries=3)
        made_up = [f"ck-{i:012x}-secret" for i in range(3)]
        for token in [real, *made_up]:
            keys.lookup_sync(token)
        assert keys.reads == 4
        for token in made_up:  # the three newest: all still cached
            keys.lookup_sync(token)
        assert keys.reads == 4
        assert keys.lookup_sync(real).name == "team-a"  # the oldest was dropped: read again
        assert keys.reads == 5
    finally:
        ledger.close()
