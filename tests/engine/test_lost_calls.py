"""Calls whose outcome is never known cost their worst case (issue 22, items 1 and 2).

- An attempt the engine times out was sent, and the upstream may bill it: it is charged at its
  worst case, and a retry after it reserves a worst case of its own through the same budget
  decision (a retry that does not fit is not made).
- A hedged rung starts only when its worst case fits the request's ``max_cost_usd`` beside the
  rungs in flight, and a rung cancelled in flight (``lost``) is in ``result.cost_usd`` and
  ``x-cascade-cost-usd`` as it is in the ledger.

Each case runs through the real SDKs against a loopback upstream (``MockLLMServer``) whose
``delay_s`` makes the timeouts happen; nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from cascade import BudgetExceeded, Cascade, ProviderError
from cascade.config import ProviderConfig
from cascade.gateway.app import create_app, running
from cascade.ledger import nano
from cascade.ledger.money import worst_case_cost
from cascade.providers.base import map_sdk_error
from cascade.providers.openai import OpenAIProvider
from cascade.testing import MockLLMServer, Reply
from tests.conftest import live_config
from tests.ledger.ledger_db import Db

PROMPT = "When do you open?"
MESSAGES = ({"role": "user", "content": PROMPT},)
MAX_TOKENS = 100
# providers.openai.timeout_s: far above a prompt reply's time even on a loaded machine, and
# far below SLOW's.
TIMEOUT_S = 0.5
SLOW = Reply("Open from nine to five daily.", delay_s=1.5, output_tokens=MAX_TOKENS)
GOOD = "Open from nine to five daily."


async def _no_sleep(seconds: float) -> None:
    return None


def _timeout_config(server: MockLLMServer, ledger: Path, **task: Any) -> dict[str, Any]:
    config = live_config(server, ladder=["mini"], attempts=3, ledger=str(ledger), **task)
    config["providers"]["openai"]["timeout_s"] = TIMEOUT_S
    return config


def _engine(config: dict[str, Any]) -> Cascade:
    return Cascade.from_dict(config, sleep=lambda s: None, asleep=_no_sleep)


def _worst(engine: Cascade) -> float:
    """One call of mini's worst case: what its step reserves."""
    return worst_case_cost(MESSAGES, {"max_tokens": MAX_TOKENS}, engine.config.models["mini"].price)


def _complete(engine: Cascade, mode: str, **params: Any) -> Any:
    if mode == "sync":
        return engine.complete("faq", PROMPT, max_tokens=MAX_TOKENS, **params)

    async def run() -> Any:
        try:
            return await engine.acomplete("faq", PROMPT, max_tokens=MAX_TOKENS, **params)
        finally:
            await engine.aclose()  # this loop's SDK clients end with it

    return asyncio.run(run())


def _rows(ledger: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(ledger) as db:
        return db.execute(
            "SELECT status, decision, attempts, cost_usd, reserved_usd, error FROM steps"
            " ORDER BY id"
        ).fetchall()


def _totals_nusd(ledger: Path) -> int:
    with sqlite3.connect(ledger) as db:
        (total,) = db.execute(
            "SELECT spent_nusd FROM totals WHERE scope = 'global' AND period = 'daily'"
        ).fetchone()
    return int(total)


def _assert_charged_per_attempt(ledger: Path, attempts: int, calls: int, worst: float) -> None:
    """``attempts`` timed out, each is in the ledger at its worst case, the running totals say
    the same to the nano-dollar, and no request reached the upstream uncharged. (On a loaded
    machine a timed-out attempt may never have reached the upstream: charged all the same,
    since the engine cannot know.)"""
    rows = [r for r in _rows(ledger) if r[1] != "skip"]
    assert sum(n for _, _, n, *_ in rows) == attempts
    assert calls <= attempts
    assert all(status == "lost" for status, *_ in rows)
    assert all(cost == reserved for _, _, _, cost, reserved, _ in rows)
    spend = sum(nano(cost) for _, _, _, cost, *_ in rows)
    assert spend == pytest.approx(attempts * nano(worst), abs=attempts)  # per-row rounding
    assert _totals_nusd(ledger) == spend


# -- 1. the engine's own timeout -----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["sync", "async"])
def test_timed_out_attempts_are_charged_and_the_budget_stops_them(
    tmp_path: Path, keys: None, mode: str
) -> None:
    """Each timed-out attempt costs its worst case; retries reserve again; the budget ends it."""
    ledger = tmp_path / "l.sqlite"
    with MockLLMServer() as server:
        server.script("gpt-4o-mini", [SLOW])
        config = _timeout_config(server, ledger)
        with _engine(config) as probe:
            worst = _worst(probe)
        config["budgets"] = {"daily_usd": 4.5 * worst}  # four attempts' worst cases fit
        with _engine(config) as engine:
            errors = []
            for _ in range(6):
                with pytest.raises((ProviderError, BudgetExceeded)) as info:
                    _complete(engine, mode)
                errors.append(type(info.value))
            engine.ledger.flush()
            calls = len(server.calls("gpt-4o-mini"))
    # Three attempts, then one whose retry did not fit, then nothing is called any more.
    assert errors == [ProviderError, ProviderError, *[BudgetExceeded] * 4]
    _assert_charged_per_attempt(ledger, 4, calls, worst)
    called = [r for r in _rows(ledger) if r[1] != "skip"]
    assert [attempts for _, _, attempts, *_ in called] == [3, 1]
    assert "timed out" in called[1][5]
    assert "not retried: daily budget" in called[1][5]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_attempt_cut_by_the_runs_deadline_is_charged(
    tmp_path: Path, keys: None, mode: str
) -> None:
    """The run's deadline cutting an attempt short is the same: the request was sent."""
    ledger = tmp_path / "l.sqlite"
    with MockLLMServer() as server:
        server.script("gpt-4o-mini", [SLOW])
        config = _timeout_config(server, ledger, deadline_s=TIMEOUT_S)
        config["providers"]["openai"]["timeout_s"] = 60
        with _engine(config) as engine:
            with pytest.raises(ProviderError, match="the run's deadline"):
                _complete(engine, mode)
            engine.ledger.flush()
            worst = _worst(engine)
            calls = len(server.calls("gpt-4o-mini"))
    _assert_charged_per_attempt(ledger, 1, calls, worst)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_answer_after_a_timed_out_attempt_costs_both(
    tmp_path: Path, keys: None, mode: str
) -> None:
    """A retry that answers: the step costs the lost attempt's worst case plus the answer."""
    ledger = tmp_path / "l.sqlite"
    with MockLLMServer() as server:
        server.script("gpt-4o-mini", [SLOW, Reply(GOOD)])
        with _engine(_timeout_config(server, ledger)) as engine:
            result = _complete(engine, mode)
            engine.ledger.flush()
            worst = _worst(engine)
    (step,) = result.steps
    answer = (step.input_tokens * 0.15 + step.output_tokens * 0.60) / 1e6  # mini's prices
    assert (step.attempts, step.decision) == (2, "accept")
    assert result.cost_usd == pytest.approx(worst + answer, abs=1e-12)
    ((status, _, attempts, cost, reserved, _),) = _rows(ledger)
    assert (status, attempts) == ("settled", 2)
    assert cost == pytest.approx(result.cost_usd, abs=1e-12)
    assert reserved == pytest.approx(2 * worst, abs=1e-12)  # the retry reserved its own
    assert _totals_nusd(ledger) == nano(cost)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_timeout_the_sdk_reports_is_charged_too(tmp_path: Path, keys: None, mode: str) -> None:
    """The SDK's own read timeout (the same timeout_s) may fire first: the attempt was sent."""
    ledger = tmp_path / "l.sqlite"
    with MockLLMServer() as server:
        server.script("gpt-4o-mini", [SLOW])
        config = _timeout_config(server, ledger)
        config["providers"]["openai"]["timeout_s"] = 30  # the engine's deadline never comes
        options: dict[str, Any] = {"base_url": server.openai_url, "api_key": "sk-test",
                                   "max_retries": 0, "timeout": TIMEOUT_S}
        provider = OpenAIProvider(
            "openai", ProviderConfig(type="openai", base_url=server.openai_url, timeout_s=30),
            client=openai.OpenAI(**options), async_client=openai.AsyncOpenAI(**options),
        )
        engine = Cascade.from_dict(config, providers={"openai": provider},
                                   sleep=lambda s: None, asleep=_no_sleep)
        with engine:
            with pytest.raises(ProviderError, match="timed out"):
                _complete(engine, mode)
            engine.ledger.flush()
            worst = _worst(engine)
            calls = len(server.calls("gpt-4o-mini"))
            provider.client.close()
    _assert_charged_per_attempt(ledger, 3, calls, worst)


def test_sdk_timeout_before_sending_is_not_charged() -> None:
    """A connect or pool timeout sent nothing; a read timeout was sent (timed_out)."""
    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    for cause, sent in [(httpx2.ReadTimeout("slow reply"), True),
                        (httpx2.ConnectTimeout("slow connect"), False),
                        (httpx2.PoolTimeout("no connection free"), False)]:
        exc = openai.APITimeoutError(request=request)
        exc.__cause__ = cause
        error = map_sdk_error(exc, openai, provider="openai", model="m", key_env=None,
                              secret=None)
        assert (error.retryable, error.timed_out) == (True, sent)


@pytest.mark.parametrize(
    ("replies", "reservations"),
    [([Reply(GOOD)], 1), ([Reply(status=500), Reply(GOOD)], 1), ([SLOW, Reply(GOOD)], 2)],
    ids=["at-once", "after-a-500", "after-a-timeout"],
)
def test_only_a_retry_after_a_timeout_reserves_again(
    tmp_path: Path, keys: None, replies: list[Reply], reservations: int
) -> None:
    """The fast path writes one reservation; so does a retry after an unbilled failure."""
    ledger = tmp_path / "l.sqlite"
    with MockLLMServer() as server:
        server.script("gpt-4o-mini", replies)
        config = _timeout_config(server, ledger)
        config["budgets"] = {"daily_usd": 1}
        with _engine(config) as engine:
            made: list[Any] = []
            reserve = engine.ledger.reserve
            engine.ledger.reserve = lambda *a, **k: made.append(a) or reserve(*a, **k)  # type: ignore[method-assign]
            _complete(engine, "sync")
    assert len(made) == reservations


def test_gateway_timed_out_calls_are_charged_and_the_budget_holds(
    tmp_path: Path, keys: None
) -> None:
    """Through the gateway: 502 while attempts time out, then 429; spend = attempts x worst."""
    ledger = tmp_path / "l.sqlite"
    with MockLLMServer() as server:
        server.script("gpt-4o-mini", [SLOW])
        config = _timeout_config(server, ledger)
        with _engine(config) as probe:
            worst = _worst(probe)
        config["budgets"] = {"daily_usd": 4.5 * worst}
        with _engine(config) as engine, running(create_app(engine)) as url, \
                openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as api:
            statuses = []
            for _ in range(6):
                with pytest.raises(openai.APIStatusError) as info:
                    api.chat.completions.create(model="faq", messages=list(MESSAGES),  # type: ignore[arg-type]
                                                max_tokens=MAX_TOKENS)
                statuses.append(info.value.status_code)
            engine.ledger.flush()
            calls = len(server.calls("gpt-4o-mini"))
    assert statuses == [502, 502, 429, 429, 429, 429]
    _assert_charged_per_attempt(ledger, 4, calls, worst)


# -- 2. hedged rungs under max_cost_usd ----------------------------------------------------------

WORST = 0.10  # each rung: output 1,000 tokens at $100/M, input free


def _hedge_config(server: MockLLMServer, ledger: dict[str, Any], rungs: int, cap: float
                  ) -> dict[str, Any]:
    models = {f"m{i}": {"provider": "openai", "name": f"m{i}",
                        "price": {"input": 0, "output": 100}} for i in range(rungs)}
    return {
        "providers": {"openai": {"type": "openai", "base_url": server.openai_url}},
        "models": models,
        "ledger": ledger,
        "tasks": {"t": {"ladder": list(models), "hedge_after_ms": 20, "max_cost_usd": cap,
                        "evaluators": [{"type": "length", "min_words": 3}]}},
    }


@contextmanager
def _hedged(tmp_path: Path, rungs: int, cap: float, first: Reply, hedge_after_ms: float = 20,
            ledger: Db | None = None) -> Iterator[tuple[openai.OpenAI, MockLLMServer, Db]]:
    """A gateway over rungs m0..m{n-1}; m0 answers with ``first``, the others at once."""
    db = ledger or Db("sqlite", path=tmp_path / "l.sqlite")
    with MockLLMServer() as server:
        server.script("m0", [first])
        for i in range(1, rungs):
            server.script(f"m{i}", [Reply(GOOD, output_tokens=1000)])
        config = _hedge_config(server, db.section(), rungs, cap)
        config["tasks"]["t"]["hedge_after_ms"] = hedge_after_ms
        with _engine(config) as engine, running(create_app(engine)) as url, \
                openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as api:
            yield api, server, db


def _ask(api: openai.OpenAI) -> tuple[str, float]:
    """The answering rung and the cost header of one request."""
    raw = api.chat.completions.with_raw_response.create(
        model="t", messages=list(MESSAGES), max_tokens=1000)  # type: ignore[arg-type]
    return raw.headers["x-cascade-model"], float(raw.headers["x-cascade-cost-usd"])


def _spend(db: Db) -> float:
    ((total,),) = db.rows("SELECT COALESCE(SUM(cost_usd), 0) FROM steps")
    return float(total)


@pytest.mark.parametrize("rungs", [2, 4])
def test_hedge_does_not_start_past_the_cap(tmp_path: Path, keys: None, rungs: int) -> None:
    """A slow first rung holds $0.10 of a $0.15 cap: no hedge starts beside it."""
    slow = Reply(GOOD, delay_s=0.5, output_tokens=1000)
    with _hedged(tmp_path, rungs, 0.15, slow) as (api, server, db):
        model, header = _ask(api)
        calls = [len(server.calls(f"m{i}")) for i in range(rungs)]
        spend = _spend(db)
    assert model == "m0"
    assert calls == [1] + [0] * (rungs - 1)
    assert spend == pytest.approx(WORST)
    assert spend <= 0.15
    assert header == pytest.approx(spend)


def test_lost_hedge_is_in_the_cost_header(tmp_path: Path, keys: None) -> None:
    """Both rungs fit a $0.25 cap; the slow one loses, lost at $0.10, and the header says $0.20."""
    slow = Reply(GOOD, delay_s=0.5, output_tokens=1000)
    with _hedged(tmp_path, 2, 0.25, slow) as (api, _server, db):
        model, header = _ask(api)
        statuses = dict(db.rows("SELECT model, status FROM steps"))
        spend = _spend(db)
    assert model == "m1"
    assert statuses == {"m0": "lost", "m1": "settled"}
    assert spend == pytest.approx(2 * WORST)
    assert header == pytest.approx(spend)


def test_hedge_that_did_not_fit_runs_after_the_rejected_rung(tmp_path: Path, keys: None) -> None:
    """The rung that could not start as a hedge is not skipped: it runs once m0 is rejected."""
    slow_no = Reply("no", delay_s=0.3, output_tokens=10)  # rejected, and cheap: $0.001
    with _hedged(tmp_path, 2, 0.15, slow_no) as (api, server, db):
        model, header = _ask(api)
        calls = [len(server.calls(f"m{i}")) for i in range(2)]
        spend = _spend(db)
    assert (model, calls) == ("m1", [1, 1])
    assert spend == pytest.approx(0.001 + WORST)
    assert spend <= 0.15
    assert header == pytest.approx(spend)


def test_hedges_started_at_once_stay_under_the_cap(
    tmp_path: Path, keys: None, db: Db
) -> None:
    """Hedges due while the first rung's reservation is still with the ledger see it too."""
    slow = Reply(GOOD, delay_s=0.3, output_tokens=1000)
    with _hedged(tmp_path, 4, 0.15, slow, hedge_after_ms=0.001, ledger=db) as (api, server, _):
        for _ in range(3):
            _, header = _ask(api)
            assert header <= 0.15
        calls = sum(len(server.calls(f"m{i}")) for i in range(4))
        spend = _spend(db)
    assert calls == 3
    assert spend == pytest.approx(3 * WORST)
