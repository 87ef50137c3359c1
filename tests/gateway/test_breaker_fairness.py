"""Issue 22, item 9: one client's large requests must not open a provider's circuit for everyone.

A timeout that the request's own size explains (its ``max_tokens`` at the model's observed
output speed take longer than ``timeout_s``) is not a provider fault; a short request's timeout,
a 5xx and a connection error still are. Through the real gateway, the ``openai`` SDK and a
loopback upstream.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cascade import Cascade
from cascade.engine.breaker import OutputSpeed
from cascade.gateway.app import create_app, running
from cascade.testing import MockLLMServer, Reply
from cascade.types import Completion
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, live_config
from tests.gateway.test_attacks import ASK, GOOD, KEY, MINI, _no_sleep, post

TIMEOUT_S = 0.5
SLOW = Reply(GOOD, delay_s=1.2)  # past timeout_s whatever was asked
# 20 output tokens in at least 0.2 s: an observed speed of at most 100 tokens a second.
WARM = Reply(GOOD, delay_s=0.2, output_tokens=20)


@contextmanager
def slow_model(tmp_path: Path) -> Iterator[tuple[str, MockLLMServer, Cascade]]:
    """A gateway over one rung (mini) with timeout_s 0.5 and a breaker that opens at 3 faults."""
    with pytest.MonkeyPatch.context() as env, MockLLMServer() as upstream:
        env.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
        env.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)
        config = live_config(upstream, ladder=["mini"], evaluators=[], attempts=1,
                             ledger=str(tmp_path / "ledger.sqlite"))
        config["providers"]["openai"].update(
            timeout_s=TIMEOUT_S, circuit_breaker={"failures": 3, "cooldown_s": 30})
        config["models"]["mini"]["max_output_tokens"] = 2000
        engine = Cascade.from_dict(config, sleep=lambda s: None, asleep=_no_sleep)
        try:
            with running(create_app(engine, api_keys=[KEY])) as url:
                yield url, upstream, engine
        finally:
            engine.close()


def ask(url: str, max_tokens: int) -> tuple[int, dict[str, Any]]:
    response = post(url, {"model": "faq", "messages": ASK, "max_tokens": max_tokens})
    return response.status_code, response.json()


def test_9_large_requests_timing_out_leave_the_circuit_closed(tmp_path: Path) -> None:
    """Three max_tokens 1000 requests time out; the next client is still served."""
    with slow_model(tmp_path) as (url, upstream, engine):
        upstream.script(MINI, [WARM, SLOW, SLOW, SLOW, Reply(GOOD)])
        assert ask(url, 20)[0] == 200
        for _ in range(3):
            status, body = ask(url, 1000)  # 10 s of output at 100 tokens/s, a 0.5 s deadline
            assert status == 502
            assert "timed out" in body["error"]["message"]
        status, body = ask(url, 20)
        assert status == 200, body
        assert engine.limits.breakers["openai"].open_for() is None
        assert len(upstream.calls(MINI)) == 5


def test_9_short_requests_timing_out_still_open_the_circuit(tmp_path: Path) -> None:
    """A timeout the request's size does not explain is a provider fault, as before."""
    with slow_model(tmp_path) as (url, upstream, _engine):
        upstream.script(MINI, [WARM, SLOW])
        assert ask(url, 20)[0] == 200
        for _ in range(3):
            assert ask(url, 20)[0] == 502  # 0.2 s of output: the provider is slow
        status, body = ask(url, 20)
        assert status == 502
        assert "circuit open" in body["error"]["message"]
        assert len(upstream.calls(MINI)) == 4  # the open circuit called nothing


def test_9_before_any_answer_a_timeout_counts(tmp_path: Path) -> None:
    """With no observed speed yet, a timeout counts whatever its size (the documented default)."""
    with slow_model(tmp_path) as (url, upstream, engine):
        upstream.script(MINI, [SLOW])
        for _ in range(3):
            assert ask(url, 1000)[0] == 502
        assert engine.limits.breakers["openai"].open_for() is not None


def test_9_server_errors_still_open_the_circuit(tmp_path: Path) -> None:
    """5xx replies count as faults whatever the request's size."""
    with slow_model(tmp_path) as (url, upstream, engine):
        upstream.script(MINI, [WARM, Reply(status=503)])
        assert ask(url, 20)[0] == 200
        for _ in range(3):
            assert ask(url, 1000)[0] == 502
        assert engine.limits.breakers["openai"].open_for() is not None


def _answer(tokens: int, seconds: float, *, estimated: bool = False) -> Completion:
    return Completion("x", output_tokens=tokens, latency_ms=seconds * 1000,
                      usage_estimated=estimated)


def test_9_output_speed_is_a_ratio_of_averages() -> None:
    """The speed is the EWMA of tokens over the EWMA of seconds; a short answer only nudges it."""
    speed = OutputSpeed(weight=0.5)
    assert speed.tokens_per_s("m") is None
    speed.observe("m", _answer(100, 1.0))
    assert speed.tokens_per_s("m") == pytest.approx(100.0)
    speed.observe("m", _answer(2, 1.0))  # a 2-token answer: nearly all latency
    assert speed.tokens_per_s("m") == pytest.approx(51.0)
    speed.observe("m", _answer(0, 1.0))
    speed.observe("m", _answer(50, 1.0, estimated=True))  # no real usage: learns nothing
    assert speed.tokens_per_s("m") == pytest.approx(51.0)
    assert speed.explains("m", 1000, 10.0)  # 19.6 s of output
    assert not speed.explains("m", 100, 10.0)  # 2 s
    assert not speed.explains("m", None, 10.0)
    assert not speed.explains("other", 10**6, 1.0)  # never answered: counts
