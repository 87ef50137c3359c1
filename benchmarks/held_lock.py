"""Requests arriving while another process holds the SQLite write lock (issue 22, item 10).

    python benchmarks/held_lock.py --code /tmp/base-checkout   # the commit before the fix
    python benchmarks/held_lock.py --code .                    # this tree

Another process takes the ledger's write lock (``BEGIN IMMEDIATE``) and keeps it; then
``--requests`` chat requests (default 20) arrive together at the gateway (a loopback upstream,
``server.request_timeout_s`` 120). Printed: the upstream calls made, and each request's status
with the seconds after the burst it came back. The busy timeout is 30 s (``--busy-s``): set
through ``ledger.busy_timeout_s`` where the tree has it, else through the base code's module
constant.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", required=True, help="the code tree to import cascade from")
    parser.add_argument("--busy-s", type=float, default=30.0)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.code).resolve()))
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")

    import openai

    from cascade import Cascade
    from cascade.config.schema import LedgerConfig
    from cascade.gateway.app import create_app, running
    from cascade.ledger import backends
    from cascade.testing import MockLLMServer

    tmp = Path(tempfile.mkdtemp())
    ledger: dict[str, Any] = {"path": str(tmp / "l.sqlite")}
    if "busy_timeout_s" in LedgerConfig.model_fields:
        ledger["busy_timeout_s"] = args.busy_s
        how = "ledger.busy_timeout_s"
    else:
        backends.SQLITE_BUSY_TIMEOUT_S = args.busy_s  # type: ignore[misc]  # read at each use
        how = "backends.SQLITE_BUSY_TIMEOUT_S"
    with MockLLMServer() as upstream:
        upstream.script("gpt-4o-mini", ["We open at nine every day"])
        config = {
            "providers": {"openai": {"type": "openai", "base_url": upstream.openai_url}},
            "models": {"mini": {"provider": "openai", "name": "gpt-4o-mini",
                                "price": {"input": 0.15, "output": 0.6}}},
            "ledger": ledger,
            "tasks": {"faq": {"ladder": ["mini"]}},
        }
        engine = Cascade.from_dict(config)
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, ledger["path"]],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        try:
            with running(create_app(engine, api_keys=[])) as url:
                started = time.monotonic()

                def ask(_: int) -> tuple[int, float]:
                    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                                       timeout=600) as api:
                        try:
                            api.chat.completions.create(
                                model="faq", messages=[{"role": "user", "content": "hi"}])
                            code = 200
                        except openai.APIStatusError as exc:
                            code = exc.status_code
                    return code, round(time.monotonic() - started, 1)

                with ThreadPoolExecutor(args.requests) as pool:
                    outcomes = sorted(pool.map(ask, range(args.requests)), key=lambda o: o[1])
        finally:
            holder.kill()
            holder.communicate()
            engine.close()
    print(json.dumps({
        "code": args.code, "busy_timeout_s": args.busy_s, "set_through": how,
        "requests": args.requests, "upstream_calls": len(upstream.requests),
        "statuses": dict(Counter(code for code, _ in outcomes)),
        "status_at_s": [f"{code}@{at}" for code, at in outcomes],
        "load": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
