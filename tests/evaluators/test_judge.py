"""llm_judge: a model grades the answer; its call is a priced, recorded step of the run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from cascade import Cascade, ConfigError, Ledger, ProviderError
from cascade.testing import FakeProvider, MockLLMServer, Reply
from evaluators.judge import DEFAULT_RUBRIC, parse_score

PRICES = {"small": (1.0, 2.0), "big": (3.0, 6.0), "judge": (10.0, 30.0)}


def config(evaluators: list[dict[str, Any]], judge_provider: str = "p",
           **task: Any) -> dict[str, Any]:
    return {
        "providers": {"p": {"type": "openai"}, "a": {"type": "anthropic"}},
        "models": {k: {"provider": judge_provider if k == "judge" else "p", "name": k,
                       "price": {"input": i, "output": o}} for k, (i, o) in PRICES.items()},
        "retry": {"attempts": 2},
        "tasks": {"t": {"ladder": ["small", "big"], "evaluators": evaluators, **task}},
    }


def judge(**settings: Any) -> dict[str, Any]:
    return {"type": "llm_judge", "model": "judge", **settings}


def engine(script: dict[str, list[Any]], evaluators: list[dict[str, Any]] | None = None,
           judge_provider: str = "p", **task: Any) -> tuple[Cascade, FakeProvider]:
    fake = FakeProvider("p", script)
    data = config(evaluators if evaluators is not None else [judge()], judge_provider, **task)
    cascade = Cascade.from_dict(data, providers={"p": fake, "a": fake}, ledger=False,
                                sleep=lambda s: None)
    return cascade, fake


def config_error(spec: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(config([spec]), providers={"p": FakeProvider("p")}, ledger=False)
    return info.value


def judge_calls(fake: FakeProvider) -> list[dict[str, Any]]:
    return [c for c in fake.calls if c["model"] == "judge"]


# -- verdicts -------------------------------------------------------------------------------------


def test_score_8_of_10_passes() -> None:
    """Adversarial: a judge replying ``Score: 8/10`` passes at min_score 7 with score 0.8."""
    cascade, _ = engine({"small": ["Paris."], "judge": ["Score: 8/10"]})
    result = cascade.complete("t", "Capital of France?")
    verdict = result.steps[0].verdicts[0]
    assert result.model == "small"
    assert verdict.passed is True
    assert verdict.score == pytest.approx(0.8)
    assert verdict.reason.startswith("judge scored 8/10")


def test_number_word_eight_passes() -> None:
    """Adversarial: a judge replying only ``eight`` is read as 8."""
    cascade, _ = engine({"small": ["Paris."], "judge": ["eight"]})
    verdict = cascade.complete("t", "q").steps[0].verdicts[0]
    assert verdict.passed is True
    assert verdict.score == pytest.approx(0.8)


def test_json_reply_gives_score_and_reason() -> None:
    """A JSON object reply supplies both the score and the judge's reason."""
    reply = json.dumps({"score": 4, "reason": "It names the wrong city."})
    cascade, _ = engine({"small": ["Lyon."], "big": ["Paris."], "judge": [reply, '{"score": 9}']})
    result = cascade.complete("t", "q")
    first = result.steps[0].verdicts[0]
    assert first.passed is False
    assert first.score == pytest.approx(0.4)
    assert "below the minimum 7" in first.reason
    assert "It names the wrong city." in first.reason
    assert result.model == "big"


def test_nonsense_reply_fails_closed() -> None:
    """Adversarial: an unreadable judge reply rejects the answer by default."""
    cascade, _ = engine({"small": ["Paris."], "big": ["Paris."], "judge": ["I like turtles."]})
    verdict = cascade.complete("t", "q").steps[0].verdicts[0]
    assert verdict.passed is False
    assert verdict.score is None
    assert verdict.reason.startswith("judge reply unparseable: ")
    assert "turtles" in verdict.reason


def test_nonsense_reply_fails_open_when_asked() -> None:
    """With ``fail_closed: false`` an unreadable reply lets the answer through, saying why."""
    cascade, _ = engine({"small": ["Paris."], "judge": ["I like turtles."]},
                        [judge(fail_closed=False)])
    result = cascade.complete("t", "q")
    assert result.model == "small"
    assert result.steps[0].verdicts[0].reason.startswith("judge reply unparseable: ")


def test_provider_error_fails_closed() -> None:
    """A judge call that fails rejects the answer with 'judge failed: ...', not an exception."""
    boom = ProviderError("judge backend down", provider="p", model="judge", status_code=400)
    cascade, _ = engine({"small": ["Paris."], "big": ["Paris."], "judge": [boom]})
    result = cascade.complete("t", "q")
    verdict = result.steps[0].verdicts[0]
    assert verdict.passed is False
    assert verdict.reason == "judge failed: judge backend down"
    judge_steps = [s for s in result.steps if s.decision == "judge"]
    assert judge_steps[0].error == "judge backend down"


def test_provider_error_fails_open_when_asked() -> None:
    """With ``fail_closed: false`` a failing judge accepts the answer."""
    boom = ProviderError("judge backend down", provider="p", model="judge", status_code=400)
    cascade, _ = engine({"small": ["Paris."], "judge": [boom]}, [judge(fail_closed=False)])
    result = cascade.complete("t", "q")
    assert result.accepted is True
    assert result.steps[0].verdicts[0].reason.startswith("judge failed: judge backend down")


def test_missing_judge_api_key_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ConfigError from the judge's provider (no API key) is raised, not swallowed."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    fake = FakeProvider("p", {"small": ["Paris."]})
    data = config([judge()])
    data["providers"]["j"] = {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}
    data["models"]["judge"]["provider"] = "j"
    cascade = Cascade.from_dict(data, providers={"p": fake}, ledger=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        cascade.complete("t", "q")


def test_min_score_threshold_is_inclusive() -> None:
    """A grade equal to min_score passes; one below fails."""
    cascade, _ = engine({"small": ["Paris."], "big": ["Paris."], "judge": ["Score: 6", "7"]},
                        [judge(min_score=7)])
    result = cascade.complete("t", "q")
    assert [s.verdicts[0].passed for s in result.steps if s.decision != "judge"] == [False, True]


@pytest.mark.parametrize("text", ["", "  \n\t "], ids=["empty", "whitespace"])
def test_empty_answer_fails_without_calling_the_judge(text: str) -> None:
    """An empty or whitespace answer is rejected for free: the judge is not called."""
    cascade, fake = engine({"small": [text], "big": [text], "judge": ["10"]})
    result = cascade.complete("t", "q")
    assert result.steps[0].verdicts[0].reason == "empty answer"
    assert judge_calls(fake) == []


def test_judge_is_skipped_when_a_cheaper_evaluator_already_failed() -> None:
    """Under accept: all the judge (cost 100) runs last and is never called after a failure."""
    cascade, fake = engine({"small": ["no"], "big": ["a long enough answer"], "judge": ["9"]},
                           [judge(), {"type": "length", "min_words": 3}])
    result = cascade.complete("t", "q")
    assert [c["model"] for c in fake.calls] == ["small", "big", "judge"]
    assert [v.evaluator for v in result.steps[0].verdicts] == ["length"]
    assert result.model == "big"


def test_async_path_uses_the_judge_and_records_its_step() -> None:
    """``acomplete`` calls the judge through ``acall`` and records a judge step."""
    cascade, fake = engine({"small": ["Paris."], "judge": ["Score: 9"]})
    result = asyncio.run(cascade.acomplete("t", "q"))
    assert result.accepted is True
    assert [s.decision for s in result.steps] == ["accept", "judge"]
    assert len(judge_calls(fake)) == 1


# -- what the judge is sent -----------------------------------------------------------------------


def test_judge_sees_request_and_answer_with_the_default_rubric() -> None:
    """The judge gets the rubric as system message and the request and answer as data."""
    cascade, fake = engine({"small": ["Paris."], "judge": ["9"]})
    cascade.complete("t", "Capital of France?")
    system, user = judge_calls(fake)[0]["messages"]
    assert DEFAULT_RUBRIC in system["content"]
    assert '"score"' in system["content"]
    assert "<request>\nCapital of France?\n</request>" in user["content"]
    assert "<answer>\nParis.\n</answer>" in user["content"]


def test_custom_rubric_replaces_the_default() -> None:
    """``rubric:`` text is what the judge grades against."""
    cascade, fake = engine({"small": ["Paris."], "judge": ["9"]},
                           [judge(rubric="Only check that the answer is one word.")])
    cascade.complete("t", "q")
    system = judge_calls(fake)[0]["messages"][0]["content"]
    assert "Only check that the answer is one word." in system
    assert DEFAULT_RUBRIC not in system


def test_openai_judge_asks_for_a_json_object() -> None:
    """An openai-type judge gets ``response_format: json_object`` plus the default params."""
    cascade, fake = engine({"small": ["Paris."], "judge": ["9"]})
    cascade.complete("t", "q")
    assert judge_calls(fake)[0]["params"] == {
        "temperature": 0, "max_tokens": 200, "response_format": {"type": "json_object"}}


def test_anthropic_judge_gets_no_response_format() -> None:
    """A judge on another provider type gets JSON asked for in the prompt only."""
    cascade, fake = engine({"small": ["Paris."], "judge": ["9"]}, judge_provider="a")
    cascade.complete("t", "q")
    assert "response_format" not in judge_calls(fake)[0]["params"]


def test_params_replace_the_defaults_and_null_drops_a_key() -> None:
    """``params:`` replaces the defaults; ``response_format: null`` turns JSON mode off."""
    cascade, fake = engine({"small": ["Paris."], "judge": ["9"]},
                           [judge(params={"max_tokens": 50, "response_format": None})])
    cascade.complete("t", "q")
    assert judge_calls(fake)[0]["params"] == {"max_tokens": 50}


def test_judge_never_sees_earlier_rungs_answers() -> None:
    """The judge of rung 2 is sent rung 2's answer only."""
    cascade, fake = engine({"small": ["Lyon."], "big": ["Paris."], "judge": ["2", "9"]})
    cascade.complete("t", "q")
    second = judge_calls(fake)[1]["messages"][1]["content"]
    assert "Paris." in second
    assert "Lyon." not in second


# -- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "score"), [
    ("Score: 8/10", 8),
    ("eight", 8),
    ("Eight.", 8),
    ("8", 8),
    ("Rating: 8", 8),
    ("**Score:** 7", 7),
    ("I give it 6 out of 10.", 6),
    ("Score: 85/100", 8.5),
    ('{"score": 9, "reason": "fine"}', 9),
    ('Sure!\n```json\n{"score": 3, "reason": "wrong"}\n```', 3),
    ('My verdict: {"rating": "7/10", "explanation": "ok"} thanks', 7),
    ("The grade 3 reader would cope. Score: 8", 8),
    ("Score: ten", 10),
])
def test_lenient_score_parsing(reply: str, score: float) -> None:
    """JSON (bare, fenced or in prose), labels, fractions, bare numbers and number words."""
    assert parse_score(reply)[0] == pytest.approx(score)


@pytest.mark.parametrize("reply", ["nonsense", "", "Score: tenacious", '{"score": 85}',
                                   "score of 11", '{"score": true}', "{" * 100_000])
def test_unreadable_scores_are_none(reply: str) -> None:
    """Garbage, out-of-range scores and runaway braces give no score."""
    assert parse_score(reply)[0] is None


# -- configuration --------------------------------------------------------------------------------


def test_unknown_judge_model_is_a_config_error() -> None:
    """A ``model`` that is not a ``models:`` key fails at load time, naming the key."""
    error = config_error(judge(model="gpt-9"))
    assert error.location == "tasks.t.evaluators[0].model"
    assert "'gpt-9'" in error.message


def test_judge_model_is_required() -> None:
    """Without ``model`` there is no judge."""
    error = config_error({"type": "llm_judge"})
    assert error.location == "tasks.t.evaluators[0].model"


@pytest.mark.parametrize("value", [0, 11])
def test_min_score_outside_one_to_ten(value: float) -> None:
    """``min_score`` is on the judge's 1..10 scale."""
    assert config_error(judge(min_score=value)).location == "tasks.t.evaluators[0].min_score"


def test_empty_rubric_is_rejected() -> None:
    """A blank rubric is a mistake, not a request for the default."""
    assert config_error(judge(rubric="  ")).location == "tasks.t.evaluators[0].rubric"


def test_unknown_judge_key() -> None:
    """A typo fails at load time with the key path."""
    assert config_error(judge(min_scor=5)).location == "tasks.t.evaluators[0].min_scor"


# -- end to end through the OpenAI SDK, priced and recorded ---------------------------------------


def test_judge_steps_are_priced_and_recorded_end_to_end(
        server: MockLLMServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Real SDK over loopback: judge rejects rung 1, accepts rung 2; every step is in the ledger."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fake-key")
    server.script("m-small", [Reply(text="Paris is in Germany.", input_tokens=1000,
                                    output_tokens=500)])
    server.script("m-big", [Reply(text="Paris is in France.", input_tokens=2000,
                                  output_tokens=250)])
    server.script("m-judge", [
        Reply(text='{"score": 2, "reason": "Wrong country."}', input_tokens=4000,
              output_tokens=100),
        Reply(text='{"score": 9, "reason": "Correct."}', input_tokens=3000, output_tokens=200),
    ])
    data = {
        "providers": {"o": {"type": "openai", "base_url": server.openai_url}},
        "models": {
            "small": {"provider": "o", "name": "m-small", "price": {"input": 1, "output": 2}},
            "big": {"provider": "o", "name": "m-big", "price": {"input": 4, "output": 8}},
            "judge": {"provider": "o", "name": "m-judge", "price": {"input": 5, "output": 10}},
        },
        "tasks": {"t": {"ladder": ["small", "big"],
                        "evaluators": [{"type": "llm_judge", "model": "judge"}]}},
    }
    ledger = Ledger(tmp_path / "ledger.sqlite")
    with Cascade.from_dict(data, ledger=ledger) as cascade:
        try:
            result = cascade.complete("t", "Where is Paris?")
        finally:
            cascade.providers["o"].client.close()  # type: ignore[attr-defined]
        rows = ledger.query("SELECT step, model, decision, input_tokens, output_tokens, cost_usd "
                            "FROM steps WHERE run_id = ? ORDER BY step", (result.run_id,))
        run_cost = ledger.query("SELECT cost_usd FROM runs WHERE run_id = ?",
                                (result.run_id,))[0]["cost_usd"]

    expected = [
        (1, "small", "escalate", (1000 * 1 + 500 * 2) / 1e6),   # 0.002
        (2, "judge", "judge", (4000 * 5 + 100 * 10) / 1e6),     # 0.021
        (3, "big", "accept", (2000 * 4 + 250 * 8) / 1e6),       # 0.010
        (4, "judge", "judge", (3000 * 5 + 200 * 10) / 1e6),     # 0.017
    ]
    assert [(r["step"], r["model"], r["decision"]) for r in rows] == [e[:3] for e in expected]
    for row, (*_, cost) in zip(rows, expected, strict=True):
        assert row["cost_usd"] == pytest.approx(cost, abs=1e-12)
    total = sum(e[3] for e in expected)
    assert total == pytest.approx(0.050, abs=1e-12)
    assert result.cost_usd == pytest.approx(total, abs=1e-12)
    assert run_cost == pytest.approx(total, abs=1e-12)
    assert result.text == "Paris is in France."
    assert result.steps[0].verdicts[0].reason.startswith("judge scored 2/10")
    judge_bodies = [c["body"] for c in server.calls("m-judge")]
    assert [b["response_format"] for b in judge_bodies] == [{"type": "json_object"}] * 2
    assert all("response_format" not in c["body"] for c in server.calls("m-small"))


def test_judge_json_with_trailing_comma() -> None:
    """A JSON reply with a trailing comma is read, not failed closed."""
    from evaluators.judge import parse_score

    assert parse_score('{"score": 8,}')[0] == 8.0
