"""Three ``cascade serve`` replicas on one PostgreSQL ledger and one Redis (issue 20).

Two named keys hammer the replicas at once, round robin: key A has a daily budget and a
requests-per-minute limit, key B neither. Afterwards, from the ledger and the answers:

- A's spend stays within its daily budget plus one request's worst case;
- A's requests admitted by the rate limiter stay within its rpm plus what the limit refilled
  while the test ran (GCRA: rpm/60 per second);
- B is never refused;
- every call the upstream received has a step row naming its key, and no row lacks one.

Then a key revoked in the ledger is refused by every replica at once: they run with
``server.key_cache_s: 0``, so each reads the shared ledger on every request and the test needs no
wait; that a row is trusted no longer than ``key_cache_s`` (0.5 s by default, at most 1 s) is
tested with an injected clock in ``test_named_keys.py``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx2
import pytest
import yaml

from cascade.ledger.keys import KeyStore
from cascade.testing import MockLLMServer, Reply
from tests.gateway.test_reload import ASK, GOOD, MINI, ROOT, cascade_serve, config
from tests.ledger.ledger_db import Db, pg_schema
from tests.redis_server import MACHINE_URL

REPLICAS = 3
LEDGER_ENV, REDIS_ENV = "CASCADE_REPLICA_LEDGER", "CASCADE_REPLICA_REDIS"
PRICE = 100.0  # USD per 1M tokens, input and output: a request costs about $0.0017
MAX_OUTPUT = 16  # the model's output limit, which bounds a request's worst case
A_DAILY_USD, A_RPM = 0.03, 24
A_REQUESTS, B_REQUESTS = 60, 30


@pytest.fixture
def pg() -> Iterator[Db]:
    yield from pg_schema()


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cascade.cli", "keys", *args, "--url-env", LEDGER_ENV],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def ask(url: str, key: str) -> httpx2.Response:
    return httpx2.post(
        f"{url}/v1/chat/completions",
        json=ASK,
        timeout=60,
        headers={"authorization": f"Bearer {key}"},
    )


def refusal(reply: httpx2.Response) -> str:
    return "ok" if reply.status_code == 200 else reply.json()["error"]["code"]


def test_three_replicas_hold_key_budgets_rate_limits_and_revocation(tmp_path: Path, pg: Db) -> None:
    prefix = f"cascade-replicas-{os.getpid()}-{time.monotonic_ns()}:"
    env = {**os.environ, LEDGER_ENV: pg.url or "", REDIS_ENV: MACHINE_URL}
    with MockLLMServer() as upstream:
        upstream.script(MINI, [Reply(text=GOOD)])
        data = config(
            upstream,
            tmp_path,
            mini_price=PRICE,
            ledger={"url_env": LEDGER_ENV},
            server={"ledger_keys": True, "key_cache_s": 0, "admin_keys_env": "GW_ADMIN"},
            limits={"redis": {"url_env": REDIS_ENV, "prefix": prefix}},
        )
        data["models"]["mini"]["price"]["output"] = PRICE
        data["models"]["mini"]["max_output_tokens"] = MAX_OUTPUT
        data["tasks"]["faq"]["evaluators"] = []
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(data))
        key_a = cli(env, "create", "A", "--daily-usd", str(A_DAILY_USD), "--rpm", str(A_RPM))
        key_b = cli(env, "create", "B")
        with ExitStack() as stack:
            urls = [
                stack.enter_context(
                    cascade_serve(path, 1, {LEDGER_ENV: env[LEDGER_ENV], REDIS_ENV: MACHINE_URL})
                ).url
                for _ in range(REPLICAS)
            ]
            jobs = [("A", key_a)] * A_REQUESTS + [("B", key_b)] * B_REQUESTS
            random.Random(0).shuffle(jobs)  # A and B interleaved
            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                outcomes = list(
                    pool.map(
                        lambda i: (jobs[i][0], refusal(ask(urls[i % REPLICAS], jobs[i][1]))),
                        range(len(jobs)),
                    )
                )
            elapsed = time.monotonic() - started
            # Revocation: every replica serves key C, then it is revoked in the ledger, at once
            # (in this process: the CLI's start-up would outlast any cache).
            key_c = cli(env, "create", "C")
            assert [ask(url, key_c).status_code for url in urls] == [200] * REPLICAS
            ledger = pg.open()
            try:
                KeyStore(ledger).revoke("C")
            finally:
                ledger.close()
            after = [ask(url, key_c) for url in urls]
            assert [r.status_code for r in after] == [401] * REPLICAS
            assert all(r.json()["error"]["code"] == "api_key_revoked" for r in after)
        calls = len(upstream.requests)
    by_key = {name: Counter(code for who, code in outcomes if who == name) for name in "AB"}
    assert by_key["B"] == Counter(ok=B_REQUESTS), by_key
    a = by_key["A"]
    assert set(a) <= {"ok", "rate_limit_exceeded", "budget_exceeded"}, a
    # Both of A's limits were reached, so both bounds below were tested.
    assert a["rate_limit_exceeded"] > 0, a
    assert a["budget_exceeded"] > 0, a
    admitted = a["ok"] + a["budget_exceeded"]
    assert admitted <= A_RPM + A_RPM * elapsed / 60 + 1, (a, elapsed)
    spent_a = pg.rows("SELECT COALESCE(SUM(cost_usd), 0) FROM steps WHERE key_name = 'A'")[0][0]
    # One request's worst case: what the engine reserved for it.
    one_request = pg.rows("SELECT MAX(reserved_usd) FROM steps WHERE key_name = 'A'")[0][0]
    assert 0 < spent_a <= A_DAILY_USD + one_request
    # Every upstream call is a step row naming its key; no step lacks a name.
    named = pg.rows(
        "SELECT key_name, COUNT(*) FROM steps"
        " WHERE decision IN ('accept', 'escalate', 'error') GROUP BY key_name"
    )
    assert dict(named) == {"A": a["ok"], "B": B_REQUESTS, "C": REPLICAS}
    assert sum(count for _, count in named) == calls
    assert pg.rows("SELECT COUNT(*) FROM steps WHERE key_name IS NULL")[0][0] == 0
    print(
        json.dumps(
            {
                "A": dict(a),
                "elapsed_s": round(elapsed, 2),
                "spent_a": spent_a,
                "one_request_worst_usd": one_request,
                "calls": calls,
            }
        )
    )
