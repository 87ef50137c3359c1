"""The limiter's Redis goes away: ``on_error: closed`` refuses (503) and comes back with Redis by
itself; ``open`` serves, warns (not once per request) and counts. The Redis here is the test's
own process, stopped, frozen and started again on the same port. After a failure Redis is
skipped for a second (``redis_client.Outage``): the clock of that window is injected here."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from tests.gateway.limited import KEY_A, ask, clients, live_gateway
from tests.redis_server import Clock, OwnRedis

ENV = "CASCADE_TEST_OWN_REDIS"


def limits(on_error: str) -> dict[str, object]:
    return {"limits": {"redis": {"url_env": ENV, "on_error": on_error, "timeout_s": 0.2}}}



def test_closed_refuses_while_redis_is_down_and_recovers_when_it_returns(
    tmp_path: Path, outage_clock: Clock
) -> None:
    """503 rate_limiter_unavailable with Retry-After while Redis is stopped; the first request
    once it is started again (same port, no gateway restart) and the one-second window after
    the failure has passed is served."""
    with (
        OwnRedis() as own,
        live_gateway(
            tmp_path, clients(a={"rpm": 100}), config=limits("closed"), env={ENV: own.url}
        ) as live,
    ):
        before = ask(live.url, KEY_A)
        own.stop()
        down = [ask(live.url, KEY_A) for _ in range(2)]
        own.start()
        outage_clock.now += 1.0
        after = ask(live.url, KEY_A)
        refused = live.metric("cascade_rate_limiter_errors_total", outcome="refused")
        calls = len(live.upstream.calls())
    assert before.status_code == 200
    assert [r.status_code for r in down] == [503, 503]
    assert down[0].json()["error"]["code"] == "rate_limiter_unavailable"
    assert down[0].headers["retry-after"] == "1"
    assert own.url not in down[0].text
    assert after.status_code == 200
    assert refused == 2
    assert calls == 2  # nothing was called for the refused requests


def test_closed_refuses_when_redis_hangs(tmp_path: Path, outage_clock: Clock) -> None:
    """A frozen Redis (SIGSTOP) costs the request timeout_s, then 503: it never hangs it; once
    Redis answers and the window has passed, requests are served again."""
    with (
        OwnRedis() as own,
        live_gateway(
            tmp_path, clients(a={"rpm": 100}), config=limits("closed"), env={ENV: own.url}
        ) as live,
    ):
        assert ask(live.url, KEY_A).status_code == 200
        own.freeze()
        try:
            hung = ask(live.url, KEY_A)
        finally:
            own.thaw()
        outage_clock.now += 1.0
        back = ask(live.url, KEY_A)
    assert hung.status_code == 503
    assert back.status_code == 200


def test_open_serves_warns_once_and_counts(tmp_path: Path) -> None:
    """on_error open: every request is served unlimited while Redis is down; three misses are
    counted and logged once (a rate-limited warning, with how many it held back later)."""
    with (
        OwnRedis() as own,
        live_gateway(
            tmp_path, clients(a={"rpm": 1}), config=limits("open"), env={ENV: own.url}
        ) as live,
    ):
        own.stop()
        with capture_logs() as logs:
            answers = [ask(live.url, KEY_A) for _ in range(3)]
        served = live.metric("cascade_rate_limiter_errors_total", outcome="served")
    assert [a.status_code for a in answers] == [200, 200, 200]  # rpm 1 did not hold: open
    assert served == 3
    warnings = [e for e in logs if e["event"] == "cascade.rate_limiter_unavailable"]
    assert len(warnings) == 1
    assert warnings[0]["on_error"] == "open"
    assert own.url not in str(warnings)
