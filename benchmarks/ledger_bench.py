"""Ledger v2 figures, on SQLite and on PostgreSQL (127.0.0.1:5432, database ``test``).

    python benchmarks/ledger_bench.py all --json benchmarks/results/ledger.json

Sub-commands (each also runs alone): ``overshoot``, ``check``, ``crash``, ``throughput``,
``healthz``.

- **overshoot**: 1, 2 and 4 processes (2 threads each, started together through a pipe) spend
  against one daily budget until refused; the recorded spend minus the budget, in dollars and in
  worst cases of one call. Real costs are 50-100% of the worst case.
- **check**: the budget reservation (check + write-ahead row, one transaction) timed on a ledger
  holding 1k, 10k and 1M step rows, beside release 0.1's check (``SUM(cost_usd)`` over today's
  steps) on the same database.
- **crash**: a process running 8 concurrent cascades against a loopback upstream is killed -9
  once the upstream has seen 200 calls; then the next open settles its pending rows as lost.
  Counts: upstream calls, step rows, settled, lost, calls with no row.
- **throughput**: 1,000 concurrent ``acomplete`` runs (two rungs, an instant in-process provider)
  per backend and with no ledger: until the last run returns, and until the ledger's writer
  thread has committed every row.
- **healthz**: another process holds the SQLite write lock for 10 s while a chat request waits
  for it; ``/healthz`` is timed every 100 ms meanwhile.

Each PostgreSQL measurement uses a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import structlog  # noqa: E402

from cascade import Cascade, Ledger  # noqa: E402
from cascade.ledger import Pending  # noqa: E402
from cascade.ledger.money import Accounts, Limit  # noqa: E402
from cascade.testing import FakeProvider, MockLLMServer, Reply, make_completion  # noqa: E402
from tests.ledger.ledger_workers import worst_case  # noqa: E402

PG = os.environ.get("LEDGER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgres")

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))


@contextmanager
def database(backend: str) -> Iterator[str]:
    """A fresh ledger location: a file in a temp folder, or a new PostgreSQL schema."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield str(Path(tmp) / "ledger.sqlite")
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type]
    try:
        yield f"{PG}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[arg-type]


def open_ledger(where: str) -> Ledger:
    return Ledger(url=where) if where.startswith("postgresql") else Ledger(where)


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.ledger.ledger_workers", *args], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def overshoot(budget: float = 0.5) -> list[dict[str, Any]]:
    out = []
    for backend in BACKENDS:
        for procs in (1, 2, 4):
            with database(backend) as where:
                open_ledger(where).close()
                workers = [spawn("budget", where, str(budget), "2") for _ in range(procs)]
                for w in workers:
                    assert w.stdout is not None and w.stdout.readline().strip() == "ready"
                started = time.perf_counter()
                for w in workers:
                    assert w.stdin is not None
                    w.stdin.write("go\n")
                    w.stdin.flush()
                results = [json.loads(w.communicate(timeout=600)[0].splitlines()[-1])
                           for w in workers]
                elapsed = time.perf_counter() - started
                ledger = open_ledger(where)
                spent = float(ledger.query("SELECT SUM(cost_usd) AS s FROM steps")[0]["s"])
                ledger.close()
            row = {"backend": backend, "processes": procs, "budget_usd": budget,
                   "spent_usd": round(spent, 9), "overshoot_usd": round(spent - budget, 9),
                   "overshoot_worst_cases": round((spent - budget) / worst_case(), 3),
                   "calls": sum(r["calls"] for r in results),
                   "errors": sum(len(r["errors"]) for r in results),
                   "seconds": round(elapsed, 2)}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def _fill(where: str, rows: int) -> None:
    """``rows`` settled steps over the last 30 days and 10 tasks, totals rebuilt to match."""
    now = time.time()
    batch = 50_000
    ledger = open_ledger(where)
    try:
        for start in range(0, rows, batch):
            values = [(f"run{i}", now - (i % 30) * 86_400 - 1, f"task{i % 10}", 1, "large", "p",
                       1, 10, 0, 10, 0.0004, 5.0, "accept", None, "[]", "settled", 0.0004, None)
                      for i in range(start, min(rows, start + batch))]
            if where.startswith("postgresql"):
                with psycopg.connect(where, autocommit=True) as conn, conn.cursor() as cur, \
                        cur.copy("COPY steps (run_id, ts, task, step, model, provider, attempts,"
                                 " input_tokens, cached_input_tokens, output_tokens, cost_usd,"
                                 " latency_ms, decision, error, verdicts, status, reserved_usd,"
                                 " owner) FROM STDIN") as copy:
                    for v in values:
                        copy.write_row(v)
            else:
                with sqlite3.connect(where) as conn:
                    conn.executemany("INSERT INTO steps (run_id, ts, task, step, model, provider,"
                                     " attempts, input_tokens, cached_input_tokens,"
                                     " output_tokens, cost_usd, latency_ms, decision, error,"
                                     " verdicts, status, reserved_usd, owner) VALUES"
                                     " (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", values)
        # totals for those rows: what the ledger would have kept while writing them
        from cascade.ledger import buckets, nano
        sums: dict[tuple[str, str, str], int] = {}
        for i in range(rows):
            for key in buckets(f"task{i % 10}", now - (i % 30) * 86_400 - 1):
                sums[key] = sums.get(key, 0) + nano(0.0004)
        with ledger.backend.transaction() as tx:
            for (scope, period, bucket), n in sums.items():
                tx.execute("INSERT INTO totals (scope, period, bucket, spent_nusd)"
                           " VALUES (?,?,?,?)", (scope, period, bucket, n))
    finally:
        ledger.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _settle(where: str) -> None:
    """Let a freshly bulk-loaded database reach steady state: statistics, a checkpoint."""
    if where.startswith("postgresql"):
        with psycopg.connect(where, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE steps")
            conn.execute("VACUUM ANALYZE totals")
            conn.execute("CHECKPOINT")
    else:
        with sqlite3.connect(where) as conn:
            conn.execute("ANALYZE")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def check(sizes: tuple[int, ...] = (1_000, 10_000, 1_000_000),
          n: int = 600) -> list[dict[str, Any]]:
    """Ledgers of every size side by side, reservations taken round-robin across them."""
    out = []
    for backend in BACKENDS:
        with ExitStack() as stack:
            wheres = [stack.enter_context(database(backend)) for _ in sizes]
            for where, rows in zip(wheres, sizes, strict=True):
                open_ledger(where).close()
                _fill(where, rows)
                _settle(where)
            ledgers = [open_ledger(w) for w in wheres]
            accounts = [Accounts(led, [Limit("global", "daily", 1e9),
                                       Limit("task3", "monthly", 1e9)]) for led in ledgers]
            since = time.time() - 86_400
            new: list[list[float]] = [[] for _ in sizes]
            old: list[list[float]] = [[] for _ in sizes]
            for i in range(n):
                for j, acc in enumerate(accounts):
                    t0 = time.perf_counter()
                    hold, refusal = acc.reserve(run_id=f"b{i}", task="task3", step=1,
                                                model_key="large", provider="p",
                                                estimate=0.003, spent=0.0, cap=None)
                    new[j].append((time.perf_counter() - t0) * 1000)
                    assert hold is not None and refusal is None
                    acc.release(hold)
                    if i % 6 == 0:  # release 0.1's check, on the same rows
                        t0 = time.perf_counter()
                        ledgers[j].query("SELECT COALESCE(SUM(cost_usd), 0) AS s FROM steps"
                                         " WHERE ts >= ?", (since,))
                        old[j].append((time.perf_counter() - t0) * 1000)
            for led in ledgers:
                led.close()
        base = statistics.median(new[0])
        for j, rows in enumerate(sizes):
            row = {"backend": backend, "rows": rows,
                   "reserve_p50_ms": round(statistics.median(new[j]), 3),
                   "reserve_p99_ms": round(_pct(new[j], 0.99), 3),
                   "reserve_p50_vs_smallest": round(statistics.median(new[j]) / base, 2),
                   "release_0_1_sum_p50_ms": round(statistics.median(old[j]), 3)}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def crash(repeats: int = 3, after: int = 200) -> list[dict[str, Any]]:
    out = []
    for backend in BACKENDS:
        for attempt in range(repeats):
            with database(backend) as where:
                open_ledger(where).close()
                seen = threading.Event()
                with MockLLMServer() as server:
                    def reply(model: str, body: dict[str, Any], srv: Any = server,
                              ev: threading.Event = seen) -> Reply:
                        if len(srv.requests) >= after:
                            ev.set()
                        return Reply(text="a fine answer here", delay_s=0.01)

                    server.responder = reply
                    worker = spawn("load", where, server.openai_url, "8")
                    assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
                    assert seen.wait(300)
                    os.kill(worker.pid, signal.SIGKILL)
                    worker.communicate(timeout=30)
                    calls = len(server.requests)
                ledger = open_ledger(where)
                lost = len(ledger.recovered)
                counts = ledger.query(
                    "SELECT COUNT(*) AS n, SUM(CASE WHEN status = 'settled' THEN 1 ELSE 0 END)"
                    " AS settled, SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS pending"
                    " FROM steps")[0]
                ledger.close()
            row = {"backend": backend, "attempt": attempt + 1, "upstream_calls": calls,
                   "rows": int(counts["n"]), "settled": int(counts["settled"]),
                   "lost": lost, "pending_after_open": int(counts["pending"] or 0),
                   "calls_without_row": max(0, calls - int(counts["n"])),
                   "rows_without_call": max(0, int(counts["n"]) - calls)}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def _throughput_run(where: str | None, runs: int) -> dict[str, Any]:
    data = {
        "providers": {"p": {"type": "openai"}},
        "models": {"small": {"provider": "p", "name": "small",
                             "price": {"input": 1, "output": 2}},
                   "large": {"provider": "p", "name": "large",
                             "price": {"input": 10, "output": 30}}},
        "budgets": {"daily_usd": 1000.0} if where else None,
        "ledger": ({"url": where} if where and where.startswith("postgresql")
                   else {"path": where}),
        "tasks": {"t": {"ladder": ["small", "large"],
                        "evaluators": [{"type": "length", "min_words": 3}]}},
    }
    fake = FakeProvider("p", {"small": [make_completion("no")],
                              "large": [make_completion("a fine answer")]})
    engine = Cascade.from_dict(data, providers={"p": fake}, ledger=None if where else False)

    async def main() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(engine.acomplete("t", f"q{i}", max_tokens=50)
                               for i in range(runs)))
        return time.perf_counter() - started

    started = time.perf_counter()
    elapsed = asyncio.run(main())
    # The settlements and run rows are committed behind the runs by the ledger's writer
    # thread: also time until every row is in the database.
    if engine.ledger is not None:
        engine.ledger.flush()
    written = time.perf_counter() - started
    engine.close()
    return {"runs": runs, "steps": 2 * runs, "seconds": round(elapsed, 3),
            "runs_per_s": round(runs / elapsed, 1), "seconds_all_rows_written": round(written, 3)}


def throughput(runs: int = 1000) -> list[dict[str, Any]]:
    out = [{"backend": "none (ledger: false)", **_throughput_run(None, runs)}]
    print(json.dumps(out[-1]), flush=True)
    for backend in BACKENDS:
        with database(backend) as where:
            out.append({"backend": backend, **_throughput_run(where, runs)})
        print(json.dumps(out[-1]), flush=True)
    return out


HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def healthz(hold_s: float = 10.0) -> dict[str, Any]:
    import httpx2

    from cascade.gateway.app import create_app, running

    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-0000")
    with tempfile.TemporaryDirectory() as tmp, MockLLMServer() as server:
        path = str(Path(tmp) / "l.sqlite")
        data = {"providers": {"o": {"type": "openai", "base_url": server.openai_url}},
                "models": {"mini": {"provider": "o", "name": "m",
                                    "price": {"input": 0.15, "output": 0.6}}},
                "ledger": {"path": path}, "tasks": {"faq": {"ladder": ["mini"]}}}
        engine = Cascade.from_dict(data)
        app = create_app(engine, api_keys=[])
        with running(app) as url:
            holder = subprocess.Popen([sys.executable, "-c", HOLDER, path, str(hold_s)],
                                      stdout=subprocess.PIPE, text=True)
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            locked_at = time.perf_counter()
            done: dict[str, Any] = {}
            chat = threading.Thread(target=lambda: done.update(r=httpx2.post(
                f"{url}/v1/chat/completions", timeout=60,
                json={"model": "faq", "messages": [{"role": "user", "content": "hi"}]})))
            chat.start()
            waits = []
            with httpx2.Client() as client:
                while holder.poll() is None:
                    t0 = time.perf_counter()
                    client.get(f"{url}/healthz")
                    waits.append((time.perf_counter() - t0) * 1000)
                    time.sleep(0.1)
            chat.join()
            chat_s = time.perf_counter() - locked_at
        engine.close()
    row = {"lock_held_s": hold_s, "healthz_requests": len(waits),
           "healthz_p50_ms": round(statistics.median(waits), 2),
           "healthz_max_ms": round(max(waits), 2),
           "chat_status": done["r"].status_code, "chat_waited_s": round(chat_s, 2)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["all", "overshoot", "check", "crash", "throughput",
                                         "healthz"])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(),
                                           "python": platform.python_version()}}
    steps = {"overshoot": overshoot, "check": check, "crash": crash, "throughput": throughput,
             "healthz": healthz}
    for name, fn in steps.items():
        if args.what in ("all", name):
            results[name] = fn()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
