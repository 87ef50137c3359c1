"""Behaviour the suite did not pin down before issue 10: each test here fails when the line it
names is changed (the mutation is named in the docstring; see the closing note of issue 10)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from cascade import BudgetExceeded, Cascade, Completion, Ledger, ProviderError, Request, Verdict
from cascade.config import MinScore
from cascade.engine.breaker import CircuitBreaker
from cascade.evaluation import combine
from cascade.ledger.money import Accounts, Limit, period_start
from cascade.ledger.writer import flush_all
from cascade.testing import FakeProvider, MockLLMServer, Reply
from cascade.types import StepRecord
from evaluators.confidence import Logprob
from tests.conftest import live_config
from tests.engine.test_engine import config

# -- how verdicts combine -------------------------------------------------------------------------


def _verdict(passed: bool, score: float | None = None) -> Verdict:
    return Verdict("x", passed, score)


def test_accept_any_passes_when_one_evaluator_passes() -> None:
    """``accept: any`` takes an answer one evaluator rejects and another accepts (any -> all)."""
    fake = FakeProvider("p", {"small": ["Paris"], "medium": ["unused answer here"]})
    engine = Cascade.from_dict(
        config(evaluators=[{"type": "length", "min_words": 3}, {"type": "contains",
                                                                "any": ["Paris"]}],
               accept="any"),
        providers={"p": fake}, ledger=False)
    result = engine.complete("t", "capital of France?")
    assert (result.model, result.accepted) == ("small", True)
    assert [v.passed for v in result.steps[0].verdicts] == [False, True]


def test_min_score_is_inclusive() -> None:
    """A weighted mean exactly at ``min_score`` passes (>= -> >)."""
    assert combine(MinScore(min_score=0.5), [_verdict(False, 0.5)], [1.0])
    assert combine(MinScore(min_score=0.5), [_verdict(True, 1.0), _verdict(False, 0.0)],
                   [1.0, 1.0])
    assert not combine(MinScore(min_score=0.5), [_verdict(True, 0.49)], [1.0])


def test_zero_weights_fall_back_to_all_passed() -> None:
    """With every weight 0, min_score means "all evaluators passed" (the zero-weight fallback)."""
    assert combine(MinScore(min_score=0.9), [_verdict(True, 0.0), _verdict(True, 0.1)],
                   [0.0, 0.0])
    assert not combine(MinScore(min_score=0.1), [_verdict(True, 1.0), _verdict(False, 1.0)],
                       [0.0, 0.0])


calls: list[str] = []


def counting(request: Request, completion: Completion) -> Verdict:
    calls.append(completion.text)
    return Verdict("counting", True, 1.0)


def test_any_short_circuits_on_the_first_pass() -> None:
    """Under ``accept: any`` the evaluators after a passing one are not run (no short-circuit)."""
    calls.clear()
    fake = FakeProvider("p", {"small": ["a fine long answer"]})
    engine = Cascade.from_dict(
        config(evaluators=[{"type": "length", "min_words": 3},
                           {"type": "callable", "path": "tests.engine.test_gaps:counting"}],
               accept="any"),
        providers={"p": fake}, ledger=False)
    result = engine.complete("t", "q")
    assert result.accepted
    assert calls == []
    assert len(result.steps[0].verdicts) == 1


# -- circuit breaker ------------------------------------------------------------------------------


def test_client_errors_do_not_trip_the_breaker() -> None:
    """A 400 or 404 says nothing about the provider: the circuit stays closed."""
    data = config(ladder=["small", "medium"])
    data["providers"]["p"]["circuit_breaker"] = {"failures": 1, "cooldown_s": 60}
    refused = ProviderError("bad request", provider="p", model="small", status_code=400)
    fake = FakeProvider("p", {"small": [refused, refused, "a fine long answer"],
                              "medium": ["another long answer"]})
    engine = Cascade.from_dict(data, providers={"p": fake}, ledger=False, sleep=lambda s: None)
    for _ in range(2):
        engine.complete("t", "q")
    assert engine.limits.breakers["p"].open_for() is None
    assert engine.complete("t", "q").model == "small"  # small was not skipped


def test_half_open_breaker_reopens_on_the_first_failure() -> None:
    """After the cool-down one failure reopens the circuit at once (half-open)."""
    now = [1000.0]
    breaker = CircuitBreaker(failures=3, cooldown_s=10, clock=lambda: now[0])
    assert [breaker.failure() for _ in range(3)] == [False, False, True]
    assert breaker.open_for() == pytest.approx(10)
    now[0] += 11
    assert breaker.open_for() is None  # half-open: a call may go through
    assert breaker.failure() is True  # ... and its failure reopens the circuit
    assert breaker.open_for() == pytest.approx(10)
    now[0] += 11
    breaker.success()
    assert [breaker.failure() for _ in range(2)] == [False, False]  # closed again: 3 needed


# -- billing of failed attempts -------------------------------------------------------------------


@pytest.mark.usefixtures("keys")
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_billed_failed_attempts_are_kept_on_the_sdk_path(server: MockLLMServer,
                                                         mode: str) -> None:
    """An empty 200 that reports usage is billed, every attempt of it (dropping them: $0)."""
    server.script("gpt-4o-mini", [Reply("", input_tokens=1000, output_tokens=500)])
    server.script("claude-sonnet-4-6", ["the answer from the next rung"])
    engine = Cascade.from_dict(live_config(server, attempts=3), ledger=False,
                               sleep=lambda s: None)

    async def run() -> Any:
        try:
            return await engine.acomplete("faq", "q")
        finally:
            await engine.aclose()

    result = engine.complete("faq", "q") if mode == "sync" else asyncio.run(run())
    step = result.steps[0]
    assert (step.decision, step.attempts) == ("error", 2)  # a malformed reply is tried twice
    assert (step.input_tokens, step.output_tokens) == (2000, 1000)
    assert step.cost_usd == pytest.approx(2 * (1000 * 0.15 + 500 * 0.60) / 1e6)


# -- budgets --------------------------------------------------------------------------------------


def test_period_start_daily_and_monthly() -> None:
    """Daily budgets restart at UTC midnight, monthly ones on the 1st (daily <-> monthly)."""
    now = datetime(2026, 3, 15, 13, 45, 10, tzinfo=timezone.utc).timestamp()
    assert period_start("daily", now) == datetime(2026, 3, 15, tzinfo=timezone.utc).timestamp()
    assert period_start("monthly", now) == datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp()


def test_spent_counts_the_period_of_an_injected_clock(tmp_path: Path) -> None:
    """spent() reads the totals of the day or month that ``now`` falls in."""
    ledger = Ledger(tmp_path / "l.sqlite")
    day = datetime(2026, 3, 15, 12, tzinfo=timezone.utc).timestamp()
    for ts, cost in ((day, 1.0), (day - 86400, 2.0), (day - 40 * 86400, 4.0)):
        ledger.record_step(StepRecord("r", "t", 1, "m", "p", 1, 0, 0, cost, 0.0, "accept", ts=ts))
    accounts = Accounts(ledger, [])
    assert accounts.spent(Limit("global", "daily", 10), now=day) == 1.0
    assert accounts.spent(Limit("global", "monthly", 10), now=day) == 3.0
    assert accounts.spent(Limit("t", "monthly", 10), now=day) == 3.0
    assert accounts.spent(Limit("other", "monthly", 10), now=day) == 0.0
    ledger.close()


def test_budget_may_be_spent_to_the_cent(tmp_path: Path) -> None:
    """A worst case that lands exactly on the limit is allowed (> -> >=)."""
    ledger = Ledger(tmp_path / "l.sqlite")
    limit = Limit("global", "daily", 1.0)
    accounts = Accounts(ledger, [limit])

    def reserve(step: int, amount: float) -> tuple[Any, Any]:
        return accounts.reserve(run_id="r", task="t", step=step, model_key="m", provider="p",
                                estimate=amount, spent=0.0, cap=None)

    hold, refused = reserve(1, 1.0)
    assert hold is not None
    assert refused is None
    _, refused = reserve(2, 0.5)
    assert refused is not None
    assert refused.limit_usd == 1.0
    assert "> $1.000000" in refused.reason
    ledger.close()


def test_request_cap_may_be_spent_to_the_cent() -> None:
    """A rung whose worst case equals max_cost_usd is called."""
    fake = FakeProvider("p", {"small": ["a fine long answer"]})
    probe = Cascade.from_dict(config(), providers={"p": fake}, ledger=False)
    gate = probe.limits.check("t", "p", "small", ({"role": "user", "content": "q"},),
                              {"max_tokens": 100}, 0.0, None)
    exact = gate.estimate  # no cap: the estimate is computed but nothing refused
    capped = probe.limits.check("t", "p", "small", ({"role": "user", "content": "q"},),
                                {"max_tokens": 100}, 0.0, 0.0)
    assert capped.skipped
    exact = capped.estimate
    result = probe.complete("t", "q", max_tokens=100, max_cost_usd=exact)
    assert (result.model, result.steps[0].decision) == ("small", "accept")


def test_budget_refusal_is_recorded_as_status_budget(tmp_path: Path) -> None:
    """A run no rung could afford is a runs row with status 'budget'."""
    fake = FakeProvider("p", {"small": ["never called"]})
    engine = Cascade.from_dict(config(max_cost_usd=1e-9), providers={"p": fake},
                               ledger=Ledger(tmp_path / "l.sqlite"))
    with pytest.raises(BudgetExceeded) as info:
        engine.complete("t", "q")
    engine.close()
    flush_all()  # rows the ledger's writer thread has queued
    with sqlite3.connect(tmp_path / "l.sqlite") as db:
        rows = db.execute("SELECT status, steps FROM runs WHERE run_id = ?",
                          (info.value.result.run_id,)).fetchall()  # type: ignore[union-attr]
    assert rows == [("budget", 3)]
    assert fake.calls == []


# -- cache ----------------------------------------------------------------------------------------


def test_cache_hit_made_no_attempt(tmp_path: Path) -> None:
    """A cache hit's step says 0 attempts: nothing was called."""
    data = config()
    data["cache"] = {"path": str(tmp_path / "cache.sqlite")}
    data["tasks"]["t"]["cache"] = {"ttl_s": 60}
    fake = FakeProvider("p", {"small": ["a fine long answer"]})
    engine = Cascade.from_dict(data, providers={"p": fake}, ledger=Ledger(tmp_path / "l.sqlite"))
    engine.complete("t", "same")
    hit = engine.complete("t", "same")
    engine.close()
    assert [(s.decision, s.attempts) for s in hit.steps] == [("cache", 0)]
    flush_all()  # rows the ledger's writer thread has queued
    with sqlite3.connect(tmp_path / "l.sqlite") as db:
        assert db.execute("SELECT attempts FROM steps WHERE run_id = ?",
                          (hit.run_id,)).fetchall() == [(0,)]


# -- evaluators -----------------------------------------------------------------------------------


def test_positive_logprob_counts_as_certainty() -> None:
    """A positive mean log-probability (provider rounding) is probability 1, not e**x."""
    evaluator = Logprob(Logprob.Config(min=0.5), None)  # type: ignore[arg-type]
    verdict = evaluator(Request("t", ()), Completion("yes", logprobs=(0.4, 0.2)))
    assert verdict.passed
    assert verdict.score == 1.0


# -- bench ----------------------------------------------------------------------------------------


def _bench(tmp_path: Path, rows: list[dict[str, Any]], ladder: list[Any]) -> dict[str, Any]:
    import yaml

    from cascade.providers.dataset import ReplayRecord, write_dataset
    from cascade.replay.bench import run_bench

    data = {
        "providers": {"rec": {"type": "replay"}},
        "models": {k: {"provider": "rec", "name": f"model-{k}",
                       "price": {"input": 1, "output": 1}} for k in "abc"},
        "tasks": {"qa": {"ladder": ladder, "evaluators": [{"type": "length", "min_words": 3}]}},
    }
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(data))
    dataset = tmp_path / "data.jsonl"
    write_dataset(dataset, [ReplayRecord.model_validate(r) for r in rows])
    report: dict[str, Any] = run_bench(config, dataset).as_json()["tasks"]["qa"]
    return report


def _row(rid: str, **answers: str) -> dict[str, Any]:
    return {"id": rid, "task": "qa", "messages": [{"role": "user", "content": f"question {rid}"}],
            "responses": {f"model-{k}": {"text": text, "score": 1.0, "cost_usd": 0.001}
                          for k, text in answers.items()}}


def test_bench_unaccepted_share_leaves_out_queries_nobody_answered(tmp_path: Path) -> None:
    """A query no rung answered is ``failed``, not "answered but not accepted"."""
    report = _bench(tmp_path, [
        _row("q1", a="no", c="nope"),                 # answered by c, never accepted
        _row("q2", z="recorded for no rung"),         # nobody answered: failed
        _row("q3", a="a good answer here"),           # accepted at a
    ], ["a", "b", "c"])
    assert report["failed"] == 1
    assert report["unaccepted_share"] == pytest.approx(1 / 3)


def test_bench_depth_ignores_judge_steps(tmp_path: Path) -> None:
    """A judge call to the top model is not an escalation to it."""
    judged = {"model": "a", "evaluators": [{"type": "llm_judge", "model": "c", "min_score": 7}]}
    report = _bench(tmp_path, [_row("q1", a="a good answer here", c="Score: 9")],
                    [judged, "b", "c"])
    assert report["accepted_share"] == [1.0, 0.0, 0.0]
    assert report["escalation_rate"] == [0.0, 0.0]


# -- calibrate ------------------------------------------------------------------------------------


def test_calibrate_target_met_tolerates_float_rounding(tmp_path: Path) -> None:
    """9/13 is exactly 90% of 10/13, though 0.9 * (10/13) rounds above 9/13 in floats."""
    import yaml

    import cascade.calibration.calibrate as calibration
    from cascade.config import load_config
    from cascade.providers.dataset import ReplayRecord

    records = [
        ReplayRecord.model_validate({
            "id": f"q{i}", "task": "t", "messages": [{"role": "user", "content": f"q{i}"}],
            "responses": {"small": {"text": "s", "score": float(i < 9), "cost_usd": 1e-5},
                          "large": {"text": "l", "score": float(i < 10), "cost_usd": 1e-3}}})
        for i in range(13)]
    raw = {"providers": {"rec": {"type": "replay"}},
           "models": {k: {"provider": "rec", "name": k, "price": {"input": 1, "output": 2}}
                      for k in ("small", "large")},
           "ledger": {"path": None},
           "tasks": {"t": {"ladder": ["small", "large"], "evaluators": []}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    report = calibration._replayed(load_config(path), raw, records, "t", 0.9, lambda s: None,
                                   "test")
    assert report["quality"] == 9 / 13
    assert report["quality"] < 0.9 * report["baselines"]["always_top"]["quality"]  # in floats
    assert report["target_met"] is True


# -- gateway --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("keys")
def test_gateway_prefers_a_task_over_a_model_of_the_same_name(server: MockLLMServer,
                                                              tmp_path: Path) -> None:
    """``model: mini`` runs task ``mini`` (with its evaluators) when a task has that name."""
    import openai

    from cascade.gateway.app import create_app, running

    data = live_config(server, ledger=str(tmp_path / "l.sqlite"))
    data["tasks"]["mini"] = data["tasks"].pop("faq")  # ladder mini -> sonnet, length >= 3 words
    server.script("gpt-4o-mini", ["short"])
    server.script("claude-sonnet-4-6", ["a long enough answer"])
    engine = Cascade.from_dict(data, sleep=lambda s: None)
    try:
        with running(create_app(engine)) as url, openai.OpenAI(
                base_url=f"{url}/v1", api_key="unused") as api:
            raw = api.chat.completions.with_raw_response.create(
                model="mini", messages=[{"role": "user", "content": "q"}])
    finally:
        engine.close()
    assert (raw.headers["x-cascade-model"], raw.headers["x-cascade-steps"]) == ("sonnet", "2")
    flush_all()  # rows the ledger's writer thread has queued
    with sqlite3.connect(tmp_path / "l.sqlite") as db:
        assert db.execute("SELECT DISTINCT task FROM steps").fetchall() == [("mini",)]
