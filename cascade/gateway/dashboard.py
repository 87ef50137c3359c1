"""``GET /dashboard``: the page of ``cascade report --html``, live, for admin keys only.

Auth: an admin key (``server.admin_keys_env``), never a client key, either as ``Authorization:
Bearer <key>`` or as the password of HTTP Basic auth, which a browser asks for after the 401's
``WWW-Authenticate`` (and then sends again with each auto-refresh). The key is never put in
the URL, so it cannot reach an access log or a browser's history.

Query parameters: ``since`` and ``until`` (a date or ISO time, UTC; by default the last
``DEFAULT_HOURS`` hours; ``since`` must come before ``until``), ``task``, ``key`` (a gateway
key's name), ``refresh`` (a finite number of seconds between the page's reloads, at least
``MIN_REFRESH_S``; ``DEFAULT_REFRESH_S`` by default). A bad one is a 400 naming it.

The ledger's aggregate queries run on the ledger's threads and the charts are drawn in a process
of the dashboard's own (plotly's pure-Python work would otherwise hold the GIL the event loop
needs), never on the event loop, and a page is kept ``CACHE_S`` seconds per set of
parameters: however many browsers refresh, the ledger is read once per ``CACHE_S`` for each
view, and concurrent requests for a page being made wait for that one. A drawing process that
died (the OOM killer, a SIGKILL) breaks its pool: the pool is replaced and the page drawn again
once; if the new one breaks too, the answer is a 503 and the next request starts another.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from cascade.errors import CascadeError, ConfigError, LedgerError
from cascade.gateway.errors import error_response, refuse
from cascade.gateway.state import Gateway
from cascade.logs import get_logger
from cascade.report.page import PlotlyMissing, render, require_plotly
from cascade.report.period import Period, parse_since
from cascade.report.queries import Aggregates, aggregate
from cascade.report.savings import shadowed

__all__ = ["CACHE_S", "PLOTLY_PATH", "Dashboard", "dashboard", "plotly_js"]

log = get_logger()

CACHE_S = 4.0
PLOTLY_PATH = "/dashboard/plotly.js"
DEFAULT_HOURS = 24
DEFAULT_REFRESH_S = 30.0
MIN_REFRESH_S = 2.0
_PARAMS = ("since", "until", "task", "key", "refresh")


class Dashboard:
    """Makes and keeps the dashboard's pages (see the module).

    ``clock`` (``time.monotonic``, the cache's age) and ``now`` (``time.time``, the default
    period) are attributes, so tests replace them instead of sleeping; ``reads`` counts the
    times the ledger was read. ``processes``: draw in a process of its own (spawned at the first
    page, and again after it died), else on a worker thread. ``make_pool`` makes that process's
    pool (an attribute too, for tests); ``pools`` counts the pools made.
    """

    def __init__(self, gateway: Gateway, *, cache_s: float = CACHE_S, processes: bool = True):
        self.gateway = gateway
        self.cache_s = cache_s
        self.clock: Callable[[], float] = time.monotonic
        self.now: Callable[[], float] = time.time
        self.reads = 0
        self.processes = processes
        self.make_pool: Callable[[], Executor] = _drawing_pool
        self.pools = 0
        self._pool: Executor | None = None
        self._pages: dict[tuple[Any, ...], tuple[float, str]] = {}
        self._making: dict[tuple[Any, ...], asyncio.Future[str]] = {}

    async def page(self, params: dict[str, str]) -> str:
        key = tuple(params.get(p) for p in _PARAMS)
        kept = self._pages.get(key)
        if kept is not None and self.clock() - kept[0] < self.cache_s:
            return kept[1]
        making = self._making.get(key)
        if making is None:
            making = asyncio.ensure_future(self._make(params))
            self._making[key] = making
            making.add_done_callback(lambda _: self._making.pop(key, None))
        page = await asyncio.shield(making)
        self._pages = {k: v for k, v in self._pages.items() if self.clock() - v[0] < self.cache_s}
        self._pages[key] = (self.clock(), page)
        return page

    async def _make(self, params: dict[str, str]) -> str:
        require_plotly()
        engine = self.gateway.engine
        ledger = engine.ledger
        if ledger is None:
            raise ConfigError(
                "the dashboard reads the ledger, and the config has none", location="ledger"
            )
        period = period_of(params, self.now())
        refresh = refresh_of(params)
        config = engine.config
        accounts = engine.limits.accounts

        def read() -> tuple[Aggregates, dict[str, Any]]:
            agg = aggregate(
                ledger,
                period,
                budgets=accounts.status(keys=True),
                targets={
                    n: t.quality_target
                    for n, t in config.tasks.items()
                    if t.quality_target is not None
                },
                rungs={n: [r.model for r in t.ladder] for n, t in config.tasks.items()},
            )
            return agg, shadowed(ledger, period)

        self.reads += 1
        agg, shadow = await ledger.run(read)
        draw = functools.partial(
            render,
            agg,
            where=ledger.where,
            shadow=shadow,
            refresh_s=refresh,
            plotly_src=PLOTLY_PATH,
        )
        if not self.processes:
            return await asyncio.to_thread(draw)
        # Drawing is a few hundred ms of plotly's pure-Python work per page: in a thread it would
        # hold the GIL the event loop needs, so it runs in a process of its own.
        loop = asyncio.get_running_loop()
        pool = self._drawer()
        try:
            return await loop.run_in_executor(pool, draw)
        except BrokenProcessPool as exc:  # the process died: a new one, and one more try
            log.warning("cascade.dashboard_drawer_died", error=str(exc), retried=True)
            self._discard(pool)
        pool = self._drawer()
        try:
            return await loop.run_in_executor(pool, draw)
        except BrokenProcessPool:
            self._discard(pool)  # the next request starts another
            raise

    def _drawer(self) -> Executor:
        if self._pool is None:
            self._pool = self.make_pool()
            self.pools += 1
        return self._pool

    def _discard(self, pool: Executor) -> None:
        """Drop a broken pool (unless another page already replaced it) without waiting on it."""
        if self._pool is pool:
            self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the drawing process (the app's shutdown)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _drawing_pool() -> Executor:
    return ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=_lower_priority
    )


def _lower_priority() -> None:
    """The drawing process yields the CPU to the gateway's: a page may wait, a chat should not."""
    with contextlib.suppress(OSError, AttributeError):  # no nice() on some platforms
        os.nice(10)


def refresh_of(params: dict[str, str]) -> float:
    """The seconds between the page's reloads: ``refresh``, at least MIN_REFRESH_S.

    Raises:
        ConfigError: ``refresh`` is not a finite number (``nan``, ``inf``, a word).
    """
    given = params.get("refresh")
    if not given:
        return DEFAULT_REFRESH_S
    try:
        seconds = float(given)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):
        raise ConfigError(f"not a finite number of seconds: {given!r}", location="refresh")
    return max(seconds, MIN_REFRESH_S)


def period_of(params: dict[str, str], now: float) -> Period:
    """The period the query parameters ask for: by default the DEFAULT_HOURS hours up to
    ``until`` (given) or now.

    Raises:
        ConfigError: a date or the refresh is not valid, or ``since`` is not before
            ``until`` (naming the parameters).
    """
    refresh_of(params)
    until = parse_since(params["until"], "until") if params.get("until") else None
    since = (
        parse_since(params["since"], "since")
        if params.get("since")
        else ((until if until is not None else now) - DEFAULT_HOURS * 3600)
    )
    if until is not None and since >= until:
        raise ConfigError(
            f"since {params['since']!r} is not before until {params['until']!r}: "
            "the period is empty",
            location="since, until",
        )
    return Period(
        since=since, until=until, task=params.get("task") or None, key=params.get("key") or None
    )


def _given_key(request: Request) -> bytes:
    """The key sent as a bearer token, or as HTTP Basic auth's password."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return token.strip().encode()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return b""
        return decoded.partition(b":")[2]
    return b""


def _refused(request: Request) -> Response | None:
    """The 401 of a request without an admin key (None: it has one)."""
    gateway: Gateway = request.app.state.gateway
    if gateway.is_admin(_given_key(request)):
        return None
    response = refuse(
        gateway,
        "Unauthorized",
        401,
        "GET /dashboard needs an admin key (one of those in the variable "
        "server.admin_keys_env names): send 'Authorization: Bearer <key>', or give the "
        "key as the password when the browser asks",
        "admin_key_required",
        scrub=False,
    )
    response.headers["www-authenticate"] = 'Basic realm="cascade dashboard"'
    return response


async def plotly_js(request: Request) -> Response:
    """``GET /dashboard/plotly.js``: the page's charting library, kept by the browser a day."""
    refused = _refused(request)
    if refused is not None:
        return refused
    try:
        require_plotly()
    except PlotlyMissing as exc:
        return error_response(501, str(exc), "server_error", "plotly_missing", scrub=False)
    from plotly.offline import get_plotlyjs

    return Response(
        get_plotlyjs(),
        media_type="text/javascript",
        headers={"cache-control": "private, max-age=86400"},
    )


async def dashboard(request: Request) -> Response:
    refused = _refused(request)
    if refused is not None:
        return refused
    board: Dashboard = request.app.state.dashboard
    try:
        page = await board.page(dict(request.query_params))
    except PlotlyMissing as exc:
        return error_response(501, str(exc), "server_error", "plotly_missing", scrub=False)
    except BrokenProcessPool as exc:
        log.warning("cascade.dashboard_failed", error=str(exc))
        return error_response(
            503,
            "the dashboard's drawing process died twice in a row (out of memory?); the next "
            "request starts a new one; see the server log",
            "server_error",
            "dashboard_unavailable",
            scrub=False,
        )
    except LedgerError as exc:
        log.warning("cascade.dashboard_failed", error=str(exc))
        return error_response(
            503,
            "the ledger could not be read; see the server log",
            "server_error",
            "ledger_unavailable",
            scrub=False,
        )
    except CascadeError as exc:
        return error_response(
            400, str(exc), "invalid_request_error", "invalid_dashboard", scrub=True
        )
    return HTMLResponse(page, headers={"cache-control": "no-store"})
