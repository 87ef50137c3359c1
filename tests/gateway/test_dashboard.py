"""``GET /dashboard`` through the real gateway: admin keys only, pages kept for a few seconds
(the ledger read once however many refresh), bad parameters refused in one line."""

from __future__ import annotations

import asyncio
import base64
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from cascade import Cascade
from cascade.gateway.app import create_app, running
from cascade.gateway.dashboard import Dashboard
from cascade.testing import MockLLMServer
from tests.conftest import live_config

ADMIN, CLIENT = "admin-SECRET-key-0001", "client-SECRET-key-0001"

pytestmark = pytest.mark.usefixtures("keys")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def basic(key: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"me:{key}".encode()).decode()}


def test_dashboard_admin_only_cached_and_checked(server: MockLLMServer, tmp_path: Path) -> None:
    engine = Cascade.from_dict(live_config(server, ledger=str(tmp_path / "l.sqlite")))
    for i in range(3):
        engine.complete("faq", f"q{i}")
    app = create_app(engine, api_keys=[CLIENT], admin_keys=[ADMIN])
    board: Dashboard = app.state.dashboard
    clock = Clock()
    board.clock = clock
    try:
        with running(app) as url:
            for headers in (
                {},
                {"authorization": f"Bearer {CLIENT}"},
                basic(CLIENT),
                {"authorization": "Basic !!"},
                basic(""),
            ):
                answer = httpx.get(f"{url}/dashboard", headers=headers)
                assert answer.status_code == 401
                assert answer.headers["www-authenticate"] == 'Basic realm="cascade dashboard"'
                assert "admin key" in answer.json()["error"]["message"]
            # the client key still works where it should
            assert (
                httpx.get(
                    f"{url}/v1/models", headers={"authorization": f"Bearer {CLIENT}"}
                ).status_code
                == 200
            )
            for headers in ({"authorization": f"Bearer {ADMIN}"}, basic(ADMIN)):
                answer = httpx.get(f"{url}/dashboard", headers=headers)
                assert answer.status_code == 200
                assert answer.headers["content-type"].startswith("text/html")
                assert answer.headers["cache-control"] == "no-store"
                assert '<meta http-equiv="refresh" content="30">' in answer.text
                assert 'data-metric="cost_usd" data-task="faq"' in answer.text
            assert board.reads == 1  # the second request got the kept page
            # the live page loads plotly.js from the gateway (the browser keeps it), admin only
            assert '<script src="/dashboard/plotly.js"></script>' in answer.text
            assert 'id="plotly-gz"' not in answer.text
            script = httpx.get(f"{url}/dashboard/plotly.js", headers=basic(ADMIN))
            assert script.status_code == 200
            assert "plotly" in script.text[:2000].lower()
            assert script.headers["cache-control"] == "private, max-age=86400"
            assert httpx.get(f"{url}/dashboard/plotly.js",
                             headers=basic(CLIENT)).status_code == 401
            clock.t += board.cache_s
            httpx.get(f"{url}/dashboard", headers=basic(ADMIN))
            assert board.reads == 2  # kept no longer: read again
            answer = httpx.get(f"{url}/dashboard?refresh=1&task=faq", headers=basic(ADMIN))
            assert board.reads == 3  # another view is another page
            assert '<meta http-equiv="refresh" content="2">' in answer.text  # at least 2 s
            answer = httpx.get(f"{url}/dashboard?since=yesterday", headers=basic(ADMIN))
            assert answer.status_code == 400
            assert "since" in answer.json()["error"]["message"]
            answer = httpx.get(f"{url}/dashboard?refresh=soon", headers=basic(ADMIN))
            assert answer.status_code == 400
    finally:
        engine.close()


def test_concurrent_requests_share_one_read(server: MockLLMServer, tmp_path: Path) -> None:
    """Requests for a page being made wait for it: the ledger is read once for all of them."""
    engine = Cascade.from_dict(live_config(server, ledger=str(tmp_path / "l.sqlite")))
    engine.complete("faq", "q")
    app = create_app(engine, api_keys=[CLIENT], admin_keys=[ADMIN])
    board: Dashboard = app.state.dashboard

    async def many() -> list[str]:
        return await asyncio.gather(*(board.page({}) for _ in range(8)))

    try:
        pages = asyncio.run(many())
        assert board.reads == 1
        assert len(set(pages)) == 1
        assert "data-chart=" in pages[0]
        assert board._pool is not None  # drawn in the dashboard's own process
    finally:
        board.close()
        engine.close()


def test_the_reads_and_the_drawing_leave_the_event_loop_free(
    server: MockLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The aggregate queries and the drawing each wait for a coroutine on the loop to let
    them go: on the loop itself they would wait for ever (here: fail after 30 s)."""
    import threading

    import cascade.gateway.dashboard as dashboard

    engine = Cascade.from_dict(live_config(server, ledger=str(tmp_path / "l.sqlite")))
    engine.complete("faq", "q")
    board = Dashboard(  # drawing on a thread, whose render the test can gate
        create_app(engine, api_keys=[CLIENT], admin_keys=[ADMIN]).state.gateway, processes=False
    )
    gates = {"read": threading.Event(), "draw": threading.Event()}

    def gated(name: str, real: object) -> object:
        def call(*args: object, **kwargs: object) -> object:
            assert threading.current_thread() is not threading.main_thread(), name
            if not gates[name].wait(30):
                raise AssertionError(f"{name} ran on the event loop")
            return real(*args, **kwargs)  # type: ignore[operator]

        return call

    monkeypatch.setattr(dashboard, "aggregate", gated("read", dashboard.aggregate))
    monkeypatch.setattr(dashboard, "render", gated("draw", dashboard.render))

    async def main() -> str:
        making = asyncio.ensure_future(board.page({}))
        for name in ("read", "draw"):
            await asyncio.sleep(0)  # the loop runs on while the page is made
            gates[name].set()
        return await making

    try:
        assert "cascade-ladder" in asyncio.run(main())
    finally:
        engine.close()


ADMIN_BEARER = {"authorization": f"Bearer {ADMIN}"}


def test_a_dead_drawing_process_is_replaced(server: MockLLMServer, tmp_path: Path) -> None:
    """The drawing process killed (the OOM killer): the next page is drawn by a new one, 200."""
    import os
    import signal

    engine = Cascade.from_dict(live_config(server, ledger=str(tmp_path / "l.sqlite")))
    engine.complete("faq", "q")
    app = create_app(engine, api_keys=[CLIENT], admin_keys=[ADMIN])
    board: Dashboard = app.state.dashboard
    try:
        with running(app) as url:
            first = httpx.get(f"{url}/dashboard", headers=ADMIN_BEARER, timeout=120)
            for pid in list(board._pool._processes):  # type: ignore[union-attr]
                os.kill(pid, signal.SIGKILL)
            answers = [
                httpx.get(f"{url}/dashboard?task={task}", headers=ADMIN_BEARER, timeout=120)
                for task in ("faq", "other")
            ]
    finally:
        engine.close()
    assert first.status_code == 200
    assert [a.status_code for a in answers] == [200, 200]
    assert "data-chart=" in answers[0].text
    assert board.pools == 2  # one new process, then kept


class BrokenPool(Executor):
    """A pool whose process is always dead."""

    def submit(self, *args: object, **kwargs: object) -> Any:
        raise BrokenProcessPool("A child process terminated abruptly")


def test_a_drawer_that_dies_again_is_a_503(server: MockLLMServer, tmp_path: Path) -> None:
    """A new drawing process that dies too: 503 dashboard_unavailable, not a 500; the next
    request tries a new process again."""
    engine = Cascade.from_dict(live_config(server, ledger=str(tmp_path / "l.sqlite")))
    app = create_app(engine, api_keys=[CLIENT], admin_keys=[ADMIN])
    board: Dashboard = app.state.dashboard
    board.make_pool = BrokenPool
    try:
        with running(app) as url:
            answer = httpx.get(f"{url}/dashboard", headers=ADMIN_BEARER)
            made = board.pools
            httpx.get(f"{url}/dashboard?task=faq", headers=ADMIN_BEARER)
    finally:
        engine.close()
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "dashboard_unavailable"
    assert "drawing process died" in answer.json()["error"]["message"]
    assert made == 2  # the first, and one retry
    assert board.pools == 4


def _refused(server: MockLLMServer, tmp_path: Path, query: str) -> str:
    """The message of the 400 that ``GET /dashboard?query`` gets; the ledger is never read."""
    engine = Cascade.from_dict(live_config(server, ledger=str(tmp_path / "l.sqlite")))
    app = create_app(engine, api_keys=[CLIENT], admin_keys=[ADMIN])
    board: Dashboard = app.state.dashboard
    try:
        with running(app) as url:
            answer = httpx.get(f"{url}/dashboard?{query}", headers=ADMIN_BEARER)
    finally:
        engine.close()
    assert answer.status_code == 400
    assert board.reads == 0
    return str(answer.json()["error"]["message"])


@pytest.mark.parametrize("refresh", ["nan", "inf", "-inf", "1e999", "NaN"])
def test_a_refresh_that_is_not_finite_is_refused(
    server: MockLLMServer, tmp_path: Path, refresh: str
) -> None:
    """?refresh=nan (or inf) is a 400 naming refresh, never a page that says content="nan"."""
    message = _refused(server, tmp_path, f"refresh={refresh}")
    assert "refresh" in message
    assert "finite" in message


@pytest.mark.parametrize(
    "query",
    [
        "since=2026-01-02&until=2026-01-01",
        "since=2026-01-01&until=2026-01-01",
        "since=2026-01-01T12:00:00%2B00:00&until=2026-01-01T13:00:00%2B02:00",
        "since=2026-01-01T00:00:00%2B00:00&until=2025-12-31",
    ],
)
def test_since_not_before_until_is_refused(
    server: MockLLMServer, tmp_path: Path, query: str
) -> None:
    """A since at or after until is a 400 naming both, and the ledger is not read."""
    message = _refused(server, tmp_path, query)
    assert "since" in message
    assert "until" in message
    assert "not before" in message
