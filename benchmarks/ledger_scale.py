"""``/metrics``, ``cascade report`` and ``report --drift`` on a large ledger (issue 22, item 8).

    python benchmarks/ledger_scale.py run --backend sqlite --steps 1000000 \\
        --base /tmp/base-checkout --json benchmarks/results/ledger_scale.json

``run`` writes a ledger of ``--steps`` step rows (plus their runs and feedback: 12 weeks of
traffic on four tasks, a three-rung ladder, shadow calls and user scores) straight into the
tables with batch inserts, at schema 4 (the tables before the rollup). It then times the same
ledger with two code trees, each in a process of its own:

- **before**: ``--base``, a checkout of the commit this branch started from (schema 4: every
  scrape, report and drift report reads the steps);
- **after**: this tree. Its first open upgrades the ledger in place to schema 5 (the rollup is
  filled from the rows: timed as ``open``); then the same commands read the rollup.

Timed in each: opening the ledger; ``drift_report`` over the last 8 weeks (what a scrape ran
before; what the gateway's background refresh runs now); ``GET /metrics`` through the real
gateway (median of 3, or 1 when it takes over 10 s); ``cascade report`` and ``cascade report
--drift`` (the CLI, in-process, output discarded); and chat requests (a loopback upstream, 4
clients) for 60 s while another client scrapes ``/metrics`` in a loop: chats done, p50, p99,
max, scrapes done (``--chat-s 0`` skips it).

A SQLite ledger is generated once and copied for each tree; a PostgreSQL one is generated into
a schema of its own, timed with the base tree, upgraded and timed with this one, then dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("LEDGER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
TASKS = ("faq", "code", "support", "__model__mini")
LADDER = ("mini", "mid", "big")
WEEKS = 12
BATCH = 50_000


# -- generating ---------------------------------------------------------------------------------


def _rows(steps: int, now: float, seed: int = 0) -> Any:
    """Yield ("steps"|"runs"|"feedback", row) until ``steps`` step rows were made."""
    rng = random.Random(seed)
    made, run = 0, 0
    start = now - WEEKS * 7 * 86400
    while made < steps:
        run += 1
        run_id = f"r{run:09d}"
        task = TASKS[run % len(TASKS)]
        ts = start + (now - start) * made / steps + rng.random()
        rungs = 1 if task.startswith("__model__") else 1 + (rng.random() < 0.3) + (
            rng.random() < 0.1)
        cost = 0.0
        for i, model in enumerate(LADDER[:rungs]):
            last = i == rungs - 1
            decision = "accept" if last and rng.random() < 0.95 else "escalate"
            step_cost = (1 + i * 10) * rng.uniform(1e-5, 5e-5)
            cost += step_cost
            status = "lost" if rng.random() < 0.001 else "settled"
            yield "steps", (run_id, ts + i, task, i + 1, model, "openai", 1,
                            rng.randint(20, 400), 0, rng.randint(5, 300), step_cost,
                            rng.uniform(50, 900), decision if status == "settled" else "lost",
                            None, "[]", status, step_cost * 2, None, int(rng.random() < 0.01))
            made += 1
        if rng.random() < 0.1:  # a shadow call to the rung above
            yield "steps", (run_id, ts + 5, task, rungs + 1, "big", "openai", 1, 100, 0, 50,
                            3e-4, 700.0, "shadow", None, "[]", "settled", 6e-4, None, 0)
            made += 1
        accepted = int(decision == "accept")
        yield "runs", (run_id, ts + 6, task, LADDER[rungs - 1] if accepted else None, accepted,
                       cost, 900.0, rungs, "ok", None)
        if rng.random() < 0.3:
            source = "user" if rng.random() < 0.3 else "shadow:agreement"
            yield "feedback", (run_id, ts + 60, float(rng.random() < 0.85), None, source)


_INSERT = {
    "steps": "INSERT INTO steps (run_id, ts, task, step, model, provider, attempts, input_tokens,"
             " cached_input_tokens, output_tokens, cost_usd, latency_ms, decision, error,"
             " verdicts, status, reserved_usd, owner, usage_estimated)",
    "runs": "INSERT INTO runs (run_id, ts, task, model, accepted, cost_usd, latency_ms, steps,"
            " status, task_probability)",
    "feedback": "INSERT INTO feedback (run_id, ts, score, comment, source)",
}


def _schema_4(ledger: Any) -> None:
    """Drop the rollup of a ledger just created by this tree: the tables of schema 4."""
    backend = ledger.backend
    with backend.transaction() as tx:
        for table, event in (("steps", "insert"), ("steps", "update"), ("runs", "insert"),
                             ("runs", "update"), ("feedback", "insert")):
            name = f"rollup_{table}_{event}"
            if backend.name == "sqlite":
                tx.execute(f"DROP TRIGGER {name}")
            else:
                tx.execute(f"DROP TRIGGER {name} ON {table}")
                tx.execute(f"DROP FUNCTION {name}()")
        tx.execute("DROP TABLE rollup")
        tx.execute("DROP TABLE rollup_log")
        tx.execute("UPDATE schema_version SET version = 4")


def generate(backend: str, where: str, steps: int, now: float) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from cascade import Ledger

    started = time.perf_counter()
    ledger = Ledger(where) if backend == "sqlite" else Ledger(url=where)
    _schema_4(ledger)
    ledger.close()
    counts = dict.fromkeys(_INSERT, 0)
    if backend == "sqlite":
        import sqlite3

        conn = sqlite3.connect(where, isolation_level=None)
        conn.execute("PRAGMA synchronous=OFF")
        batches: dict[str, list[Any]] = {k: [] for k in _INSERT}

        def flush() -> None:
            conn.execute("BEGIN")
            for table, rows in batches.items():
                if rows:
                    marks = ",".join("?" * len(rows[0]))
                    conn.executemany(f"{_INSERT[table]} VALUES ({marks})", rows)
                    rows.clear()
            conn.execute("COMMIT")

        for table, row in _rows(steps, now):
            batches[table].append(row)
            counts[table] += 1
            if len(batches["steps"]) >= BATCH:
                flush()
        flush()
        conn.execute("ANALYZE")
        conn.close()
    else:
        import psycopg

        # One COPY per table, each on a connection of its own (a COPY holds its connection).
        with contextlib.ExitStack() as stack:
            copies = {}
            for table in _INSERT:
                conn = stack.enter_context(psycopg.connect(where))
                cursor = stack.enter_context(conn.cursor())
                columns = _INSERT[table].split("(", 1)[1].rstrip(")")
                copies[table] = stack.enter_context(
                    cursor.copy(f"COPY {table} ({columns}) FROM STDIN"))  # type: ignore[arg-type]
            for table, row in _rows(steps, now):
                copies[table].write_row(row)
                counts[table] += 1
            # leaving the stack ends each COPY, then commits each connection's transaction
        with psycopg.connect(where, autocommit=True) as conn:
            conn.execute("ANALYZE")
    return {"generate_s": round(time.perf_counter() - started, 1), **counts}


# -- timing (in a process of its own, importing the code tree given) ---------------------------


def _timed(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def _cli(args: list[str]) -> float:
    from cascade.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        seconds, code = _timed(lambda: main(args))
    assert code == 0, out.getvalue()[-500:]
    return seconds


def time_tree(backend: str, where: str, chat_s: float) -> dict[str, Any]:
    import httpx2

    from cascade import Cascade, Ledger
    from cascade.gateway.app import create_app, running
    from cascade.ledger.drift import drift_report
    from cascade.testing import MockLLMServer

    os.environ["OPENAI_API_KEY"] = "sk-bench"
    os.environ["CASCADE_BENCH_LEDGER"] = where
    out: dict[str, Any] = {}
    open_s, ledger = _timed(lambda: Ledger(where) if backend == "sqlite" else Ledger(url=where))
    out["open_s"] = round(open_s, 3)
    out["schema"] = ledger.query("SELECT MAX(version) AS v FROM schema_version")[0]["v"]
    since = time.time() - 8 * 7 * 86400
    refresh = [_timed(lambda: drift_report(ledger, since=since))[0]]
    if refresh[0] < 10:  # a second try where it is cheap (the first may fold the log)
        refresh.append(_timed(lambda: drift_report(ledger, since=since))[0])
    out["drift_8_weeks_s"] = round(min(refresh), 4)
    ledger.close()
    where_args = ["--ledger", where] if backend == "sqlite" else ["--url-env",
                                                                   "CASCADE_BENCH_LEDGER"]
    out["report_s"] = round(_cli(["report", *where_args]), 3)
    out["report_drift_s"] = round(_cli(["report", "--drift", *where_args]), 3)
    ledger_section = {"path": where} if backend == "sqlite" else {"url_env": "CASCADE_BENCH_LEDGER"}
    with MockLLMServer() as upstream:
        upstream.script("gpt-4o-mini", ["We open at nine every day of the week"])
        config = {
            "providers": {"openai": {"type": "openai", "base_url": upstream.openai_url}},
            "models": {"mini": {"provider": "openai", "name": "gpt-4o-mini",
                                "price": {"input": 0.15, "output": 0.6}}},
            "ledger": ledger_section,
            "budgets": {"daily_usd": 1e6},  # every chat reserves in the ledger
            "tasks": {"faq": {"ladder": ["mini"],
                              "evaluators": [{"type": "length", "min_words": 3}]}},
        }
        with Cascade.from_dict(config) as engine, running(create_app(engine, api_keys=[])) as url, \
                httpx2.Client(timeout=3600) as http:
            scrapes = [_timed(lambda: http.get(f"{url}/metrics"))[0]]
            if scrapes[0] < 10:  # the median of 3 where it is cheap
                scrapes += [_timed(lambda: http.get(f"{url}/metrics"))[0] for _ in range(2)]
            out["scrape_s"] = round(statistics.median(scrapes), 4)
            if chat_s > 0:
                out.update(_chat_under_scrapes(url, chat_s))
    return out


def _chat_under_scrapes(url: str, seconds: float) -> dict[str, Any]:
    """4 chat clients and 1 scraper for ``seconds``: chat latencies, scrapes done."""
    import httpx2

    ask = {"model": "faq", "messages": [{"role": "user", "content": "When are you open?"}]}
    stop = threading.Event()
    chats: list[float] = []
    scrapes: list[float] = []
    failures: list[int] = []

    def chat() -> None:
        with httpx2.Client(timeout=3600) as http:
            while not stop.is_set():
                took, reply = _timed(lambda: http.post(f"{url}/v1/chat/completions", json=ask))
                (chats if reply.status_code == 200 else failures).append(
                    took if reply.status_code == 200 else reply.status_code)

    def scrape() -> None:
        with httpx2.Client(timeout=3600) as http:
            while not stop.is_set():
                scrapes.append(_timed(lambda: http.get(f"{url}/metrics"))[0])

    threads = [threading.Thread(target=chat) for _ in range(4)]
    threads.append(threading.Thread(target=scrape))
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    chats.sort()

    def q(p: float) -> float:
        return round(chats[min(len(chats) - 1, int(p * len(chats)))] * 1000, 1) if chats else -1

    return {"chat_window_s": seconds, "chats": len(chats), "chat_failures": len(failures),
            "chat_p50_ms": q(0.5), "chat_p99_ms": q(0.99),
            "chat_max_ms": round(chats[-1] * 1000, 1) if chats else -1,
            "scrapes_during_chat": len(scrapes)}


# -- what the triggers cost a write --------------------------------------------------------------


def write_cost(backend: str, steps: int, rounds: int) -> dict[str, Any]:
    """Reserve, settle and record a run for ``steps`` steps (the engine's writes, without
    budgets), with the rollup's triggers and without them, alternating ``rounds`` times."""
    sys.path.insert(0, str(ROOT))
    import psycopg

    from cascade import Ledger
    from cascade.ledger import Pending
    from cascade.types import CascadeResult, StepRecord

    def once(ledger: Any, tag: str) -> float:
        started = time.perf_counter()
        for i in range(steps):
            pending = Pending(f"{tag}{i}", "faq", 1, "mini", "openai", 0.002, time.time())
            step_id = ledger.reserve(pending)
            step = StepRecord(f"{tag}{i}", "faq", 1, "mini", "openai", 1, 100, 20, 0.001, 5.0,
                              "accept")
            ledger.settle(step_id, pending, step)
            ledger.record_run(CascadeResult(text="a", model="mini", accepted=True,
                                            cost_usd=0.001, latency_ms=5.0, run_id=f"{tag}{i}",
                                            steps=(step,), task="faq"))
        ledger.flush()
        return (time.perf_counter() - started) / steps * 1e6

    out: dict[str, list[float]] = {"with_triggers_us": [], "without_us": []}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        ledgers = {}
        for kind in ("with", "without"):
            if backend == "sqlite":
                ledgers[kind] = Ledger(f"{tmp}/{kind}.sqlite")
            else:
                schema = f"bench_{uuid.uuid4().hex[:12]}"
                with psycopg.connect(PG, autocommit=True) as conn:
                    conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type]
                stack.callback(_drop_schema, schema)
                ledgers[kind] = Ledger(url=f"{PG}?options=-csearch_path%3D{schema}")
            stack.callback(ledgers[kind].close)
        _schema_4(ledgers["without"])
        for r in range(rounds):
            for kind in ("with", "without"):
                cost = once(ledgers[kind], f"{kind}{r}-")
                out["with_triggers_us" if kind == "with" else "without_us"].append(round(cost, 1))
    return {"backend": backend, "steps_per_round": steps, **out,
            "median_with_us": statistics.median(out["with_triggers_us"]),
            "median_without_us": statistics.median(out["without_us"])}


def _drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[arg-type]


# -- driving ------------------------------------------------------------------------------------


def _run_tree(code: Path, backend: str, where: str, chat_s: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "time", "--code", str(code),
         "--backend", backend, "--where", where, "--chat-s", str(chat_s)],
        capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise SystemExit(f"timing with {code} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import psycopg

    now = time.time()
    result: dict[str, Any] = {"backend": args.backend, "steps": args.steps,
                              "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                              "load_before": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        if args.backend == "sqlite":
            before_db, after_db = f"{tmp}/before.sqlite", f"{tmp}/after.sqlite"
            result["generated"] = generate("sqlite", before_db, args.steps, now)
            result["file_mb"] = round(Path(before_db).stat().st_size / 1e6)
            shutil.copy(before_db, after_db)
            result["before"] = _run_tree(Path(args.base), "sqlite", before_db, args.chat_s)
            result["after"] = _run_tree(ROOT, "sqlite", after_db, args.chat_s)
        else:
            schema = f"bench_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type]
            url = f"{PG}?options=-csearch_path%3D{schema}"
            try:
                result["generated"] = generate("postgres", url, args.steps, now)
                result["before"] = _run_tree(Path(args.base), "postgres", url, args.chat_s)
                result["after"] = _run_tree(ROOT, "postgres", url, args.chat_s)
            finally:
                with psycopg.connect(PG, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[arg-type]
    result["load_after"] = round(os.getloadavg()[0], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run")
    go.add_argument("--backend", choices=("sqlite", "postgres"), required=True)
    go.add_argument("--steps", type=int, required=True)
    go.add_argument("--base", required=True, help="a checkout of the commit before the rollup")
    go.add_argument("--chat-s", type=float, default=60.0)
    go.add_argument("--tmp", default=None, help="where the SQLite files go")
    go.add_argument("--json", type=Path, help="append the result to this JSON-lines file")
    writes = sub.add_parser("writes", help="what the triggers cost the engine's writes")
    writes.add_argument("--backend", choices=("sqlite", "postgres"), required=True)
    writes.add_argument("--steps", type=int, default=2000)
    writes.add_argument("--rounds", type=int, default=5)
    timing = sub.add_parser("time")
    timing.add_argument("--code", required=True)
    timing.add_argument("--backend", required=True)
    timing.add_argument("--where", required=True)
    timing.add_argument("--chat-s", type=float, default=60.0)
    args = parser.parse_args()
    if args.command == "time":
        sys.path.insert(0, args.code)
        import structlog

        structlog.configure(logger_factory=structlog.PrintLoggerFactory(io.StringIO()))
        print(json.dumps(time_tree(args.backend, args.where, args.chat_s)))
        return
    if args.command == "writes":
        print(json.dumps(write_cost(args.backend, args.steps, args.rounds)))
        return
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
