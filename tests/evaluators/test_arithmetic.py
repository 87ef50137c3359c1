"""arithmetic: recompute written equations; reject answers with a wrong one."""

from __future__ import annotations

import pytest

from cascade import ConfigError
from cascade.evaluation import EvaluatorContext, build_one
from cascade.testing import make_completion
from cascade.types import Request
from tests.evaluators.work import cpu_watchdog, python_lines

CTX = EvaluatorContext(location="tasks.t.evaluators[0]", task="t", model="m",
                       provider_type="openai", supports_logprobs=True)
REQ = Request(task="t", messages=({"role": "user", "content": "q"},))


def judge(text: str, **settings: object) -> tuple[bool, float | None, str]:
    slot = build_one({"type": "arithmetic", **settings}, CTX)
    v = slot.run(REQ, make_completion(text))
    return v.passed, v.score, v.reason


def test_correct_annotations_pass() -> None:
    """GSM8K-style calculator annotations that are right pass."""
    passed, score, reason = judge("She earns 15 * 30 = $<<15*30=450>>450.\n#### 450")
    assert passed
    assert score == 1.0
    assert "all 2 equations" in reason


def test_one_equation_is_counted_in_the_singular() -> None:
    """One equation: "the one equation checks out", "1 of 1 equation wrong", never "1 equations"."""
    assert judge("So 2 + 2 = 4.")[2] == "the one equation checks out"
    assert judge("So 2 + 2 = 5.")[2].startswith("1 of 1 equation wrong, e.g. ")


def test_wrong_inline_equation_fails() -> None:
    """A wrong plain equation rejects the answer and is quoted in the reason."""
    passed, score, reason = judge("So (12 / 20) x 100 = 55%. Then 2 + 2 = 4.")
    assert not passed
    assert score == 0.5
    assert "(12 / 20) x 100 = 55%" in reason
    assert "it is 60" in reason


def test_wrong_annotation_fails() -> None:
    """A wrong calculator annotation rejects."""
    assert not judge("Total <<1150*50=57000>>57,000")[0]


def test_thousands_separators_and_money() -> None:
    """$ and thousands separators are read as numbers."""
    assert judge("1,150 \\* 50 = $57,500 per year")[0]


def test_rounding_tolerated() -> None:
    """Rounded intermediate results are not errors."""
    assert judge("10 / 3 = 3.33 each")[0]


@pytest.mark.parametrize("text", ["", "   \n ", "No numbers here at all.", "Call 555-1234 = me"])
def test_nothing_to_check(text: str) -> None:
    """Empty, whitespace-only and equation-free answers pass unless equations are required."""
    assert judge(text)[0]
    assert not judge(text, require_equations=True)[0]


def test_division_by_zero_is_not_a_crash() -> None:
    """Unevaluable expressions are skipped, never a crash."""
    assert judge("5 / 0 = 7 and 3 * 3 = 9")[0]


def test_huge_answer_work_stops_growing() -> None:
    """A 1 MB answer full of '=' costs the Python work of a 2 MB one: the scan stops after a
    fixed number of '=' (counted in lines of Python; the regexes run under a CPU-time
    watchdog). Timed in benchmarks/evaluator_speed.py."""
    with cpu_watchdog():
        (passed, _, _), work = python_lines(lambda: judge("2 * 3 = 6. " * 100_000))
        _, doubled = python_lines(lambda: judge("2 * 3 = 6. " * 200_000))
    assert passed
    assert doubled == work


def test_unknown_setting() -> None:
    """A typo in settings is a ConfigError with its key path."""
    with pytest.raises(ConfigError, match=r"tasks\.t\.evaluators\[0\]\.tolerence: unknown key"):
        build_one({"type": "arithmetic", "tolerence": 1}, CTX)


def test_long_sums_without_equals_cost_nothing_per_term() -> None:
    """Long chains of sums with no '=' cost the Python work of one chain (nothing is scanned
    without an '='), and no regex backtracks over them: the call runs under a CPU-time watchdog
    that an exponential pattern would exhaust."""
    text = "Her weekly totals were " + " + ".join(str(10 + i) for i in range(400)) + " dollars."
    with cpu_watchdog():
        judge(text)  # the plug-in loads once, not per answer
        _, one = python_lines(lambda: judge(text))
        (passed, _, _), work = python_lines(lambda: judge(text * 50))
    assert passed
    assert work == one


@pytest.mark.parametrize("text", ["4 * 125 - 2 = 500 - 2 = 498", "4 * 125 = 500 - 2 = 498",
                                  "20 * 50% = 10", "(12 / 20) x 100 = 60%", "-3 + 5 = 2"])
def test_common_written_forms_pass(text: str) -> None:
    """Chains, percentages written either way and a leading minus are read correctly."""
    passed, _, reason = judge(text)
    assert passed, reason
