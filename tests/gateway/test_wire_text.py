"""Issue 22, item 11: text the wire (or the ledger) cannot carry is answered in OpenAI's shape.

A lone surrogate in a model's answer, a lone surrogate or 100,000-deep JSON in a feedback body,
a NUL in a feedback comment on PostgreSQL: each gets a JSON answer (200 or 400), never a
plain-text 500 or a false ``ledger_unavailable``. Through the real gateway and a loopback
upstream, on both ledger backends where the ledger is involved.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import pytest

from cascade import Cascade
from cascade.gateway.app import create_app, running
from cascade.testing import MockLLMServer, Reply
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, live_config
from tests.gateway.test_attacks import ASK, KEY, MINI, client, post
from tests.ledger.ledger_db import Db

LONE = "caf\ud800 is open from nine"  # an upstream's "\ud800" escape decodes to this


@contextmanager
def gateway(db: Db) -> Iterator[tuple[str, MockLLMServer, Cascade]]:
    with pytest.MonkeyPatch.context() as env, MockLLMServer() as upstream:
        env.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
        env.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)
        config = live_config(upstream, ladder=["mini"], evaluators=[], attempts=1)
        config["ledger"] = db.section()
        engine = Cascade.from_dict(config)
        try:
            with running(create_app(engine, api_keys=[KEY])) as url:
                yield url, upstream, engine
        finally:
            engine.close()


def feedback(url: str, body: bytes) -> httpx2.Response:
    return httpx2.post(f"{url}/v1/feedback", content=body, timeout=30,
                       headers={"authorization": f"Bearer {KEY}",
                                "content-type": "application/json"})


def assert_openai_error(response: httpx2.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    return dict(error)


@pytest.fixture
def sqlite_db(tmp_path: Any) -> Db:
    return Db("sqlite", path=tmp_path / "ledger.sqlite")


def test_11_lone_surrogate_answer_is_sent_as_json(sqlite_db: Db) -> None:
    """The paid answer reaches the client, streamed or not, with the same text."""
    with gateway(sqlite_db) as (url, upstream, _engine), client(url) as api:
        upstream.script(MINI, [Reply(LONE)])
        whole = api.chat.completions.create(model="faq", messages=ASK)  # type: ignore[arg-type]
        pieces = api.chat.completions.create(model="faq", messages=ASK,  # type: ignore[arg-type]
                                             stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    assert whole.choices[0].message.content == LONE
    assert streamed == LONE


@pytest.mark.parametrize("body", [
    b'{"run_id": "r", "score": 1, "comment": "bad \\ud800 text"}',
    b'{"run_id": "r\\udc00", "score": 1}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"run_id": "r", "score": 1, "comment": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
], ids=["surrogate comment", "surrogate run_id", "100k deep", "100k deep comment"])
def test_11_feedback_text_json_cannot_carry_is_a_400(sqlite_db: Db, body: bytes) -> None:
    """A lone surrogate or 100,000-deep JSON is refused as invalid JSON, never a 500."""
    with gateway(sqlite_db) as (url, _upstream, _engine):
        error = assert_openai_error(feedback(url, body), 400)
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("request body is not valid JSON")


def test_11_nul_in_a_comment_is_stored_cleaned(db: Db) -> None:
    """A NUL is stored as U+FFFD on both backends (PostgreSQL refused it: a false 503)."""
    with gateway(db) as (url, upstream, _engine):
        upstream.script(MINI, ["We are open from nine"])
        run_id = post(url, {"model": "faq", "messages": ASK}).headers["x-cascade-run-id"]
        body = {"run_id": run_id, "score": 1, "comment": "good\x00answer"}
        response = feedback(url, json.dumps(body).encode())
        assert response.status_code == 200, response.text
        assert response.json()["comment"] == "good\ufffdanswer"
        nul_id = feedback(url, json.dumps({"run_id": "r\x00", "score": 1}).encode())
        assert assert_openai_error(nul_id, 400)["code"] == "run_not_found"
    assert db.rows("SELECT comment FROM feedback") == [("good\ufffdanswer",)]


def test_11_library_feedback_cleans_a_lone_surrogate(db: Db) -> None:
    """engine.feedback stores what JSON cannot refuse for it: a lone surrogate becomes U+FFFD."""
    with gateway(db) as (_url, upstream, engine):
        upstream.script(MINI, ["We are open from nine"])
        run_id = engine.complete("faq", "q").run_id
        row = engine.feedback(run_id, 0.5, "odd \ud800 text")
    assert row.comment == "odd \ufffd text"
    assert db.rows("SELECT comment FROM feedback") == [("odd \ufffd text",)]


def test_11_an_unexpected_error_is_openai_shaped(sqlite_db: Db,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a route answers a JSON 500 naming only the error's class."""
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("/srv/secret/place")

    with gateway(sqlite_db) as (url, _upstream, _engine):
        monkeypatch.setattr("cascade.gateway.app._model_entries", broken)
        error = assert_openai_error(
            httpx2.get(f"{url}/v1/models", headers={"authorization": f"Bearer {KEY}"}), 500)
    assert error["message"] == "internal error (KeyError)"
    assert "/srv/secret" not in json.dumps(error)
