"""Worker processes for the multi-process ledger tests and benchmarks.

``python -m tests.ledger.ledger_workers budget WHERE BUDGET THREADS``: a process spending against a
shared daily budget until it is refused; prints ``ready``, waits for a line on stdin, then
prints a JSON summary.

``python -m tests.ledger.ledger_workers load WHERE OPENAI_URL TASKS``: a process running TASKS
concurrent cascades against a loopback server until it is killed.

WHERE is a SQLite file or a PostgreSQL URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import threading
from typing import Any

from cascade import BudgetExceeded, Cascade
from cascade.testing import FakeProvider, make_completion

MAX_TOKENS = 100
PROMPT = "q"
PRICE = {"input": 10.0, "output": 30.0}


def ledger_section(where: str) -> dict[str, Any]:
    return {"url": where} if where.startswith("postgresql") else {"path": where}


def worst_case() -> float:
    """One call's reserved worst case (the bound on overshoot)."""
    from cascade.config.pricing import Price
    from cascade.ledger.money import worst_case_cost

    return worst_case_cost([{"role": "user", "content": PROMPT}], {"max_tokens": MAX_TOKENS},
                           Price(**PRICE))


class Priced(FakeProvider):
    """Answers at once with a real cost between 50% and 100% of the worst case."""

    def complete(self, *args: Any, **kwargs: Any) -> Any:
        return make_completion("a fine answer", input_tokens=8,
                               output_tokens=random.randint(MAX_TOKENS // 2, MAX_TOKENS))


def budget_worker(where: str, budget: float, threads: int) -> None:
    data = {
        "providers": {"p": {"type": "openai"}},
        "models": {"large": {"provider": "p", "name": "large", "price": PRICE}},
        "budgets": {"daily_usd": budget},
        "ledger": ledger_section(where),
        "tasks": {"t": {"ladder": ["large"]}},
    }
    engine = Cascade.from_dict(data, providers={"p": Priced("p")})
    calls = [0] * threads
    spent = [0.0] * threads
    errors: list[str] = []

    def spend(i: int) -> None:
        while True:
            try:
                result = engine.complete("t", PROMPT, max_tokens=MAX_TOKENS)
            except BudgetExceeded:
                return
            except Exception as exc:  # reported to the parent: a ledger error fails the test
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            calls[i] += 1
            spent[i] += result.cost_usd

    print("ready", flush=True)
    sys.stdin.readline()
    pool = [threading.Thread(target=spend, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    engine.close()
    print(json.dumps({"calls": sum(calls), "spent": sum(spent), "errors": errors}), flush=True)


def load_worker(where: str, openai_url: str, tasks: int) -> None:
    os.environ.setdefault("OPENAI_API_KEY", "sk-test-load-0000")
    data = {
        "providers": {"openai": {"type": "openai", "base_url": openai_url}},
        "models": {"mini": {"provider": "openai", "name": "gpt-4o-mini",
                            "price": {"input": 0.15, "output": 0.60}}},
        "retry": {"attempts": 1},
        "ledger": ledger_section(where),
        "tasks": {"faq": {"ladder": ["mini"]}},
    }

    async def main() -> None:
        async with Cascade.from_dict(data) as engine:

            async def loop(i: int) -> None:
                n = 0
                while True:
                    n += 1
                    await engine.acomplete("faq", f"question {i}-{n}", max_tokens=20)

            print("ready", flush=True)
            await asyncio.gather(*(loop(i) for i in range(tasks)))

    asyncio.run(main())


if __name__ == "__main__":
    import logging

    import structlog

    # Only the summary goes to stdout: the parent reads just that, and a full pipe would block.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    mode, where, *rest = sys.argv[1:]
    if mode == "budget":
        budget_worker(where, float(rest[0]), int(rest[1]))
    else:
        load_worker(where, rest[0], int(rest[1]))
