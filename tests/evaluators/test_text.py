"""Text rules: regex, contains, not_contains and the refusal preset."""

from __future__ import annotations

from typing import Any

import pytest

from cascade import Cascade, ConfigError, Request, Verdict
from cascade.evaluation import EvaluatorContext, build_one
from cascade.testing import FakeProvider, make_completion
from tests.evaluators.work import cpu_watchdog, python_lines

CTX = EvaluatorContext(location="tasks.t.evaluators[0]", task="t", model="small",
                       provider_type="openai", supports_logprobs=False)
REQUEST = Request(task="t", messages=({"role": "user", "content": "question"},))
MB = 1_000_000


def check(kind: str, text: str, **settings: Any) -> Verdict:
    return build_one({"type": kind, **settings}, CTX).run(REQUEST, make_completion(text))


def config_error(kind: str, **settings: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build_one({"type": kind, **settings}, CTX)
    return info.value


# -- length ---------------------------------------------------------------------------------------


def test_length_counts_one_word_in_the_singular() -> None:
    """The reason says "1 word" and "1 character", never "1 words"."""
    assert check("length", "Nine.", min_words=3).reason == "1 word, below the minimum 3"
    assert check("length", "x", max_chars=10).reason == "1 character, 1 word"
    assert check("length", "two words", min_words=1).reason == "9 characters, 2 words"


# -- regex ----------------------------------------------------------------------------------------


def test_regex_search_passes_on_a_match() -> None:
    """By default the pattern may match anywhere."""
    verdict = check("regex", "Your code is 123-4567, keep it.", pattern=r"\d{3}-\d{4}")
    assert (verdict.passed, verdict.score) == (True, 1.0)
    assert "'123-4567'" in verdict.reason


def test_regex_fails_without_a_match() -> None:
    """No match fails with score 0 and names the pattern."""
    verdict = check("regex", "no digits here", pattern=r"\d+")
    assert (verdict.passed, verdict.score) == (False, 0.0)
    assert verdict.reason == "no search of /\\d+/"


def test_regex_must_match_false_forbids() -> None:
    """With must_match: false a match is a rejection."""
    verdict = check("regex", "Lorem ipsum", pattern="lorem", flags=["i"], must_match=False)
    assert (verdict.passed, verdict.reason) == (False, "forbidden pattern /lorem/ matched 'Lorem'")
    assert check("regex", "clean text", pattern="lorem", must_match=False).passed


def test_regex_fullmatch_ignores_surrounding_whitespace() -> None:
    """fullmatch applies to the stripped answer, so a trailing newline is fine."""
    assert check("regex", "  yes\n", pattern="yes|no", mode="fullmatch").passed


def test_regex_fullmatch_rejects_extra_text() -> None:
    """fullmatch needs the whole answer to match."""
    assert not check("regex", "yes, definitely", pattern="yes|no", mode="fullmatch").passed


def test_regex_match_mode_anchors_at_start() -> None:
    """match mode anchors at the start only."""
    assert check("regex", "yes, definitely", pattern="yes", mode="match").passed
    assert not check("regex", "well, yes", pattern="yes", mode="match").passed


@pytest.mark.parametrize("flags", [["i"], ["IGNORECASE"], "i", "is", ["ignorecase", "s"]])
def test_regex_flags_letters_and_names(flags: Any) -> None:
    """Flags are accepted as letters, names, or a short string."""
    assert check("regex", "HELLO", pattern="hello", flags=flags).passed


def test_regex_is_case_sensitive_by_default() -> None:
    """Without flags the pattern is case-sensitive."""
    assert not check("regex", "HELLO", pattern="hello").passed


def test_regex_multiline_and_dotall_flags() -> None:
    """m makes ^/$ per line; s lets . cross newlines."""
    assert check("regex", "a\nTOTAL: 5\nb", pattern=r"^TOTAL: \d+$", flags="m").passed
    assert check("regex", "start\nend", pattern="start.end", flags=["s"]).passed
    assert not check("regex", "start\nend", pattern="start.end").passed


def test_regex_invalid_pattern_fails_at_load() -> None:
    """A pattern that does not compile is a ConfigError naming ``pattern``."""
    error = config_error("regex", pattern="(unclosed")
    assert error.location == "tasks.t.evaluators[0].pattern"
    assert "invalid regular expression" in error.message


def test_regex_unknown_flag_rejected() -> None:
    """An unknown flag names the ``flags`` key."""
    error = config_error("regex", pattern="x", flags=["q"])
    assert error.location == "tasks.t.evaluators[0].flags"
    assert "unknown flag 'q'" in error.message


@pytest.mark.parametrize(("settings", "where"), [
    ({"pattern": "x", "patern": "y"}, "patern"),
    ({"pattern": "x", "mode": "anywhere"}, "mode"),
    ({"pattern": "x", "must_match": "sometimes"}, "must_match"),
    ({}, "pattern"),
])
def test_regex_bad_settings(settings: dict[str, Any], where: str) -> None:
    """Unknown keys, bad values and a missing pattern name their key."""
    assert config_error("regex", **settings).location == f"tasks.t.evaluators[0].{where}"


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_regex_empty_answers(text: str) -> None:
    """Empty and whitespace-only answers are judged, not crashed on."""
    assert not check("regex", text, pattern=r"\w").passed
    assert check("regex", text, pattern=r"^$", mode="fullmatch").passed


def test_regex_huge_answer_costs_no_more_python_than_a_short_one() -> None:
    """A 1 MB answer is searched by the pattern alone (in C): the evaluator's own Python work is
    that of a 10-character answer. Timed in benchmarks/evaluator_speed.py."""
    check("regex", "a DONE", pattern=r"DONE$")  # the plug-in loads once, not per answer
    _, short = python_lines(lambda: check("regex", "a" * 10 + " DONE", pattern=r"DONE$"))
    verdict, work = python_lines(lambda: check("regex", "a" * MB + " DONE", pattern=r"DONE$"))
    assert verdict.passed
    assert work == short


# -- contains / not_contains ----------------------------------------------------------------------


def test_contains_any_passes_on_one_term() -> None:
    """One of the ``any`` terms is enough."""
    assert check("contains", "The capital is Paris.", any=["Lyon", "paris"]).passed


def test_contains_any_fails_when_none_found() -> None:
    """None of the ``any`` terms fails and lists them."""
    verdict = check("contains", "The capital is Rome.", any=["Paris", "Lyon"])
    assert (verdict.passed, verdict.score) == (False, 0.0)
    assert verdict.reason == "none of 'Paris', 'Lyon'"


def test_contains_all_reports_missing_terms_and_share() -> None:
    """``all`` lists the missing terms; the score is the share of checks met."""
    verdict = check("contains", "Step 1 ... Step 2", all=["Step 1", "Step 2", "Step 3", "Step 4"])
    assert not verdict.passed
    assert verdict.score == 0.5
    assert verdict.reason == "missing 'Step 3', 'Step 4'"


def test_contains_any_and_all_together() -> None:
    """With both lists both must hold; the ``any`` group counts as one check."""
    verdict = check("contains", "Paris, France", any=["paris"], all=["France", "Europe"])
    assert not verdict.passed
    assert verdict.score == pytest.approx(2 / 3)
    assert check("contains", "Paris, France, Europe", any=["paris"],
                 all=["France", "Europe"]).passed


def test_contains_case_insensitive_by_default_with_casefold() -> None:
    """Matching is case-insensitive by default, using Unicode case folding."""
    assert check("contains", "STRASSE", all=["Straße"]).passed


def test_contains_case_sensitive_option() -> None:
    """case_sensitive: true makes case matter."""
    assert not check("contains", "paris", any=["Paris"], case_sensitive=True).passed


@pytest.mark.parametrize(("settings", "where"), [
    ({}, None),
    ({"any": []}, "any"),
    ({"all": ["ok", ""]}, "all"),
    ({"any": ["x"], "anny": ["y"]}, "anny"),
    ({"any": "Paris"}, "any"),
])
def test_contains_bad_settings(settings: dict[str, Any], where: str | None) -> None:
    """No terms, empty lists, empty strings, typos and a bare string are ConfigErrors."""
    expected = "tasks.t.evaluators[0]" + (f".{where}" if where else "")
    assert config_error("contains", **settings).location == expected


@pytest.mark.parametrize("text", ["", "  \n "])
def test_contains_empty_answers_fail(text: str) -> None:
    """An empty answer contains nothing."""
    assert not check("contains", text, any=["x"]).passed


def test_not_contains_rejects_forbidden_terms() -> None:
    """Any forbidden term present fails and is named."""
    verdict = check("not_contains", "TODO: lorem ipsum", any=["lorem ipsum", "todo", "FIXME"])
    assert (verdict.passed, verdict.score) == (False, 0.0)
    assert verdict.reason == "contains forbidden 'lorem ipsum', 'todo'"


def test_not_contains_passes_clean_text() -> None:
    """Absent terms pass."""
    assert check("not_contains", "A finished answer.", any=["TODO"]).passed


def test_not_contains_case_sensitive_option() -> None:
    """case_sensitive: true lets a differently-cased term through."""
    assert check("not_contains", "todo list", any=["TODO"], case_sensitive=True).passed


@pytest.mark.parametrize(("settings", "where"), [
    ({}, "any"),
    ({"any": []}, "any"),
    ({"any": [""]}, "any"),
    ({"any": ["x"], "all": ["y"]}, "all"),
])
def test_not_contains_bad_settings(settings: dict[str, Any], where: str) -> None:
    """A missing or empty ``any`` and unknown keys are ConfigErrors naming the key."""
    assert config_error("not_contains", **settings).location == f"tasks.t.evaluators[0].{where}"


@pytest.mark.parametrize("text", ["", " \n\t"])
def test_not_contains_empty_answers_pass(text: str) -> None:
    """An empty answer contains no forbidden term."""
    assert check("not_contains", text, any=["x"]).passed


# -- refusal --------------------------------------------------------------------------------------

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I\u2019m sorry, but I can\u2019t help with that request.",  # curly apostrophes
    "Sorry, I cannot assist with this.",
    "I cannot assist with that request.",
    "I can't provide instructions for that.",
    "As an AI language model, I don't have personal opinions.",
    "As an AI, I cannot browse the internet.",
    "I'm unable to help with this request.",
    "I am unable to comply.",
    "I won't be able to assist with that.",
    "I'm afraid I can't do that, Dave.",
    "I apologize, but I cannot fulfill this request.",
    "My apologies, but I won't generate that content.",
    "Unfortunately, I am not able to provide that information.",
    "I must respectfully decline.",
    "That's not something I can help with.",
    "This request goes against my guidelines.",
    "**I'm sorry, but I can't help with that.**",
    "Great question. Sadly I know a lot. I can't help with that, though.",
    "\n\n  I cannot help with that.",
]
LEGITIMATE = [
    "I can't stress enough how important hydration is. Drink water regularly.",
    "Sorry for the delay — here is the code: print('hi')",
    "I'm sorry to hear that you can't sleep. Here are some tips: keep a schedule.",
    "I can't help but notice the bug on line 3: the loop never ends.",
    "I'm unable to find any bugs in your code; it looks correct.",
    "I cannot recommend this library highly enough.",
    "Sorry, my earlier answer had a typo. The result is 42.",
    "As an example, consider the list [1, 2, 3].",
    'A typical refusal reads "I\'m sorry, but I can\'t help with that." Avoid it.',
    '"I cannot assist with that" is what the bot said, and here is why it happened.',
    "> I'm sorry, but I can't help with that.\n\nThat quoted reply came from the old model.",
    "Unfortunately, there is no closed form; here is a numeric method.",
    "I won't bore you with details: the answer is 7.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusal_detected(text: str) -> None:
    """Typical refusals at the start of a sentence near the beginning are rejected."""
    verdict = check("refusal", text)
    assert (verdict.passed, verdict.score) == (False, 0.0)
    assert verdict.reason.startswith("looks like a refusal: ")


@pytest.mark.parametrize("text", LEGITIMATE)
def test_legitimate_answers_not_flagged(text: str) -> None:
    """Answers that only resemble a refusal, or quote one, pass."""
    verdict = check("refusal", text)
    assert (verdict.passed, verdict.score) == (True, 1.0), verdict.reason


def test_refusal_quoted_late_in_a_long_answer_not_flagged() -> None:
    """A refusal phrase past ``max_chars_scanned`` is not looked at."""
    text = "Here is a detailed guide. " * 20 + "I'm sorry, but I can't help with that."
    assert check("refusal", text).passed
    assert not check("refusal", text, max_chars_scanned=len(text)).passed


def test_partial_refusal_is_flagged() -> None:
    """Documented: an opening refusal counts even when help follows in the same answer."""
    assert not check("refusal", "I can't give medical advice, but here are general tips.").passed


def test_refusal_reason_quotes_the_sentence() -> None:
    """The reason quotes the refusing sentence only."""
    verdict = check("refusal", "I cannot assist with that. Anything else?")
    assert verdict.reason == "looks like a refusal: 'I cannot assist with that.'"


def test_refusal_extra_patterns() -> None:
    """extra_patterns add house phrases, matched at sentence starts, case-insensitively."""
    extra = ["that is classif"]
    assert not check("refusal", "Nope. That is classified.", extra_patterns=extra).passed
    assert check("refusal", "It said that is classified.", extra_patterns=extra).passed
    assert not check("refusal", "It said that is classified.",
                     extra_patterns=[".*?that is classif"]).passed


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_refusal_empty_answers_pass(text: str) -> None:
    """An empty answer is not a refusal (bound it with ``length``)."""
    assert check("refusal", text).passed


def test_refusal_huge_answer_costs_only_the_scanned_prefix() -> None:
    """A 1 MB answer costs what its first max_chars_scanned characters cost: the same Python
    work as a 300-character answer, sentence starts included; the patterns run under a CPU-time
    watchdog. Timed in benchmarks/evaluator_speed.py."""
    with cpu_watchdog():
        check("refusal", "Sure.")  # the plug-in and its patterns are built once, not per answer
        _, prefix = python_lines(lambda: check("refusal", "Sure. " * 50))  # 300 characters
        verdict, work = python_lines(lambda: check("refusal", "Sure. " * (MB // 6)))
    assert verdict.passed
    assert work == prefix


@pytest.mark.parametrize(("settings", "where"), [
    ({"extra_patterns": ["ok", "(bad"]}, "extra_patterns[1]"),
    ({"max_chars_scanned": 0}, "max_chars_scanned"),
    ({"max_chars": 10}, "max_chars"),
])
def test_refusal_bad_settings(settings: dict[str, Any], where: str) -> None:
    """Bad patterns, bounds and unknown keys are ConfigErrors naming the key."""
    assert config_error("refusal", **settings).location == f"tasks.t.evaluators[0].{where}"


def test_refusal_escalates_through_the_engine() -> None:
    """A refusing cheap model escalates to the next rung."""
    cfg = {
        "providers": {"p": {"type": "openai"}},
        "models": {k: {"provider": "p", "name": k, "price": {"input": 1, "output": 2}}
                   for k in ("small", "big")},
        "tasks": {"t": {"ladder": ["small", "big"], "evaluators": [{"type": "refusal"}]}},
    }
    fake = FakeProvider("p", {"small": ["I'm sorry, but I can't help with that."],
                              "big": ["Here is how: ..."]})
    result = Cascade.from_dict(cfg, providers={"p": fake}, ledger=False).complete("t", "how?")
    assert [s.decision for s in result.steps] == ["escalate", "accept"]
    assert result.model == "big"
