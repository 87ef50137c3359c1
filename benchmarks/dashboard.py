"""The dashboard's cost (issue 21): its queries at 1M and 10M rows on PostgreSQL, the HTML file's
size, and chat latency at 200 req/s with and without a dashboard refreshing every 5 s.

    python benchmarks/dashboard.py queries --steps 1000000 10000000
    python benchmarks/dashboard.py latency --steps 1000000 --rate 200 --window 10 --rounds 3

``queries`` generates a PostgreSQL ledger of ``--steps`` step rows (half as many runs, 30 days
of traffic on three tasks, a two-rung ladder, user feedback on one run in 20, a shadow call on
one in 50) with ``generate_series`` in a schema of its own (triggers off while filling; the
rollup then filled by the upgrade's backfill, as a real upgrade does), and times, median of 3,
what ``GET /dashboard`` and ``cascade report --html`` read (``aggregate`` + ``shadowed``) for
the last 24 hours, the last 7 days and the whole ledger, and ``cascade report --json``'s
``ledger_report``; then renders the whole-ledger page and reports its size.

``latency`` serves a gateway (``cascade serve``, its own process) on such a ledger, with a
loopback upstream in another process, and sends chat requests open-loop at ``--rate`` (timed
from each request's scheduled send, so a generator that falls behind cannot hide queueing).
Windows alternate, ``--rounds`` times: ``--window`` seconds without the dashboard, then as many
with a client (a process of its own) loading ``GET /dashboard`` (last 24 h) every 5 s, as a
browser does (plotly.js once, then the page); each window's p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG = os.environ.get("LEDGER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN, CLIENT = "bench-admin-key", "bench-client-key"
DAYS = 30
TASK = "(ARRAY['faq','code','support'])[1 + ({}) %% 3]"  # a row's task, by its number


def generate(steps: int, now: float) -> str:
    """A PostgreSQL ledger of ``steps`` step rows in a new schema; returns its URL."""
    import psycopg

    from cascade.ledger import Ledger
    from cascade.ledger.triggers import RollupSql

    schema = f"dash_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type]
    url = f"{PG}?options=-csearch_path%3D{schema}"
    Ledger(url=url).close()  # the tables, at the current schema
    start, span = now - DAYS * 86400, DAYS * 86400.0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # no triggers while filling
        conn.execute(
            "INSERT INTO steps (run_id, ts, task, step, model, provider, attempts, input_tokens,"
            " cached_input_tokens, output_tokens, cost_usd, latency_ms, decision, error,"
            " verdicts, status, reserved_usd, owner, usage_estimated)"
            f" SELECT 'r' || (i / 2), %s + i * %s, {TASK.format('i / 2')},"
            " 1 + i %% 2, CASE WHEN i %% 2 = 0 THEN 'mini' ELSE 'mid' END, 'openai', 1, 100, 0, 50,"
            " CASE WHEN i %% 2 = 0 THEN 0.00002 ELSE 0.0003 END, 50 + (i * 7919) %% 900,"
            " CASE WHEN i %% 97 = 0 THEN 'error' WHEN i %% 2 = 0 THEN 'escalate' ELSE 'accept' END,"
            " NULL, '[]', CASE WHEN i %% 5003 = 0 THEN 'lost' ELSE 'settled' END, 0, NULL, 0"
            " FROM generate_series(0::bigint, %s - 1) AS i",
            (start, span / steps, steps),
        )
        conn.execute(
            "INSERT INTO steps (run_id, ts, task, step, model, provider, attempts, input_tokens,"
            " cached_input_tokens, output_tokens, cost_usd, latency_ms, decision, error,"
            " verdicts, status, reserved_usd, owner, usage_estimated)"
            f" SELECT 'r' || j, %s + (2 * j + 1) * %s + 1, {TASK.format('j')},"
            " 3, 'big', 'openai', 1, 100, 0, 60, 0.0015, 900, 'shadow', NULL, '[]', 'settled',"
            " 0, NULL, 0 FROM generate_series(0::bigint, %s - 1, 50) AS j",
            (start, span / steps, steps // 2),
        )
        conn.execute(
            "INSERT INTO runs (run_id, ts, task, model, accepted, cost_usd, latency_ms, steps,"
            " status, top_usd, top_estimated)"
            f" SELECT 'r' || j, %s + (2 * j + 1) * %s, {TASK.format('j')},"
            " 'mid', 1, 0.00032, 400 + (j * 31) %% 1200, 2, 'ok', 0.0012, 1"
            " FROM generate_series(0::bigint, %s - 1) AS j",
            (start, span / steps, steps // 2),
        )
        conn.execute(
            "INSERT INTO feedback (run_id, ts, score, comment, source)"
            " SELECT 'r' || j, %s + (2 * j + 1) * %s + 5, (j %% 10) / 10.0, NULL,"
            " CASE WHEN j %% 50 = 0 THEN 'shadow:agreement' ELSE 'user' END"
            " FROM generate_series(0::bigint, %s - 1, 10) AS j",
            (start, span / steps, steps // 2),
        )
        sql = RollupSql("postgres")
        for statement in (*sql.backfill(), *sql.top_backfill()):
            conn.execute(statement.replace("?", "%s"))  # type: ignore[arg-type]
        conn.execute("ANALYZE")
    return url


def drop(url: str) -> None:
    import psycopg

    schema = url.rsplit("%3D", 1)[1]
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[arg-type]


def _median_s(fn: Any, repeat: int = 3) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return {
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
    }


def queries(steps: int) -> dict[str, Any]:
    from cascade.ledger import Ledger
    from cascade.report import Period, ledger_report
    from cascade.report.page import report_page
    from cascade.report.queries import aggregate
    from cascade.report.savings import shadowed

    now = time.time()
    started = time.perf_counter()
    url = generate(steps, now)
    out: dict[str, Any] = {"steps": steps, "generate_s": round(time.perf_counter() - started, 1)}
    ledger = Ledger(url=url)
    try:
        for name, period in (
            ("last_24h", Period(since=now - 86400)),
            ("last_7d", Period(since=now - 7 * 86400)),
            ("whole", Period()),
        ):
            out[f"page_{name}"] = _median_s(
                lambda p=period: (aggregate(ledger, p), shadowed(ledger, p))
            )
        out["report_json"] = _median_s(lambda: ledger_report(ledger))
        page = report_page(ledger, Period())
        out["html_whole_bytes"] = len(page.encode())
    finally:
        ledger.close()
        drop(url)
    return out


# -- chat latency with the dashboard refreshing ----------------------------------------------------


def _upstream(port_box: Any, ready: Any) -> None:
    from cascade.testing import MockLLMServer

    with MockLLMServer() as server:
        port_box.value = int(server.openai_url.rsplit(":", 1)[1].split("/")[0])
        ready.set()
        while True:
            time.sleep(3600)


def _refresher(url: str, stop: Any, times: Any) -> None:
    """A browser on ``GET /dashboard``: plotly.js once (it keeps it), the page every 5 s."""
    import httpx2

    auth = {"authorization": f"Bearer {ADMIN}"}
    with httpx2.Client(timeout=120) as http:
        assert http.get(f"{url}/dashboard/plotly.js", headers=auth).status_code == 200
        while not stop.is_set():
            started = time.perf_counter()
            reply = http.get(f"{url}/dashboard?refresh=5", headers=auth)
            assert reply.status_code == 200, reply.text[:200]
            times.put(time.perf_counter() - started)
            stop.wait(max(0.0, 5 - (time.perf_counter() - started)))


async def _load(url: str, rate: float, seconds: float, dashboard: bool) -> dict[str, Any]:
    import httpx2

    ask = {"model": "faq", "messages": [{"role": "user", "content": "When are you open?"}]}
    latencies: list[float] = []
    failures = 0
    loads: list[float] = []
    limits = httpx2.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx2.AsyncClient(timeout=60, limits=limits) as http:

        async def one(at: float) -> None:
            nonlocal failures
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            reply = await http.post(
                f"{url}/v1/chat/completions",
                json=ask,
                headers={"authorization": f"Bearer {CLIENT}"},
            )
            if reply.status_code == 200:
                latencies.append(time.perf_counter() - at)
            else:
                failures += 1

        # The dashboard's browser is a process of its own: its 100 KB pages must not slow
        # this generator's own event loop, which times the chats.
        stop, times = multiprocessing.Event(), multiprocessing.Queue()
        board = multiprocessing.Process(target=_refresher, args=(url, stop, times))
        if dashboard:
            board.start()
        t0 = time.perf_counter() + 0.2
        await asyncio.gather(*(one(t0 + i / rate) for i in range(int(rate * seconds))))
        if dashboard:
            stop.set()
            board.join()
            while not times.empty():
                loads.append(times.get())
    latencies.sort()

    def q(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

    return {
        "dashboard": dashboard,
        "chats": len(latencies),
        "failures": failures,
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
        "dashboard_loads": len(loads),
        "dashboard_load_s": [round(x, 2) for x in loads],
    }


def latency(steps: int, rate: float, window: float, rounds: int) -> dict[str, Any]:
    import yaml

    url = generate(steps, time.time()) if steps else None
    port_box, ready = multiprocessing.Value("i", 0), multiprocessing.Event()
    upstream = multiprocessing.Process(target=_upstream, args=(port_box, ready), daemon=True)
    upstream.start()
    ready.wait(30)
    folder = Path(tempfile.mkdtemp())
    config = {
        "providers": {
            "openai": {"type": "openai", "base_url": f"http://127.0.0.1:{port_box.value}/v1"}
        },
        "models": {
            "mini": {
                "provider": "openai",
                "name": "gpt-4o-mini",
                "price": {"input": 0.15, "output": 0.6},
            }
        },
        "ledger": {"url_env": "BENCH_LEDGER_URL"} if url else {"path": str(folder / "l.db")},
        "server": {"api_keys_env": "BENCH_KEYS", "admin_keys_env": "BENCH_ADMIN"},
        "tasks": {"faq": {"ladder": ["mini"]}},
    }
    (folder / "c.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "BENCH_KEYS": CLIENT,
        "BENCH_ADMIN": ADMIN,
        "OPENAI_API_KEY": "sk-bench",
        "BENCH_LEDGER_URL": url or "",
    }
    port = 18000 + os.getpid() % 1000
    gateway = subprocess.Popen(
        [sys.executable, "-m", "cascade.cli", "serve", str(folder / "c.yaml"), "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx2

        for _ in range(300):
            try:
                if httpx2.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx2.HTTPError:
                time.sleep(0.1)
        # warm up: connections, and the dashboard's drawing process (spawned at its first page)
        asyncio.run(_load(base, rate, 3, True))
        windows = []
        for _ in range(rounds):
            for dashboard in (False, True):
                windows.append(asyncio.run(_load(base, rate, window, dashboard)))
    finally:
        gateway.terminate()
        gateway.wait(30)
        upstream.terminate()
        if url:
            drop(url)
    without = [w["p99_ms"] for w in windows if not w["dashboard"]]
    with_board = [w["p99_ms"] for w in windows if w["dashboard"]]
    return {
        "steps": steps,
        "rate": rate,
        "window_s": window,
        "windows": windows,
        "p99_without_median_ms": statistics.median(without),
        "p99_with_median_ms": statistics.median(with_board),
        "p99_added_median_ms": round(statistics.median(with_board) - statistics.median(without), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queries")
    q.add_argument("--steps", type=int, nargs="+", default=[1_000_000, 10_000_000])
    lat = sub.add_parser("latency")
    lat.add_argument("--steps", type=int, default=1_000_000)
    lat.add_argument("--rate", type=float, default=200)
    lat.add_argument("--window", type=float, default=10)
    lat.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    if args.command == "queries":
        result: Any = [queries(n) for n in args.steps]
    else:
        result = latency(args.steps, args.rate, args.window, args.rounds)
    print(
        json.dumps(
            {
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "load_before": round(load, 2),
                "result": result,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
