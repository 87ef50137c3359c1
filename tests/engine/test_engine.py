"""The ladder: escalation, acceptance policies, exhaustion, failover, cost arithmetic."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cascade import (
    Cascade,
    CascadeExhausted,
    Completion,
    ConfigError,
    EvaluatorError,
    ProviderError,
    Request,
    Verdict,
)
from cascade.testing import FakeProvider, make_completion

PRICES = {"small": (1.0, 2.0), "medium": (3.0, 6.0), "large": (10.0, 30.0)}


def config(ladder: list[Any] | None = None, evaluators: list[Any] | None = None,
           **task: Any) -> dict[str, Any]:
    return {
        "providers": {"p": {"type": "openai"}},
        "models": {k: {"provider": "p", "name": k, "price": {"input": i, "output": o}}
                   for k, (i, o) in PRICES.items()},
        "retry": {"attempts": 2},
        "tasks": {"t": {"ladder": ladder or ["small", "medium", "large"],
                        "evaluators": evaluators if evaluators is not None
                        else [{"type": "length", "min_words": 3}], **task}},
    }


def engine(script: dict[str, list[Any]], **kwargs: Any) -> tuple[Cascade, FakeProvider]:
    fake = FakeProvider("p", script)
    return Cascade.from_dict(config(**kwargs), providers={"p": fake}, ledger=False,
                             sleep=lambda s: None), fake


def test_escalates_across_three_rungs() -> None:
    """Rejected answers climb the ladder until one passes; every step is in the trace."""
    cascade, fake = engine({"small": ["no"], "medium": ["nope"], "large": ["a full answer here"]})
    result = cascade.complete("t", "question?")
    assert result.text == "a full answer here"
    assert result.model == "large"
    assert result.accepted is True
    assert [s.decision for s in result.steps] == ["escalate", "escalate", "accept"]
    assert [s.model for s in result.steps] == ["small", "medium", "large"]
    assert [c["model"] for c in fake.calls] == ["small", "medium", "large"]
    assert result.steps[0].verdicts[0].passed is False
    assert "below the minimum 3" in result.steps[0].verdicts[0].reason


def test_first_rung_accepted_stops_there() -> None:
    """A passing first answer never calls the more expensive rungs."""
    cascade, fake = engine({"small": ["this is fine"], "medium": ["x"], "large": ["x"]})
    result = cascade.complete("t", "q")
    assert result.model == "small"
    assert len(fake.calls) == 1


def test_exact_cost_arithmetic() -> None:
    """Cost is tokens x price per 1M, summed over every step, rejected ones included."""
    cascade, _ = engine({
        "small": [make_completion("no", input_tokens=1000, output_tokens=500)],
        "medium": [make_completion("fine answer here", input_tokens=2000, output_tokens=100)],
        "large": ["unused"],
    })
    result = cascade.complete("t", "q")
    small = (1000 * 1.0 + 500 * 2.0) / 1e6
    medium = (2000 * 3.0 + 100 * 6.0) / 1e6
    assert result.steps[0].cost_usd == pytest.approx(small, abs=1e-15)
    assert result.steps[1].cost_usd == pytest.approx(medium, abs=1e-15)
    assert result.cost_usd == pytest.approx(small + medium, abs=1e-15)
    assert result.input_tokens == 3000
    assert result.output_tokens == 600


def test_cached_input_billed_at_cached_price() -> None:
    """Cached input tokens are billed at price.cached_input."""
    data = config(ladder=["small"], evaluators=[])
    data["models"]["small"]["price"]["cached_input"] = 0.1
    fake = FakeProvider("p", {"small": [make_completion(
        "ok", input_tokens=1000, cached_input_tokens=600, output_tokens=10)]})
    result = Cascade.from_dict(data, providers={"p": fake}, ledger=False).complete("t", "q")
    assert result.cost_usd == pytest.approx((400 * 1.0 + 600 * 0.1 + 10 * 2.0) / 1e6, abs=1e-15)


def test_no_evaluators_accepts() -> None:
    """A rung with no evaluators accepts its answer."""
    cascade, _ = engine({"small": ["x"]}, evaluators=[])
    result = cascade.complete("t", "q")
    assert (result.model, result.accepted) == ("small", True)


def test_return_last_when_exhausted() -> None:
    """When no rung passes, the last answer comes back with accepted False."""
    cascade, _ = engine({"small": ["a"], "medium": ["b"], "large": ["c"]})
    result = cascade.complete("t", "q")
    assert (result.text, result.model, result.accepted) == ("c", "large", False)
    assert [s.decision for s in result.steps] == ["escalate"] * 3


def test_raise_when_exhausted_carries_result() -> None:
    """on_exhausted: raise raises CascadeExhausted with the full result."""
    cascade, _ = engine({"small": ["a"], "medium": ["b"], "large": ["c"]}, on_exhausted="raise")
    with pytest.raises(CascadeExhausted) as info:
        cascade.complete("t", "q")
    assert info.value.result.text == "c"
    assert len(info.value.result.steps) == 3
    assert info.value.result.cost_usd > 0


def test_failover_on_provider_error() -> None:
    """A rung that fails records an error step and the ladder moves on."""
    boom = ProviderError("p: HTTP 500", provider="p", model="small", status_code=500,
                         retryable=True)
    cascade, fake = engine({"small": [boom], "medium": ["good answer here"], "large": ["x"]})
    result = cascade.complete("t", "q")
    assert result.model == "medium"
    assert result.steps[0].decision == "error"
    assert result.steps[0].attempts == 2
    assert result.steps[0].error == "p: HTTP 500"
    assert result.steps[0].cost_usd == 0.0
    assert [c["model"] for c in fake.calls] == ["small", "small", "medium"]


def test_return_last_skips_failed_rungs() -> None:
    """return_last returns the last answer obtained, not a failed rung's nothing."""
    boom = ProviderError("down", provider="p", model="large", status_code=503)
    cascade, _ = engine({"small": ["a"], "medium": ["b"], "large": [boom]})
    result = cascade.complete("t", "q")
    assert (result.text, result.model, result.accepted) == ("b", "medium", False)


def test_all_rungs_fail_raises_provider_error_with_result() -> None:
    """No answer at all raises ProviderError carrying the failed steps, never returns None."""
    boom = ProviderError("down", provider="p", model="x", status_code=503)
    cascade, _ = engine({"small": [boom], "medium": [boom], "large": [boom]})
    with pytest.raises(ProviderError, match="no rung produced an answer") as info:
        cascade.complete("t", "q")
    result = info.value.result
    assert result is not None
    assert [s.decision for s in result.steps] == ["error"] * 3


def test_accept_any() -> None:
    """accept: any passes when one evaluator passes."""
    evaluators = [{"type": "length", "min_words": 50}, {"type": "length", "max_words": 5}]
    cascade, _ = engine({"small": ["short one"]}, evaluators=evaluators, accept="any")
    assert cascade.complete("t", "q").model == "small"


def test_accept_all_short_circuits() -> None:
    """Under accept: all, later evaluators are not run once one fails."""
    evaluators = [{"type": "length", "min_words": 50}, {"type": "length", "max_words": 5}]
    cascade, _ = engine({"small": ["short one"], "medium": ["x"], "large": ["x"]},
                        evaluators=evaluators)
    assert len(cascade.complete("t", "q").steps[0].verdicts) == 1


def test_accept_min_score_weighted() -> None:
    """accept: {min_score} uses the weighted mean of evaluator scores."""
    evaluators = [{"type": "length", "min_words": 50, "weight": 1},
                  {"type": "length", "max_words": 5, "weight": 3}]
    cascade, _ = engine({"small": ["short one"]}, evaluators=evaluators,
                        accept={"min_score": 0.75})
    result = cascade.complete("t", "q")
    assert result.model == "small"  # (0*1 + 1*3) / 4 = 0.75
    assert len(result.steps[0].verdicts) == 2


def test_params_pass_through() -> None:
    """Keyword overrides reach the provider, over model and task params."""
    data = config(ladder=["small"], evaluators=[])
    data["models"]["small"]["params"] = {"max_tokens": 10, "temperature": 1.0}
    data["tasks"]["t"]["params"] = {"temperature": 0.5}
    fake = FakeProvider("p", {"small": ["ok"]})
    Cascade.from_dict(data, providers={"p": fake}, ledger=False).complete(
        "t", "q", max_tokens=99, top_p=0.9)
    assert fake.calls[0]["params"] == {"max_tokens": 99, "temperature": 0.5, "top_p": 0.9}


def test_messages_list_accepted() -> None:
    """An OpenAI-style messages list is sent as given."""
    cascade, fake = engine({"small": ["fine answer here"]})
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    cascade.complete("t", messages)
    assert fake.calls[0]["messages"] == messages


def test_unknown_task() -> None:
    """An unknown task name is a ConfigError listing the defined ones."""
    cascade, _ = engine({"small": ["x"]})
    with pytest.raises(ConfigError, match="unknown task 'nope' \\(defined: t\\)"):
        cascade.complete("nope", "q")


def crashing(request: Request, completion: Completion) -> Verdict:
    raise ZeroDivisionError("oops")


def wants_three_words(request: Request, completion: Completion) -> bool:
    return len(completion.text.split()) == 3


def test_evaluator_crash_is_evaluator_error() -> None:
    """A crashing evaluator surfaces as EvaluatorError, never as a rejection."""
    cascade, fake = engine({"small": ["x"], "medium": ["x"]},
                           evaluators=[{"type": "callable", "path": f"{__name__}:crashing"}])
    with pytest.raises(EvaluatorError, match="ZeroDivisionError: oops"):
        cascade.complete("t", "q")
    assert len(fake.calls) == 1


def test_callable_evaluator_returning_bool() -> None:
    """type: callable loads a plain function; a bool return is a verdict."""
    cascade, _ = engine({"small": ["two words"], "medium": ["now three words"]},
                        evaluators=[{"type": "callable", "path": f"{__name__}:wants_three_words"}])
    result = cascade.complete("t", "q")
    assert result.model == "medium"
    assert result.steps[0].verdicts[0] == Verdict("wants_three_words", False, 0.0)


def test_callable_path_errors() -> None:
    """A bad callable path is a ConfigError with its location."""
    with pytest.raises(ConfigError, match=r"tasks\.t\.evaluators\[0\]\.path"):
        engine({}, evaluators=[{"type": "callable", "path": "no.such.module:fn"}])


def test_async_matches_sync() -> None:
    """acomplete takes the same decisions as complete."""
    script = {"small": ["no"], "medium": ["fine answer here"], "large": ["x"]}
    cascade, _ = engine(script)
    sync = cascade.complete("t", "q")
    cascade, _ = engine(script)
    result = asyncio.run(cascade.acomplete("t", [{"role": "user", "content": "q"}]))
    assert (result.text, result.model, result.cost_usd) == (sync.text, sync.model, sync.cost_usd)
    assert [s.decision for s in result.steps] == [s.decision for s in sync.steps]


def test_history_visible_to_later_rungs() -> None:
    """Evaluators of a later rung see the earlier rungs' answers of the same run."""
    seen: list[tuple[str, ...]] = []

    def spy(request: Request, completion: Completion) -> bool:
        seen.append(tuple(c.text for c in request.history))
        return False

    global _spy
    _spy = spy
    cascade, _ = engine({"small": ["a"], "medium": ["b"], "large": ["c"]},
                        evaluators=[{"type": "callable", "path": f"{__name__}:_spy"}])
    cascade.complete("t", "q")
    assert seen == [(), ("a",), ("a", "b")]


_spy: Any = None


def test_other_evaluators_see_text_without_confidence_line() -> None:
    """json_schema on a self_confidence rung judges the answer without the confidence line."""
    evaluators = [{"type": "self_confidence", "min": 0.5},
                  {"type": "json_schema", "schema": {"type": "object", "required": ["a"]}}]
    cascade, _ = engine({"small": ['{"a": 1}\nConfidence: 0.9']}, evaluators=evaluators)
    result = cascade.complete("t", "q")
    assert result.model == "small"
    assert result.text == '{"a": 1}'
    assert result.json == {"a": 1}
