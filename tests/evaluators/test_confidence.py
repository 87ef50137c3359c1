"""self_confidence and logprob: asking for confidence, reading it back, gating on it."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cascade import Cascade, Completion, ConfigError, Request, Verdict
from cascade.evaluation import EvaluatorContext, build_one
from cascade.providers.anthropic import to_anthropic
from cascade.testing import FakeProvider, MockLLMServer, Reply
from evaluators.confidence import DEFAULT_INSTRUCTION, SelfConfidence, strip_confidence


def ctx(supports_logprobs: bool = True, provider_type: str = "openai") -> EvaluatorContext:
    return EvaluatorContext(location="tasks.t.evaluators[0]", task="t", model="small",
                            provider_type=provider_type, supports_logprobs=supports_logprobs)


def evaluate(spec: dict[str, Any], text: str, **completion: Any) -> Verdict:
    slot = build_one(spec, ctx())
    return slot.run(Request(task="t", messages=({"role": "user", "content": "q"},)),
                    Completion(text=text, **completion))


def confidence(text: str, **settings: Any) -> Verdict:
    return evaluate({"type": "self_confidence", **settings}, text)


def config(evaluators: list[dict[str, Any]], provider_type: str = "openai",
           **task: Any) -> dict[str, Any]:
    return {
        "providers": {"p": {"type": provider_type}},
        "models": {"small": {"provider": "p", "name": "small", "price": {"input": 1, "output": 2}},
                   "big": {"provider": "p", "name": "big", "price": {"input": 3, "output": 6}}},
        "tasks": {"t": {"ladder": ["small", "big"], "evaluators": evaluators, **task}},
    }


def run(evaluators: list[dict[str, Any]], script: dict[str, list[Any]],
        prompt: Any = "What is the capital of France?", **task: Any) -> tuple[Any, FakeProvider]:
    fake = FakeProvider("p", script)
    cascade = Cascade.from_dict(config(evaluators, **task), providers={"p": fake}, ledger=False)
    return cascade.complete("t", prompt), fake


def close_sdk_clients(cascade: Cascade) -> None:
    """Close the SDK clients (and their sockets): ``Cascade.close`` only closes the ledger."""
    for provider in cascade.providers.values():
        provider.client.close()  # type: ignore[attr-defined]


def config_error(spec: dict[str, Any], provider_type: str = "openai") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(config([spec], provider_type), providers={"p": FakeProvider("p")},
                          ledger=False)
    return info.value


# -- self_confidence: the conversation ------------------------------------------------------------


def test_instruction_is_added_to_the_existing_system_message() -> None:
    """With a system message the instruction is appended to it; the caller's list is untouched."""
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Capital of France?"}]
    _, fake = run([{"type": "self_confidence"}], {"small": ["Paris\nConfidence: 0.9"]},
                  prompt=messages)
    sent = fake.calls[0]["messages"]
    assert len(sent) == 2
    assert sent[0]["role"] == "system"
    assert sent[0]["content"].startswith("You are terse.")
    assert sent[0]["content"].endswith(DEFAULT_INSTRUCTION)
    assert messages[0]["content"] == "You are terse."


def test_instruction_becomes_a_system_message_when_there_is_none() -> None:
    """Without a system message one is inserted at the start, holding the instruction."""
    _, fake = run([{"type": "self_confidence"}], {"small": ["Paris\nConfidence: 0.9"]})
    sent = fake.calls[0]["messages"]
    assert sent[0] == {"role": "system", "content": DEFAULT_INSTRUCTION}
    assert sent[1]["role"] == "user"


def test_custom_instruction_wording_is_sent() -> None:
    """``instruction:`` replaces the default wording."""
    custom = "End with 'Confidence: X' where X is in [0, 1]."
    _, fake = run([{"type": "self_confidence", "instruction": custom}],
                  {"small": ["Paris\nConfidence: 0.9"]})
    assert fake.calls[0]["messages"][0]["content"] == custom


def test_anthropic_folding_keeps_the_instruction() -> None:
    """The Anthropic provider's system folding carries the instruction into ``system``."""
    slot = build_one({"type": "self_confidence"}, ctx(False, "anthropic"))
    messages, _ = slot.hooks["prepare"]((
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}), {})
    system, turns = to_anthropic(messages)
    assert system is not None
    assert system.startswith("Be brief.")
    assert DEFAULT_INSTRUCTION in system
    assert turns == [{"role": "user", "content": "Hi"}]


def test_anthropic_wire_request_carries_the_instruction(
        server: MockLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real Anthropic SDK, the request's ``system`` field holds the instruction."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-fake")
    server.script("claude-x", ["Paris\nConfidence: 0.95"])
    data = {
        "providers": {"a": {"type": "anthropic", "base_url": server.anthropic_url}},
        "models": {"c": {"provider": "a", "name": "claude-x",
                         "price": {"input": 3, "output": 15}}},
        "ledger": {"path": None},
        "tasks": {"t": {"ladder": ["c"], "evaluators": [{"type": "self_confidence"}]}},
    }
    cascade = Cascade.from_dict(data)
    try:
        result = cascade.complete("t", "Capital of France?")
    finally:
        close_sdk_clients(cascade)
    assert result.accepted is True
    assert result.text == "Paris"
    body = server.calls("claude-x")[0]["body"]
    assert DEFAULT_INSTRUCTION in body["system"]


# -- self_confidence: parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(("last_line", "expected"), [
    ("0.85", 0.85),
    ("85%", 0.85),
    ("Confidence: 0.9", 0.9),
    ("Confidence - 0.9", 0.9),
    ("confidence=95%", 0.95),
    ("Confidence: high", 0.85),
    ("Confidence: very high", 0.95),
    ("Confidence: medium", 0.6),
    ("Confidence: moderate", 0.6),
    ("Confidence: low", 0.3),
    ("Confidence: very low", 0.1),
    ("**Confidence:** 8/10", 0.8),
    ("8/10", 0.8),
    ("Confidence \u2014 7 out of 10", 0.7),
    ("> **Confidence**: 0.75.", 0.75),
    ("My confidence is 0.8 (fairly sure).", 0.8),
])
def test_confidence_forms_are_read(last_line: str, expected: float) -> None:
    """Numbers, percentages, fractions, words and markdown-wrapped labels all parse."""
    verdict = confidence(f"Paris is the capital.\n{last_line}", min=0)
    assert verdict.passed is True
    assert verdict.score == pytest.approx(expected)


def test_confidence_on_the_answer_line_is_read() -> None:
    """A statement closing the answer's only line counts (``Paris. Confidence: 0.9``)."""
    assert confidence("Paris. Confidence: 0.9").score == pytest.approx(0.9)


def test_percent_confidence_95_passes() -> None:
    """Adversarial: ``95%`` is read as 0.95 and clears the default minimum 0.7."""
    verdict = confidence("Paris is the capital of France.\n95%")
    assert verdict.passed is True
    assert verdict.score == pytest.approx(0.95)


def test_dash_separated_confidence_passes() -> None:
    """Adversarial: ``Confidence - 0.9`` is a separator, not a negative number."""
    verdict = confidence("Paris.\nConfidence - 0.9")
    assert verdict.passed is True
    assert verdict.score == pytest.approx(0.9)


def test_number_in_the_answer_is_not_a_confidence() -> None:
    """``The result is 0.5`` with no confidence line fails as missing."""
    verdict = confidence("The result is 0.5")
    assert verdict.passed is False
    assert verdict.reason.startswith("confidence missing")


def test_bare_number_alone_is_the_answer_not_a_confidence() -> None:
    """A one-line answer ``0.5`` is the answer itself, so confidence is missing."""
    assert confidence("0.5").reason.startswith("confidence missing")


def test_word_confidence_in_prose_is_not_a_statement() -> None:
    """Prose about confidence ('inspires confidence in users') is not a confidence line."""
    verdict = confidence("The approach inspires confidence in users")
    assert verdict.reason.startswith("confidence missing")


def test_only_the_last_confidence_line_counts() -> None:
    """With two confidence lines the later one decides."""
    verdict = confidence("Draft.\nConfidence: 0.95\nOn reflection, less sure.\nConfidence: 0.2")
    assert verdict.passed is False
    assert verdict.score == pytest.approx(0.2)


def test_confidence_line_followed_by_a_closing_remark_counts() -> None:
    """A pleasantry after the confidence line does not hide it."""
    assert confidence("Paris.\nConfidence: 0.9\n\nHope this helps!").score == pytest.approx(0.9)


@pytest.mark.parametrize("value", ["banana", "85", "1.5", "-0.2", "11/10", "3/0"])
def test_unreadable_or_out_of_range_confidence_is_unparseable(value: str) -> None:
    """Garbage, bare numbers above 1, and fractions above 1 fail as unparseable."""
    verdict = confidence(f"Paris.\nConfidence: {value}")
    assert verdict.passed is False
    assert verdict.reason.startswith("confidence unparseable")


def test_low_confidence_fails_with_its_score() -> None:
    """A readable confidence under ``min`` fails; the score is the confidence."""
    verdict = confidence("Paris.\nConfidence: 0.4", min=0.5)
    assert verdict.passed is False
    assert verdict.score == pytest.approx(0.4)
    assert "below the minimum 0.5" in verdict.reason


def test_words_mapping_can_be_extended_and_overridden() -> None:
    """``words:`` adds new words and changes default ones."""
    settings = {"words": {"Almost Certain": 0.97, "high": 0.5}}
    assert confidence("Paris.\nConfidence: almost certain", **settings).score == 0.97
    assert confidence("Paris.\nConfidence: high", **settings).score == 0.5


@pytest.mark.parametrize("text", ["", "  \n\t "], ids=["empty", "whitespace"])
def test_empty_or_whitespace_answer_fails(text: str) -> None:
    """An answer with no text fails with reason 'empty answer'."""
    verdict = confidence(text)
    assert verdict.passed is False
    assert verdict.reason == "empty answer"


def test_huge_answer_is_parsed() -> None:
    """A megabyte of answer with a confidence line at the end still parses."""
    text = ("word " * 200_000) + "\nConfidence: 0.8"
    assert confidence(text).score == pytest.approx(0.8)


# -- self_confidence: finalize --------------------------------------------------------------------


def test_accepted_answer_is_returned_without_the_confidence_line() -> None:
    """The caller gets the answer minus the confidence statement."""
    result, _ = run([{"type": "self_confidence"}],
                    {"small": ["Paris is the capital.\n\n**Confidence:** 0.92"]})
    assert result.accepted is True
    assert result.text == "Paris is the capital."


def test_escalation_on_low_confidence_then_final_text_is_cleaned() -> None:
    """A low-confidence rung escalates; the exhausted last answer is cleaned too."""
    result, fake = run([{"type": "self_confidence", "min": 0.8}],
                       {"small": ["Lyon?\nConfidence: 0.3"], "big": ["Maybe Paris\n60%"]})
    assert [c["model"] for c in fake.calls] == ["small", "big"]
    assert result.accepted is False
    assert result.text == "Maybe Paris"


def test_strip_keeps_text_after_a_mid_answer_confidence_line() -> None:
    """Removing a confidence line keeps the closing remark that followed it."""
    assert strip_confidence("Paris.\nConfidence: 0.9\n\nThanks!") == "Paris.\n\nThanks!"


def test_strip_leaves_an_answer_without_confidence_alone() -> None:
    """No statement, no change."""
    assert strip_confidence("The result is 0.5") == "The result is 0.5"


# -- self_confidence: configuration ---------------------------------------------------------------


def test_self_confidence_unknown_key() -> None:
    """A typo fails at load time with the key path."""
    error = config_error({"type": "self_confidence", "minimum": 0.5})
    assert error.location == "tasks.t.evaluators[0].minimum"


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_self_confidence_min_outside_zero_one(value: float) -> None:
    """``min`` must be in 0..1."""
    assert config_error({"type": "self_confidence", "min": value}).location == \
        "tasks.t.evaluators[0].min"


def test_self_confidence_word_value_outside_zero_one() -> None:
    """Word values must be in 0..1."""
    error = config_error({"type": "self_confidence", "words": {"sure": 2}})
    assert error.location == "tasks.t.evaluators[0].words"


def test_self_confidence_empty_instruction() -> None:
    """An empty instruction would ask for nothing, so it is refused."""
    error = config_error({"type": "self_confidence", "instruction": ""})
    assert error.location == "tasks.t.evaluators[0].instruction"


def test_self_confidence_default_min_is_0_7() -> None:
    """Without ``min`` the bar is 0.7."""
    assert SelfConfidence.Config().min == 0.7
    assert confidence("Paris\nConfidence: 0.69").passed is False
    assert confidence("Paris\nConfidence: 0.7").passed is True


# -- logprob --------------------------------------------------------------------------------------

LOGPROBS = (-0.1, -0.5, -0.3)


@pytest.mark.parametrize(("aggregate", "expected"), [
    ("mean", math.exp(-0.3)),
    ("min", math.exp(-0.5)),
    ("first", math.exp(-0.1)),
])
def test_logprob_aggregates(aggregate: str, expected: float) -> None:
    """mean = exp(mean logprob), min = exp(min logprob), first = exp(first logprob)."""
    verdict = evaluate({"type": "logprob", "min": 0.5, "aggregate": aggregate}, "Paris",
                       logprobs=LOGPROBS)
    assert verdict.score == pytest.approx(expected, abs=1e-12)
    assert verdict.passed is True


def test_logprob_below_min_fails() -> None:
    """An unsure answer (low token probability) fails with its probability as score."""
    verdict = evaluate({"type": "logprob", "min": 0.9}, "Paris", logprobs=LOGPROBS)
    assert verdict.passed is False
    assert "below the minimum 0.9" in verdict.reason


def test_logprob_single_replayed_mean() -> None:
    """A replayed mean logprob (one value) gives the same result for every aggregate."""
    for aggregate in ("mean", "min", "first"):
        verdict = evaluate({"type": "logprob", "min": 0.5, "aggregate": aggregate}, "Paris",
                           logprobs=(-0.2,))
        assert verdict.score == pytest.approx(math.exp(-0.2), abs=1e-12)


@pytest.mark.parametrize("logprobs", [None, ()], ids=["none", "empty"])
def test_logprob_missing_fails(logprobs: tuple[float, ...] | None) -> None:
    """No log-probabilities from the provider fails with that reason."""
    verdict = evaluate({"type": "logprob", "min": 0.5}, "Paris", logprobs=logprobs)
    assert verdict.passed is False
    assert verdict.reason == "provider returned no log-probabilities"


def test_logprob_nan_fails() -> None:
    """NaN log-probabilities are rejected instead of compared."""
    verdict = evaluate({"type": "logprob", "min": 0.5}, "Paris", logprobs=(-0.1, math.nan))
    assert verdict.passed is False
    assert "invalid" in verdict.reason


def test_logprob_negative_infinity_is_probability_zero() -> None:
    """A -inf token makes the min aggregate 0 rather than crashing."""
    verdict = evaluate({"type": "logprob", "min": 0.5, "aggregate": "min"}, "Paris",
                       logprobs=(-0.1, -math.inf))
    assert verdict.score == 0.0
    assert verdict.passed is False


@pytest.mark.parametrize("text", ["", "   "], ids=["empty", "whitespace"])
def test_logprob_empty_answer_fails(text: str) -> None:
    """An empty answer fails even if the provider sent probabilities."""
    verdict = evaluate({"type": "logprob", "min": 0.5}, text, logprobs=(-0.01,))
    assert verdict.reason == "empty answer"


def test_logprob_prepare_asks_for_logprobs_and_keeps_params() -> None:
    """The call gets ``logprobs: True`` alongside the task's own parameters."""
    _, fake = run([{"type": "logprob", "min": 0.5}],
                  {"small": [Completion(text="Paris", logprobs=(-0.01,))]},
                  params={"temperature": 0.2})
    # max_tokens is the model's max_output_tokens: every call is held to what was reserved.
    assert fake.calls[0]["params"] == {"temperature": 0.2, "logprobs": True, "max_tokens": 4096}


def test_logprob_through_the_openai_sdk(server: MockLLMServer,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: the request asks for logprobs and the returned ones gate the ladder."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fake")
    server.script("m-small", [Reply(text="Lyon", logprobs=[-2.0, -1.0])])
    server.script("m-big", [Reply(text="Paris", logprobs=[-0.01, -0.03])])
    data = {
        "providers": {"o": {"type": "openai", "base_url": server.openai_url}},
        "models": {
            "small": {"provider": "o", "name": "m-small", "price": {"input": 1, "output": 2}},
            "big": {"provider": "o", "name": "m-big", "price": {"input": 3, "output": 6}},
        },
        "ledger": {"path": None},
        "tasks": {"t": {"ladder": ["small", "big"],
                        "evaluators": [{"type": "logprob", "min": 0.9}]}},
    }
    cascade = Cascade.from_dict(data)
    try:
        result = cascade.complete("t", "Capital of France?")
    finally:
        close_sdk_clients(cascade)
    assert result.model == "big"
    assert result.steps[0].verdicts[0].score == pytest.approx(math.exp(-1.5), abs=1e-12)
    assert result.steps[1].verdicts[0].score == pytest.approx(math.exp(-0.02), abs=1e-12)
    assert all(call["body"]["logprobs"] is True for call in server.calls())


def test_logprob_on_an_anthropic_rung_is_a_config_error() -> None:
    """Anthropic cannot return log-probabilities, so the config fails at load time."""
    data = config([{"type": "logprob", "min": 0.8}], provider_type="anthropic")
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(data, ledger=False)
    assert info.value.location == "tasks.t.evaluators[0].type"
    assert "tasks.t.evaluators[0]" in str(info.value)
    assert "anthropic provider cannot return log-probabilities" in info.value.message


def test_logprob_min_is_required() -> None:
    """The threshold depends on the model, so there is no default."""
    error = config_error({"type": "logprob"})
    assert error.location == "tasks.t.evaluators[0].min"


@pytest.mark.parametrize("value", [0, -0.5, 1.5])
def test_logprob_min_outside_zero_one(value: float) -> None:
    """``min`` must be in (0, 1]."""
    assert config_error({"type": "logprob", "min": value}).location == "tasks.t.evaluators[0].min"


def test_logprob_unknown_aggregate() -> None:
    """Only mean, min and first are aggregates."""
    error = config_error({"type": "logprob", "min": 0.5, "aggregate": "median"})
    assert error.location == "tasks.t.evaluators[0].aggregate"


def test_logprob_unknown_key() -> None:
    """A typo fails at load time with the key path."""
    error = config_error({"type": "logprob", "min": 0.5, "agregate": "min"})
    assert error.location == "tasks.t.evaluators[0].agregate"


def test_bare_integer_last_line_is_not_a_confidence() -> None:
    """An answer ending in a bare integer keeps it: only decimals, percentages and fractions
    count as bare confidences."""
    from evaluators.confidence import parse_confidence, strip_confidence

    assert parse_confidence("Total: 3\n1") is None
    assert strip_confidence("Total: 3\n1") == "Total: 3\n1"
    found = parse_confidence("Paris\n0.85")
    assert found is not None
    assert found.value == 0.85
