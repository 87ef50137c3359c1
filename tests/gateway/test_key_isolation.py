"""One tenant's named key cannot touch another's share (review of issue 20).

- A key limited to some tasks is refused before any rate limit is taken, so its refused
  requests do not use up the rate of a task it may not use (nor through ``auto``).
- With named keys, ``/metrics`` (every key's name, spend and budget) is for admin keys only.
- ``GET /v1/models/{id}`` hides what ``GET /v1/models`` hides from the key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import pytest

from cascade import Cascade
from cascade.gateway.app import create_app, running
from cascade.ledger.keys import KeyStore
from cascade.testing import MockLLMServer
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, live_config
from tests.gateway.test_attacks import MINI
from tests.gateway.test_named_keys import chat
from tests.ledger.ledger_db import Db

UNNAMED, ADMIN = "gw-unnamed-key-91c2", "gw-admin-key-77aa"


@contextmanager
def served(db: Db, **top: Any) -> Iterator[tuple[str, KeyStore]]:
    """Tasks faq and other (other: 3 requests a minute, in process), named keys on."""
    with pytest.MonkeyPatch.context() as env, MockLLMServer() as upstream:
        env.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
        env.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)
        env.setenv("GW_ADMIN_KEYS", ADMIN)
        config = live_config(upstream, ladder=["mini"], evaluators=[], attempts=1)
        config["tasks"]["other"] = {"ladder": ["mini"]}
        config["ledger"] = db.section()
        config["server"] = {"ledger_keys": True, "admin_keys_env": "GW_ADMIN_KEYS"}
        config["limits"] = {"tasks": {"other": {"rpm": 3}}}
        config.update(top)
        upstream.script(MINI, ["We are open from nine to five"])
        engine = Cascade.from_dict(config)
        try:
            assert engine.ledger is not None
            with running(create_app(engine, api_keys=[UNNAMED])) as url:
                yield url, KeyStore(engine.ledger)
        finally:
            engine.close()


def test_a_refused_task_takes_nothing_from_its_rate_limit(db: Db) -> None:
    with served(db) as (url, store):
        _, mallory = store.create("mallory", tasks=["faq"])
        refused = [chat(url, mallory, "other") for _ in range(5)]
        assert [r.status_code for r in refused] == [403] * 5
        assert {r.json()["error"]["code"] for r in refused} == {"task_not_allowed"}
        # Task other's 3 requests a minute are all still there for the keys that may use it.
        assert [chat(url, UNNAMED, "other").status_code for _ in range(3)] == [200] * 3
        assert chat(url, UNNAMED, "other").status_code == 429
        assert chat(url, mallory, "faq").status_code == 200


def test_metrics_are_for_admin_keys_when_keys_are_named(db: Db) -> None:
    with served(db) as (url, store):
        _, a = store.create("customer-a")
        _, b = store.create("customer-b", daily_usd=50)
        assert chat(url, b).status_code == 200
        for key in (a, UNNAMED):
            seen = httpx2.get(f"{url}/metrics", headers={"authorization": f"Bearer {key}"})
            assert seen.status_code == 403
            assert seen.json()["error"]["code"] == "admin_key_required"
            assert "customer-b" not in seen.text
        admin = httpx2.get(f"{url}/metrics", headers={"authorization": f"Bearer {ADMIN}"})
        assert admin.status_code == 200
        assert 'key="customer-b"' in admin.text


def test_a_model_entry_is_hidden_from_a_key_that_may_not_use_it(db: Db) -> None:
    with served(db) as (url, store):
        _, a = store.create("customer-a", tasks=["faq"])
        headers = {"authorization": f"Bearer {a}"}
        hidden = httpx2.get(f"{url}/v1/models/cascade/other", headers=headers)
        assert hidden.status_code == 404
        assert httpx2.get(f"{url}/v1/models/cascade/faq", headers=headers).status_code == 200
        full = httpx2.get(
            f"{url}/v1/models/cascade/other", headers={"authorization": f"Bearer {UNNAMED}"}
        )
        assert full.status_code == 200
