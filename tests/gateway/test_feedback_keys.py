"""Issue 22, item 13: a gateway key scores only its own runs, at a bounded rate.

Each run's ledger row carries an opaque id of the key that made it (``runs.key_id``);
``POST /v1/feedback`` compares it, unless the key is an admin key (``server.admin_keys_env``)
or ``server.feedback_any_run`` is set. Each key may send ``server.feedback_rpm`` feedback
requests a minute. Through the real gateway and the ``openai`` SDK, on both ledger backends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import openai
import pytest

from cascade import Cascade
from cascade.gateway.app import create_app, running
from cascade.gateway.limits import TokenBuckets
from cascade.gateway.state import Gateway, key_id
from cascade.ledger.feedback import MAX_COMMENT
from cascade.testing import MockLLMServer
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, live_config
from tests.gateway.test_attacks import ASK, MINI
from tests.ledger.ledger_db import Db

ALICE, BOB, ADMIN = "gw-key-alice-7f3a", "gw-key-bob-19cc", "gw-key-admin-d00d"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def gateway(db: Db, **server: Any) -> Iterator[tuple[str, Gateway]]:
    """Keys ALICE and BOB, admin key ADMIN (through server.admin_keys_env)."""
    with pytest.MonkeyPatch.context() as env, MockLLMServer() as upstream:
        env.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
        env.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)
        env.setenv("CASCADE_TEST_ADMIN_KEYS", ADMIN)
        config = live_config(upstream, ladder=["mini"], evaluators=[], attempts=1)
        config["ledger"] = db.section()
        config["server"] = {"admin_keys_env": "CASCADE_TEST_ADMIN_KEYS", **server}
        upstream.script(MINI, ["We are open from nine to five"])
        engine = Cascade.from_dict(config)
        try:
            app = create_app(engine, api_keys=[ALICE, BOB])
            with running(app) as url:
                yield url, app.state.gateway
        finally:
            engine.close()


def ask(url: str, key: str) -> str:
    """A chat request through the openai SDK; returns the run id."""
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as api:
        raw = api.chat.completions.with_raw_response.create(
            model="faq", messages=ASK)  # type: ignore[arg-type]
    return raw.headers["x-cascade-run-id"]


def score(url: str, key: str, run_id: str, **extra: Any) -> httpx2.Response:
    return httpx2.post(f"{url}/v1/feedback", json={"run_id": run_id, "score": 1, **extra},
                       headers={"authorization": f"Bearer {key}"}, timeout=30)


def test_13_a_key_scores_only_its_own_runs(db: Db) -> None:
    """Bob's run is unknown to Alice (400 run_not_found, as for a run id that never existed)."""
    with gateway(db) as (url, _):
        alices, bobs = ask(url, ALICE), ask(url, BOB)
        assert score(url, ALICE, alices).status_code == 200
        theft = score(url, ALICE, bobs)
        never = score(url, ALICE, "f" * 32)
        assert score(url, BOB, bobs).status_code == 200
    assert theft.status_code == never.status_code == 400
    assert theft.json()["error"]["code"] == never.json()["error"]["code"] == "run_not_found"
    assert theft.json()["error"]["message"].replace(bobs, "f" * 32) == (
        never.json()["error"]["message"])
    assert sorted(db.rows("SELECT run_id FROM feedback")) == sorted([(alices,), (bobs,)])
    # The runs carry the keys' ids, never the keys.
    assert dict(db.rows("SELECT run_id, key_id FROM runs")) == {
        alices: key_id(ALICE.encode()), bobs: key_id(BOB.encode())}
    stored = " ".join(str(r) for r in db.rows("SELECT * FROM runs"))
    assert ALICE not in stored
    assert BOB not in stored


def test_13_an_admin_key_scores_any_run(db: Db) -> None:
    """An admin key (server.admin_keys_env) is accepted everywhere and scores every key's runs."""
    with gateway(db) as (url, _):
        alices, admins = ask(url, ALICE), ask(url, ADMIN)
        assert score(url, ADMIN, alices).status_code == 200
        assert score(url, ALICE, admins).status_code == 400
        assert score(url, ADMIN, admins).status_code == 200


@pytest.fixture
def sqlite_db(tmp_path: Any) -> Db:
    return Db("sqlite", path=tmp_path / "ledger.sqlite")


def test_13_feedback_any_run_lets_every_key_score(sqlite_db: Db) -> None:
    """server.feedback_any_run: true is the old rule: any key scores any run."""
    with gateway(sqlite_db, feedback_any_run=True) as (url, _):
        bobs = ask(url, BOB)
        assert score(url, ALICE, bobs).status_code == 200


def test_13_feedback_is_rate_limited_per_key(sqlite_db: Db) -> None:
    """Past server.feedback_rpm a key gets an OpenAI-shaped 429; other keys are not held up, and
    the bucket refills with time (an injected clock)."""
    clock = Clock()
    with gateway(sqlite_db, feedback_rpm=3) as (url, state):
        state.feedback_limit = TokenBuckets(state.settings.feedback_rpm, clock=clock)
        alices = ask(url, ALICE)
        assert [score(url, ALICE, alices).status_code for _ in range(3)] == [200] * 3
        limited = score(url, ALICE, alices)
        assert score(url, ALICE, "nope").status_code == 429  # unknown ids cost a token too
        assert score(url, BOB, "nope").status_code == 400  # Bob's own bucket
        clock.now += 20  # 3 a minute: one token back
        assert score(url, ALICE, alices).status_code == 200
        assert score(url, ALICE, alices).status_code == 429
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "20"
    error = limited.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "server.feedback_rpm" in error["message"]
    assert sqlite_db.rows("SELECT COUNT(*) FROM feedback") == [(4,)]


def test_13_comments_are_capped_at_4000_characters(sqlite_db: Db) -> None:
    """A comment of 4,000 characters is stored; one more is a 400 naming the field."""
    with gateway(sqlite_db) as (url, _):
        alices = ask(url, ALICE)
        assert score(url, ALICE, alices, comment="x" * MAX_COMMENT).status_code == 200
        longer = score(url, ALICE, alices, comment="x" * (MAX_COMMENT + 1))
    assert MAX_COMMENT == 4000
    assert longer.status_code == 400
    assert "comment: longer than 4000 characters" in longer.json()["error"]["message"]


def test_13_token_buckets_refill_at_the_rate() -> None:
    """The bucket holds per_minute tokens and refills per_minute a minute, per key."""
    clock = Clock()
    buckets = TokenBuckets(60, clock=clock)
    assert [buckets.take("a") for _ in range(60)] == [0.0] * 60
    assert buckets.take("a") == pytest.approx(1.0)
    assert buckets.take("b") == 0.0
    clock.now += 0.5
    assert buckets.take("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    clock.now += 3600
    assert [buckets.take("a") for _ in range(61)][-1] > 0  # never more than the burst


def test_13_library_runs_carry_the_key_id_they_are_given(sqlite_db: Db) -> None:
    """complete(key_id=...) stores it on the run; add_feedback(made_with=) compares it."""
    from cascade.errors import ConfigError, FeedbackError
    from cascade.ledger.feedback import add_feedback

    with gateway(sqlite_db) as (_, state):
        engine = state.engine
        run_id = engine.complete("faq", "q", key_id="k1").run_id
        with pytest.raises(FeedbackError, match="unknown run id"):
            add_feedback(engine.ledger, run_id, 1, made_with="k2")
        assert add_feedback(engine.ledger, run_id, 1, made_with="k1").run_id == run_id
        assert engine.feedback(run_id, 0.5).score == 0.5  # the library scores any run
        config = {**engine.config.model_dump(), "server": {"allow_params": ["key_id"]}}
        with pytest.raises(ConfigError, match="key_id can never be a client parameter"):
            Cascade.from_dict(config)
    assert sqlite_db.rows("SELECT key_id FROM runs") == [("k1",)]
