"""CPU cost of a named key's lookup (issue 20, keys): cold (the ledger read plus the hash check)
and warm (the cached row, hash check only), on SQLite and PostgreSQL.

Each round looks one key up ``--n`` times with ``LedgerKeys.lookup_sync``: cold with a cache
time of 0 (every lookup reads the row again), warm with the default 0.5 s cache and a frozen
clock (every lookup after the first is served from the cache). ``time.process_time`` counts this
process's CPU (the client's side; PostgreSQL's own CPU is in its server process and not
counted), ``time.perf_counter`` the wall time. Rounds alternate cold and warm, backend by
backend, so both are measured side by side; medians and ranges over the rounds.

    python benchmarks/keys.py [--n 2000] [--rounds 5] [--pg postgresql://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from cascade.gateway.keys import LedgerKeys
from cascade.ledger import Ledger
from cascade.ledger.keys import KeyRecord, KeyStore


def _round(ledger: Ledger, key: str, n: int, ttl_s: float) -> tuple[float, float]:
    """Per lookup: CPU and wall microseconds."""
    keys = LedgerKeys(ledger, ttl_s=ttl_s, clock=lambda: 0.0)
    assert isinstance(keys.lookup_sync(key), KeyRecord)  # warm's first read, outside the timing
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        keys.lookup_sync(key)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / n * 1e6, wall / n * 1e6


def _measure(ledger: Ledger, n: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    _, key = KeyStore(ledger).create(f"bench-{uuid.uuid4().hex[:8]}", daily_usd=5, rpm=60)
    out: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": []}
    for _ in range(rounds):
        out["cold"].append(_round(ledger, key, n, ttl_s=0.0))
        out["warm"].append(_round(ledger, key, n, ttl_s=3600.0))
    return out


def _row(backend: str, results: dict[str, list[tuple[float, float]]]) -> list[str]:
    lines = []
    for kind in ("cold", "warm"):
        cpu = [c for c, _ in results[kind]]
        wall = [w for _, w in results[kind]]
        lines.append(
            f"| {backend} | {kind} | {statistics.median(cpu):.1f} µs | {min(cpu):.1f}-"
            f"{max(cpu):.1f} | {statistics.median(wall):.1f} µs | {min(wall):.1f}-{max(wall):.1f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="lookups per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    lines = [
        "| ledger | lookup | CPU per lookup (median) | CPU range | wall (median) | wall range |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "keys.sqlite")
        try:
            lines += _row("SQLite", _measure(ledger, args.n, args.rounds))
        finally:
            ledger.close()
    schema = f"bench_keys_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type]
    try:
        ledger = Ledger(url=f"{args.pg}?options=-csearch_path%3D{schema}")
        try:
            lines += _row("PostgreSQL", _measure(ledger, args.n, args.rounds))
        finally:
            ledger.close()
    finally:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[arg-type]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
