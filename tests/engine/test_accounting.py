"""No spend goes missing and no reservation leaks, whatever way a run ends."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cascade import Cascade, Completion, EvaluatorError, Ledger, ProviderError, Request
from cascade.replay.report import ledger_report
from cascade.testing import FakeProvider, make_completion
from tests.engine.test_engine import config


def explode(request: Request, completion: Completion) -> bool:
    raise RuntimeError("bug in my evaluator")


def test_evaluator_crash_keeps_the_paid_step(tmp_path: Path) -> None:
    """A crashing evaluator still leaves the answer's step (and its cost) in the ledger."""
    data = config(evaluators=[{"type": "callable", "path": f"{__name__}:explode"}])
    fake = FakeProvider("p", {"small": [make_completion("x", input_tokens=10**6)]})
    engine = Cascade.from_dict(data, providers={"p": fake}, ledger=Ledger(tmp_path / "l.db"))
    with pytest.raises(EvaluatorError):
        engine.complete("t", "q")
    engine.close()
    with sqlite3.connect(tmp_path / "l.db") as conn:
        steps = conn.execute("SELECT decision, cost_usd, error FROM steps").fetchall()
        runs = conn.execute("SELECT cost_usd, status FROM runs").fetchall()
    assert steps == [("error", pytest.approx(1.000002), "evaluation failed: evaluator "
                      "'explode' crashed: RuntimeError: bug in my evaluator")]
    assert runs == [(pytest.approx(1.000002), "error: EvaluatorError")]


def test_cancelled_run_releases_its_reservation(tmp_path: Path) -> None:
    """A request cancelled mid-call (timeout, disconnect) frees its budget reservation at once."""

    class Slow(FakeProvider):
        async def acomplete(self, *args: Any, **kwargs: Any) -> Completion:
            await asyncio.sleep(10)
            return self.complete(*args, **kwargs)

    data = config(ladder=["large"], evaluators=[])
    data["budgets"] = {"daily_usd": 1.0}
    engine = Cascade.from_dict(data, providers={"p": Slow("p", {"large": ["ok"]})},
                               ledger=Ledger(tmp_path / "l.db"))
    guard = engine.limits.guard
    assert guard is not None

    async def main() -> float:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine.acomplete("t", "q", max_tokens=1000), 0.05)
        return guard.reserved(guard.limits[0])

    assert asyncio.run(main()) == 0


def test_judge_sees_the_cost_of_the_answer_it_judges() -> None:
    """The cap counts the answer under evaluation when deciding whether the judge may run."""
    data = config(ladder=["large"], evaluators=[{"type": "llm_judge", "model": "small"}])
    fake = FakeProvider("p", {"large": [make_completion("an answer", input_tokens=300,
                                                        output_tokens=100)],
                              "small": ["Score: 9/10"]})
    engine = Cascade.from_dict(data, providers={"p": fake}, ledger=False)
    answer = (300 * 10 + 100 * 30) / 1e6  # $0.006 for the large model's answer
    cap = answer + 0.0001  # the judge's worst case at max_tokens=100 no longer fits
    result = engine.complete("t", "q", max_cost_usd=cap, max_tokens=100)
    assert [s.decision for s in result.steps] == ["escalate", "skip"]
    assert result.cost_usd <= cap


def test_client_errors_do_not_trip_the_breaker() -> None:
    """400s (a user's too-long prompt) never take a provider out of service."""
    too_long = ProviderError("HTTP 400 context length", provider="p", model="small",
                             status_code=400)
    data = config(ladder=["small", "large"], evaluators=[])
    data["providers"]["p"]["circuit_breaker"] = {"failures": 2, "cooldown_s": 60}
    fake = FakeProvider("p", {"small": [too_long, too_long, too_long, "fine"],
                              "large": ["big answer"]})
    engine = Cascade.from_dict(data, providers={"p": fake}, ledger=False)
    for _ in range(3):
        engine.complete("t", "q")
    assert engine.complete("t", "q").model == "small"


def test_circuit_opening_mid_step_keeps_the_real_error() -> None:
    """When the breaker opens during a step's retries, attempts and error tell what happened."""
    boom = ProviderError("HTTP 503", provider="p", model="small", status_code=503,
                         retryable=True)
    data = config(ladder=["small", "large"], evaluators=[])
    data["providers"]["p"]["circuit_breaker"] = {"failures": 2, "cooldown_s": 60}
    data["retry"] = {"attempts": 4}
    fake = FakeProvider("p", {"small": [boom], "large": [boom]})
    engine = Cascade.from_dict(data, providers={"p": fake}, ledger=False, sleep=lambda s: None)
    with pytest.raises(ProviderError) as info:
        engine.complete("t", "q")
    assert info.value.result is not None
    first = info.value.result.steps[0]
    assert (first.attempts, first.error) == (2, "HTTP 503")
    assert len(fake.calls) == 2


def test_cache_key_covers_model_definitions(tmp_path: Path) -> None:
    """Changing a model's name or params does not serve the answer cached under the old one."""
    data = config(ladder=["small"], evaluators=[])
    data["cache"] = {"path": str(tmp_path / "cache.db")}
    data["tasks"]["t"]["cache"] = {"ttl_s": 600}
    Cascade.from_dict(data, providers={"p": FakeProvider("p", {"small": ["old"]})},
                      ledger=False).complete("t", "q")
    data["models"]["small"]["params"] = {"temperature": 0}
    fresh = FakeProvider("p", {"small": ["new"]})
    result = Cascade.from_dict(data, providers={"p": fresh}, ledger=False).complete("t", "q")
    assert (result.text, result.cached) == ("new", False)


def test_report_counts_skips_and_cache_hits_honestly(tmp_path: Path) -> None:
    """A skipped rung counts as an escalation; skips and cache hits are not provider calls."""
    data = config(ladder=["small", "large"], evaluators=[])
    data["cache"] = {"path": str(tmp_path / "cache.db")}
    data["tasks"]["t"]["cache"] = {"ttl_s": 600}
    engine = Cascade.from_dict(data, providers={"p": FakeProvider("p", {"small": ["a"]})},
                               ledger=Ledger(tmp_path / "l.db"))
    engine.complete("t", "q")
    engine.complete("t", "q")  # cache hit
    report = ledger_report(Ledger(tmp_path / "l.db"))["tasks"]["t"]
    assert report["models"]["small"]["calls"] == 1
    capped = Cascade.from_dict(config(ladder=["large", "small"], evaluators=[]),
                               providers={"p": FakeProvider("p", {"small": ["a"]})},
                               ledger=Ledger(tmp_path / "m.db"))
    capped.complete("t", "q", max_cost_usd=0.001, max_tokens=100)  # large skipped
    report = ledger_report(Ledger(tmp_path / "m.db"))["tasks"]["t"]
    assert report["escalation_rate"] == 1.0
    assert report["models"]["large"]["calls"] == 0


@pytest.mark.parametrize("bad", [{"weight": float("nan")},
                                 {"price": {"input": float("inf"), "output": 1}}])
def test_non_finite_numbers_are_config_errors(bad: dict[str, Any]) -> None:
    """NaN weights and infinite prices are refused at load time."""
    from cascade import ConfigError

    data = config()
    if "weight" in bad:
        data["tasks"]["t"]["evaluators"][0]["weight"] = bad["weight"]
    else:
        data["models"]["small"]["price"] = bad["price"]
    with pytest.raises(ConfigError):
        Cascade.from_dict(data, providers={"p": FakeProvider("p", {})}, ledger=False)


def test_report_on_a_file_that_is_not_a_ledger(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A corrupt or foreign file is one line and exit 2, not a traceback."""
    from cascade.cli import main

    bad = tmp_path / "notdb.sqlite"
    bad.write_text("this is not sqlite" * 100)
    assert main(["report", "--ledger", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: not a cascade ledger")
    assert err.count("\n") == 1


def test_agreement_compares_answers_without_confidence_lines() -> None:
    """Later rungs compare with what an earlier rung said, not with its confidence line."""
    data = config(ladder=["small", "medium"], evaluators=[])
    data["tasks"]["t"]["ladder"] = [
        {"model": "small", "evaluators": [{"type": "self_confidence", "min": 0.9}]},
        {"model": "medium", "evaluators": [{"type": "agreement", "recipe": "final_number",
                                            "min_agree": 1.0}]},
    ]
    fake = FakeProvider("p", {"small": ["It is 42.\nConfidence: 0.4"], "medium": ["42"]})
    result = Cascade.from_dict(data, providers={"p": fake}, ledger=False).complete("t", "q")
    assert (result.model, result.accepted) == ("medium", True)


def test_empty_reply_is_billed_on_its_error_step(tmp_path: Path) -> None:
    """A 200 with an empty answer is an error step that still carries what it was billed."""
    from cascade.providers.dataset import ReplayRecord
    from cascade.providers.replay import ReplayProvider

    record = ReplayRecord.model_validate({
        "id": "q", "messages": [{"role": "user", "content": "x"}],
        "responses": {"small": {"text": "  ", "score": 0.0, "cost_usd": 0.25},
                      "large": {"text": "a good answer", "score": 1.0, "cost_usd": 1.0}}})
    data = config(ladder=["small", "large"], evaluators=[])
    data["providers"]["p"] = {"type": "replay"}
    engine = Cascade.from_dict(data, providers={"p": ReplayProvider("p", records=[record])},
                               ledger=False)
    result = engine.complete("t", "x", query_id="q")
    assert [(s.decision, s.cost_usd) for s in result.steps] == [("error", 0.25), ("accept", 1.0)]
    assert result.cost_usd == 1.25
