"""agreement: compare this rung's final answer with the earlier rungs' answers."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from cascade import Cascade, ConfigError, Request, Verdict
from cascade.evaluation import EvaluatorContext, build_one
from cascade.testing import FakeProvider, make_completion
from evaluators.agreement import normalize
from tests.evaluators.work import python_lines

CTX = EvaluatorContext(location="tasks.t.evaluators[0]", task="t", model="medium",
                       provider_type="openai", supports_logprobs=False)
FINAL_NUMBER = r"(-?[\d,]*\.?\d+)"


def check(text: str, earlier: list[str], **settings: Any) -> Verdict:
    history = tuple(make_completion(t, model=f"rung{i + 1}") for i, t in enumerate(earlier))
    request = Request(task="t", messages=({"role": "user", "content": "q"},), history=history)
    return build_one({"type": "agreement", **settings}, CTX).run(request, make_completion(text))


def config_error(**settings: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build_one({"type": "agreement", **settings}, CTX)
    return info.value


# -- verdicts -------------------------------------------------------------------------------------


def test_first_rung_fails_without_score() -> None:
    """With no earlier answer the verdict fails, with score None and a reason."""
    verdict = check("42", [])
    assert (verdict.passed, verdict.score) == (False, None)
    assert verdict.reason == "no earlier answer to compare with"


def test_when_first_pass() -> None:
    """when_first: pass lets the first rung through (score still None)."""
    verdict = check("42", [], when_first="pass")
    assert (verdict.passed, verdict.score) == (True, None)


def test_agreeing_final_numbers_pass() -> None:
    """The last number of each answer is compared; agreement passes with score 1."""
    verdict = check("First 12, then 30, so the total is 42.", ["The answer is 42"],
                    extract=FINAL_NUMBER)
    assert (verdict.passed, verdict.score) == (True, 1.0)
    assert verdict.reason.startswith("1 of 1 earlier answers agree with '42'")


def test_disagreement_fails_and_lists_earlier_answers() -> None:
    """Disagreement fails with score 0 and shows what the earlier rungs said."""
    verdict = check("So 41.", ["It is 42."], extract=FINAL_NUMBER)
    assert (verdict.passed, verdict.score) == (False, 0.0)
    assert "earlier: rung1='42'" in verdict.reason


def test_last_match_is_used() -> None:
    """Of several matches, the last one is the answer."""
    assert check("I first guessed 12 but it is 18", ["18"], extract=FINAL_NUMBER).passed
    assert not check("It is 18, not 12", ["18"], extract=FINAL_NUMBER).passed


def test_group_one_or_whole_match() -> None:
    """A pattern's group is the value; without a group the whole match is."""
    assert check("Answer: B", ["Answer: b, surely"], extract=r"Answer:\s*(\w)").passed
    assert check("Answer: B", ["Answer: B!"], extract=r"Answer:\s*\w").passed


def test_first_participating_group_of_an_alternation() -> None:
    """With alternatives, the group that took part in the match is used."""
    pattern = r"####\s*(-?[\d,\.]+)|(-?[\d,]*\.?\d+)\s*$"
    assert check("work...\n#### 1,200", ["so 1200"], extract=pattern).passed


@pytest.mark.parametrize(("mine", "theirs"), [
    ("$1,234.0", "1234"), ("1234.50", "1,234.5"), ("-3", "-3.00"), ("0.5", ".5"),
])
def test_numbers_compare_by_value(mine: str, theirs: str) -> None:
    """Commas, '$' and trailing zeros do not matter when both sides are numbers."""
    assert check(mine, [theirs]).passed


def test_numeric_normalisation_can_be_switched_off() -> None:
    """numeric: false compares the text only."""
    assert not check("1,000", ["1000"], numeric=False).passed


@pytest.mark.parametrize(("mine", "theirs"), [
    ("Paris", "  paris. "), ("New   York", "new york"), ("**Yes**", "yes"),
])
def test_text_compares_case_and_space_insensitively(mine: str, theirs: str) -> None:
    """Case, whitespace runs, bold markers and trailing punctuation do not matter."""
    assert check(mine, [theirs]).passed


def test_score_is_the_share_of_agreeing_answers() -> None:
    """The score is the share of earlier answers that agree; min_agree sets the bar."""
    verdict = check("7", ["7", "seven", "7.0"])
    assert verdict.score == pytest.approx(2 / 3)
    assert verdict.passed
    assert not check("7", ["7", "seven", "7.0"], min_agree=0.75).passed


def test_nothing_extracted_from_this_answer_fails() -> None:
    """When the pattern finds nothing in this answer the verdict fails and says so."""
    verdict = check("I don't know", ["42"], extract=FINAL_NUMBER)
    assert (verdict.passed, verdict.score) == (False, 0.0)
    assert verdict.reason == "the extract pattern found nothing in this answer"


def test_earlier_answer_without_a_match_disagrees() -> None:
    """An earlier answer the pattern finds nothing in counts against agreement."""
    verdict = check("42", ["no idea", "42"], extract=FINAL_NUMBER)
    assert verdict.score == 0.5
    assert "rung1=none" in verdict.reason


def test_patterns_are_tried_in_order() -> None:
    """With a list, the first pattern that matches at all decides."""
    patterns = [r"####\s*(\d+)", r"(\d+)"]
    assert check("#### 42 (that is 6 x 7)", ["42"], extract=patterns).passed
    assert check("6 x 7 = 42", ["#### 42 (6 x 7)"], extract=patterns).passed


@pytest.mark.parametrize(("recipe", "mine", "theirs"), [
    ("final_number", "so she pays $1,234.50.", "1234.5"),
    ("gsm8k", "#### 18\nCheck: 3 * 6 = 18, then 2", "It is 18."),
    ("boxed", r"Thus \boxed{2} hmm, wait: \boxed{x+1}", r"so $\boxed{X+1}$ (not 1)"),
    ("choice", "The answer is (C) because of 3 reasons.", "C"),
])
def test_recipes(recipe: str, mine: str, theirs: str) -> None:
    """Ready-made extraction recipes for common answer formats."""
    assert check(mine, [theirs], recipe=recipe).passed


def test_normalize_helper() -> None:
    """normalize() returns a Decimal for numbers and folded text otherwise."""
    assert normalize(" $1,000.00 ") == Decimal("1000")
    assert normalize("Hello   World.") == "hello world"


# -- adversarial ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_answers_fail(text: str) -> None:
    """Empty and whitespace-only answers fail with a reason instead of crashing."""
    assert check(text, ["42"]).reason == "this answer is empty"
    assert not check(text, ["42"], extract=FINAL_NUMBER).passed


def test_empty_earlier_answer_disagrees() -> None:
    """An empty earlier answer never agrees."""
    assert check("42", ["", "  "]).score == 0.0


def test_huge_answers_cost_no_more_python_than_short_ones() -> None:
    """Two 1 MB answers are compared with exactly the Python work of two short ones: one regex
    pass over each (linear, in C), nothing per word. Timed in benchmarks/evaluator_speed.py."""
    short = "word " * 5 + "12,345"
    big = "word " * 200_000 + "12,345"
    check(short, [short], extract=FINAL_NUMBER)  # the plug-in loads once, not per answer
    small_verdict, small_work = python_lines(lambda: check(short, [short], extract=FINAL_NUMBER))
    verdict, work = python_lines(lambda: check(big, [big], extract=FINAL_NUMBER))
    assert verdict.passed
    assert small_verdict.passed
    assert work == small_work


# -- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "where"), [
    ({"extract": "(unclosed"}, "extract"),
    ({"extract": [r"\d+", "(bad"]}, "extract[1]"),
    ({"min_agree": 0}, "min_agree"),
    ({"min_agree": 1.5}, "min_agree"),
    ({"when_first": "skip"}, "when_first"),
    ({"recipe": "gsm9k"}, "recipe"),
    ({"extrakt": r"\d+"}, "extrakt"),
])
def test_bad_settings_name_their_key(settings: dict[str, Any], where: str) -> None:
    """Invalid regexes, out-of-range shares, bad choices and typos name their key."""
    assert config_error(**settings).location == f"tasks.t.evaluators[0].{where}"


def test_extract_and_recipe_are_exclusive() -> None:
    """Giving both extract and recipe is a ConfigError."""
    assert "not both" in config_error(extract=r"\d+", recipe="gsm8k").message


# -- through the engine ---------------------------------------------------------------------------


def cascade(script: dict[str, list[Any]], **settings: Any) -> tuple[Cascade, FakeProvider]:
    cfg = {
        "providers": {"p": {"type": "openai"}},
        "models": {k: {"provider": "p", "name": k, "price": {"input": p, "output": p}}
                   for k, p in (("small", 1), ("medium", 3), ("large", 10))},
        "tasks": {"t": {"ladder": ["small", "medium", "large"],
                        "evaluators": [{"type": "agreement", "recipe": "gsm8k", **settings}]}},
    }
    fake = FakeProvider("p", script)
    return Cascade.from_dict(cfg, providers={"p": fake}, ledger=False), fake


def test_engine_accepts_at_rung_two_when_it_agrees() -> None:
    """Rung 1 always escalates; rung 2 agreeing with it is accepted and rung 3 is never called."""
    engine, fake = cascade({"small": ["6 * 7 = 42"], "medium": ["#### 42"], "large": ["42"]})
    result = engine.complete("t", "What is 6 * 7?")
    assert [s.decision for s in result.steps] == ["escalate", "accept"]
    assert (result.model, result.text, result.accepted) == ("medium", "#### 42", True)
    assert result.steps[0].verdicts[0].reason == "no earlier answer to compare with"
    assert result.steps[1].verdicts[0].score == 1.0
    assert [c["model"] for c in fake.calls] == ["small", "medium"]


def test_engine_escalates_on_disagreement_and_scores_the_share() -> None:
    """Rung 2 disagreeing escalates; rung 3 agreeing with one of two earlier answers scores 0.5."""
    engine, _ = cascade({"small": ["42"], "medium": ["41"], "large": ["The answer: 42"]})
    result = engine.complete("t", "What is 6 * 7?")
    assert [s.decision for s in result.steps] == ["escalate", "escalate", "accept"]
    assert result.model == "large"
    assert [s.verdicts[0].score for s in result.steps] == [None, 0.0, 0.5]
    assert "earlier: small='42', medium='41'" in result.steps[2].verdicts[0].reason


def test_engine_exhausts_when_min_agree_not_met() -> None:
    """With min_agree 1.0 a split vote at the top rung is not accepted."""
    engine, _ = cascade({"small": ["42"], "medium": ["41"], "large": ["42"]}, min_agree=1.0)
    result = engine.complete("t", "What is 6 * 7?")
    assert (result.accepted, result.model) == (False, "large")
    assert result.steps[2].verdicts[0].score == 0.5


def test_engine_async_path_agrees_too() -> None:
    """acomplete takes the same decisions."""
    engine, _ = cascade({"small": ["42"], "medium": ["42.0"], "large": ["x"]})
    result = asyncio.run(engine.acomplete("t", "What is 6 * 7?"))
    assert (result.model, result.steps[1].verdicts[0].score) == ("medium", 1.0)
