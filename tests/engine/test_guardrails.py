"""Budgets, circuit breaker, concurrency limits and the response cache."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from cascade import BudgetExceeded, Cascade, Completion, Ledger, ProviderError
from cascade.engine.budget import estimate_input_tokens
from cascade.ledger.writer import flush_all
from cascade.testing import FakeProvider, make_completion
from tests.engine.test_engine import config

# small: $1/$2, medium: $3/$6, large: $10/$30 per 1M tokens.


def worst(model: str, prompt: str, max_tokens: int) -> float:
    prices = {"small": (1.0, 2.0), "medium": (3.0, 6.0), "large": (10.0, 30.0)}[model]
    tokens = estimate_input_tokens([{"role": "user", "content": prompt}])
    return (tokens * prices[0] + max_tokens * prices[1]) / 1e6


def build(script: Mapping[str, Sequence[Any]], tmp_path: Path | None = None,
          **changes: Any) -> tuple[Cascade, FakeProvider]:
    data = config()
    for key, value in changes.items():
        if key == "task":
            data["tasks"]["t"].update(value)
        else:
            data[key] = value
    fake = FakeProvider("p", {k: list(v) for k, v in script.items()})
    ledger: Any = Ledger(tmp_path / "l.sqlite") if tmp_path else False
    return Cascade.from_dict(data, providers={"p": fake}, ledger=ledger,
                             sleep=lambda s: None), fake


def test_max_cost_skips_rung_that_would_break_cap() -> None:
    """A rung whose worst case breaks max_cost_usd is skipped, with the reason recorded."""
    cap = worst("small", "q", 100) + worst("medium", "q", 100) + 1e-9
    engine, fake = build({"small": ["no"], "medium": ["no"], "large": ["a good answer"]})
    result = engine.complete("t", "q", max_cost_usd=cap, max_tokens=100)
    assert [s.decision for s in result.steps] == ["escalate", "escalate", "skip"]
    assert "max_cost_usd" in (result.steps[2].error or "")
    assert [c["model"] for c in fake.calls] == ["small", "medium"]
    assert result.accepted is False
    assert result.cost_usd <= cap


def test_no_rung_fits_raises_budget_exceeded() -> None:
    """If no rung fits the cap, BudgetExceeded carries the numbers and nothing is called."""
    engine, fake = build({"small": ["x"]})
    with pytest.raises(BudgetExceeded) as info:
        engine.complete("t", "q", max_cost_usd=1e-9, max_tokens=100)
    assert info.value.limit_usd == 1e-9
    assert info.value.estimate_usd == pytest.approx(worst("small", "q", 100))
    assert "max_cost_usd" in str(info.value)
    assert fake.calls == []


def test_task_max_cost_and_default_max_tokens() -> None:
    """The task's max_cost_usd applies; without max_tokens the worst case uses 4096 and sends it."""
    engine, fake = build({"small": ["a good answer"]}, task={"max_cost_usd": 1.0})
    engine.complete("t", "q")
    assert fake.calls[0]["params"]["max_tokens"] == 4096


def test_period_budget_blocks_when_spent(tmp_path: Path) -> None:
    """A daily budget counts the ledger's spend today and refuses calls that would break it."""
    ans = make_completion("a good answer", input_tokens=1000, output_tokens=1000)
    engine, _ = build({"small": [ans]}, tmp_path, budgets={"daily_usd": 0.0125})
    spent = 0.0
    with pytest.raises(BudgetExceeded, match="daily budget of global"):
        for _ in range(100):
            spent += engine.complete("t", "q", max_tokens=1000).cost_usd
    assert spent <= 0.0125
    assert spent == pytest.approx(0.003 * 4)  # each call's worst case is just over $0.003


def test_hundred_concurrent_requests_respect_budget(tmp_path: Path) -> None:
    """100 concurrent requests against a daily budget: the ledger's spend stays within it."""
    budget = 0.05
    ans = make_completion("a good answer", input_tokens=5, output_tokens=1000)

    class SlowFake(FakeProvider):
        async def acomplete(self, *args: Any, **kwargs: Any) -> Completion:
            await asyncio.sleep(random.uniform(0, 0.01))
            return self.complete(*args, **kwargs)

    data = config(ladder=["small", "medium"])
    data["budgets"] = {"daily_usd": budget}
    engine = Cascade.from_dict(data, providers={"p": SlowFake("p", {"small": [ans],
                                                                   "medium": [ans]})},
                               ledger=Ledger(tmp_path / "l.sqlite"))

    async def main() -> list[Any]:
        return await asyncio.gather(*(engine.acomplete("t", "q", max_tokens=1000)
                                      for _ in range(100)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert any(isinstance(o, BudgetExceeded) for o in outcomes)
    assert sum(not isinstance(o, Exception) for o in outcomes) > 5
    flush_all()  # rows the ledger's writer thread has queued
    with sqlite3.connect(tmp_path / "l.sqlite") as conn:
        (spent,) = conn.execute("SELECT SUM(cost_usd) FROM steps").fetchone()
    assert spent <= budget


def test_task_budget_only_counts_its_task(tmp_path: Path) -> None:
    """A task-level budget ignores other tasks' spend."""
    data = config()
    data["tasks"]["other"] = {"ladder": ["small"]}
    data["tasks"]["t"]["budgets"] = {"monthly_usd": 1.0}
    fake = FakeProvider("p", {"small": [make_completion("a good answer", input_tokens=10**6)]})
    engine = Cascade.from_dict(data, providers={"p": fake}, ledger=Ledger(tmp_path / "l.sqlite"))
    for _ in range(3):
        engine.complete("other", "q", max_tokens=10)  # $1 each, not the task's budget
    assert engine.complete("t", "q", max_tokens=10).model == "small"
    status = {(b["scope"], b["period"]): b for b in engine.limits.guard.status()}  # type: ignore[union-attr]
    assert status[("t", "monthly")]["spent_usd"] == pytest.approx(1.000006)


def test_period_budget_needs_ledger() -> None:
    """Budgets without a ledger are a config error, not silently unenforced."""
    from cascade import ConfigError
    data = config()
    data["budgets"] = {"daily_usd": 1}
    with pytest.raises(ConfigError, match="budgets: period budgets are enforced from the ledger"):
        Cascade.from_dict(data, providers={"p": FakeProvider("p", {})}, ledger=False)


def test_circuit_breaker_skips_then_retries(tmp_path: Path) -> None:
    """After N failures in a row a provider is skipped (as a recorded step) until cool-down ends."""
    boom = ProviderError("HTTP 503", provider="p", model="small", status_code=503, retryable=True)
    data = config(ladder=["small"], evaluators=[])
    data["providers"]["p"]["circuit_breaker"] = {"failures": 3, "cooldown_s": 0.2}
    data["retry"] = {"attempts": 1}
    fake = FakeProvider("p", {"small": [boom, boom, boom, "recovered"]})
    engine = Cascade.from_dict(data, providers={"p": fake}, ledger=Ledger(tmp_path / "l.sqlite"))
    for _ in range(3):
        with pytest.raises(ProviderError):
            engine.complete("t", "q")
    with pytest.raises(ProviderError) as info:
        engine.complete("t", "q")
    assert info.value.result is not None
    step = info.value.result.steps[0]
    assert (step.decision, step.attempts) == ("skip", 0)
    assert "circuit open" in (step.error or "")
    assert len(fake.calls) == 3
    time.sleep(0.25)
    assert engine.complete("t", "q").text == "recovered"
    flush_all()  # rows the ledger's writer thread has queued
    with sqlite3.connect(tmp_path / "l.sqlite") as conn:
        decisions = [r[0] for r in conn.execute("SELECT decision FROM steps ORDER BY id")]
    assert decisions == ["error", "error", "error", "skip", "accept"]


def test_concurrency_limit_per_provider() -> None:
    """max_concurrency bounds the calls in flight, sync and async."""
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    class Counting(FakeProvider):
        def complete(self, *args: Any, **kwargs: Any) -> Completion:
            nonlocal in_flight, peak
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            time.sleep(0.005)
            with lock:
                in_flight -= 1
            return super().complete(*args, **kwargs)

        async def acomplete(self, *args: Any, **kwargs: Any) -> Completion:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.005)
            in_flight -= 1
            return super().complete(*args, **kwargs)

    data = config(ladder=["small"], evaluators=[])
    data["providers"]["p"]["max_concurrency"] = 3
    engine = Cascade.from_dict(data, providers={"p": Counting("p", {"small": ["ok"]})},
                               ledger=False)

    async def main() -> None:
        await asyncio.gather(*(engine.acomplete("t", "q") for _ in range(50)))

    asyncio.run(main())
    assert peak == 3
    peak = 0
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda _: engine.complete("t", "q"), range(40)))
    assert peak == 3


def test_cache_hit_is_free_and_marked(tmp_path: Path) -> None:
    """A repeated request is served from the cache at cost 0, marked in result and ledger."""
    data = config()
    data["cache"] = {"path": str(tmp_path / "cache.sqlite")}
    data["tasks"]["t"]["cache"] = {"ttl_s": 60}
    fake = FakeProvider("p", {"small": ["no"], "medium": ["a good answer"]})
    engine = Cascade.from_dict(data, providers={"p": fake}, ledger=Ledger(tmp_path / "l.sqlite"))
    first = engine.complete("t", "same question")
    second = engine.complete("t", "same question")
    assert (second.text, second.model, second.cached, second.cost_usd) == (
        first.text, "medium", True, 0.0)
    assert [s.decision for s in second.steps] == ["cache"]
    assert len(fake.calls) == 2
    engine.complete("t", "another question")
    assert len(fake.calls) == 4
    flush_all()  # rows the ledger's writer thread has queued
    with sqlite3.connect(tmp_path / "l.sqlite") as conn:
        rows = conn.execute("SELECT decision, cost_usd FROM steps WHERE run_id = ?",
                            (second.run_id,)).fetchall()
    assert rows == [("cache", 0.0)]


def test_cache_expires_and_keys_on_params(tmp_path: Path) -> None:
    """Different params miss the cache; an expired entry is not served."""
    data = config(ladder=["small"], evaluators=[])
    data["cache"] = {"path": str(tmp_path / "cache.sqlite")}
    data["tasks"]["t"]["cache"] = {"ttl_s": 0.1}
    fake = FakeProvider("p", {"small": ["ok"]})
    engine = Cascade.from_dict(data, providers={"p": fake}, ledger=False)
    engine.complete("t", "q", temperature=0)
    engine.complete("t", "q", temperature=1)
    assert len(fake.calls) == 2
    assert engine.complete("t", "q", temperature=0).cached
    time.sleep(0.15)
    assert not engine.complete("t", "q", temperature=0).cached


def test_unaccepted_answers_are_not_cached(tmp_path: Path) -> None:
    """Only accepted answers are cached."""
    data = config()
    data["cache"] = {"path": str(tmp_path / "cache.sqlite")}
    data["tasks"]["t"]["cache"] = {}
    fake = FakeProvider("p", {"small": ["a"], "medium": ["b"], "large": ["c"]})
    engine = Cascade.from_dict(data, providers={"p": fake}, ledger=False)
    engine.complete("t", "q")
    assert not engine.complete("t", "q").cached


def test_thousand_concurrent_runs_with_faults_lose_no_rows(tmp_path: Path) -> None:
    """1,000 concurrent cascades with 20% of calls faulted: every step has its ledger row."""
    rng = random.Random(7)

    class Flaky(FakeProvider):
        async def acomplete(self, messages: Sequence[Any], *, model: str,
                            params: Mapping[str, Any], query_id: str | None = None) -> Completion:
            await asyncio.sleep(rng.uniform(0, 0.002))
            if rng.random() < 0.2:
                raise ProviderError("HTTP 503", provider="p", model=model, status_code=503,
                                    retryable=True)
            return make_completion(rng.choice(["no", "a good answer"]), provider="p")

    data = config()
    data["retry"] = {"attempts": 2}
    engine = Cascade.from_dict(data, providers={"p": Flaky("p")},
                               ledger=Ledger(tmp_path / "l.sqlite"), asleep=_no_sleep)

    async def main() -> list[Any]:
        return await asyncio.gather(*(engine.acomplete("t", f"q{i}") for i in range(1000)),
                                    return_exceptions=True)

    outcomes = asyncio.run(main())
    steps = sum(len(o.steps) if not isinstance(o, Exception) else len(o.result.steps)  # type: ignore[attr-defined]
                for o in outcomes)
    flush_all()  # rows the ledger's writer thread has queued
    with sqlite3.connect(tmp_path / "l.sqlite") as conn:
        (rows,) = conn.execute("SELECT COUNT(*) FROM steps").fetchone()
        (runs,) = conn.execute("SELECT COUNT(*) FROM runs").fetchone()
        (errors,) = conn.execute("SELECT COUNT(*) FROM steps WHERE decision='error'").fetchone()
    assert rows == steps
    assert runs == 1000
    assert errors > 0


async def _no_sleep(seconds: float) -> None:
    return None


def test_report_shows_budgets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """cascade report --config shows spend against each budget."""
    import json

    import yaml

    from cascade.cli import main
    data = config(ladder=["small"], evaluators=[])
    data["budgets"] = {"daily_usd": 2.0}
    data["tasks"]["t"]["budgets"] = {"monthly_usd": 10.0}
    data["ledger"] = {"path": str(tmp_path / "l.sqlite")}
    fake = FakeProvider("p", {"small": [make_completion("ok", input_tokens=10**6,
                                                        output_tokens=0)]})
    Cascade.from_dict(data, providers={"p": fake}).complete("t", "q", max_tokens=1)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert main(["report", "--ledger", str(tmp_path / "l.sqlite"), "--config", str(cfg),
                 "--json"]) == 0
    budgets = json.loads(capsys.readouterr().out)["budgets"]
    assert budgets == [
        {"scope": "global", "period": "daily", "limit_usd": 2.0, "spent_usd": 1.0},
        {"scope": "t", "period": "monthly", "limit_usd": 10.0, "spent_usd": 1.0}]
    assert main(["report", "--ledger", str(tmp_path / "l.sqlite"), "--config", str(cfg)]) == 0
    assert "daily budget (global): $1.00 of $2.00 (50.0%)" in capsys.readouterr().out


def test_judge_calls_respect_the_cost_cap() -> None:
    """A judge call that would break max_cost_usd is refused (a skip step) and fails closed."""
    data = config(ladder=["small"], evaluators=[{"type": "llm_judge", "model": "large"}])
    fake = FakeProvider("p", {"small": [make_completion("an answer", input_tokens=10,
                                                        output_tokens=2)],
                              "large": ["Score: 9/10"]})
    engine = Cascade.from_dict(data, providers={"p": fake}, ledger=False)
    cap = worst("small", "q", 100) + 1e-6  # room for the rung, not for a large-model judge
    result = engine.complete("t", "q", max_cost_usd=cap, max_tokens=100)
    assert [s.decision for s in result.steps] == ["escalate", "skip"]
    assert "max_cost_usd" in (result.steps[1].error or "")
    assert "judge call refused" in result.steps[0].verdicts[0].reason
    assert [c["model"] for c in fake.calls] == ["small"]
    assert result.cost_usd <= cap


def test_judge_calls_count_against_period_budgets(tmp_path: Path) -> None:
    """Judge spend is reserved and recorded like any rung's."""
    data = config(ladder=["small"], evaluators=[{"type": "llm_judge", "model": "large"}])
    data["budgets"] = {"daily_usd": 1.0}
    fake = FakeProvider("p", {"small": ["an answer"], "large": ["Score: 9/10"]})
    engine = Cascade.from_dict(data, providers={"p": fake}, ledger=Ledger(tmp_path / "l.db"))
    result = engine.complete("t", "q", max_tokens=50)
    assert [s.decision for s in result.steps] == ["accept", "judge"]
    assert engine.limits.guard is not None
    assert engine.limits.guard.status()[0]["spent_usd"] == pytest.approx(result.cost_usd)
    assert [engine.limits.guard.reserved(lim) for lim in engine.limits.guard.limits] == [0]
