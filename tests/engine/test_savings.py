"""What always-top would have cost (``cascade.engine.savings``): exact when the top rung ran,
else the top rung's prices over the first answer's input and the returned answer's output."""

from __future__ import annotations

from typing import Any

import pytest

from cascade.config import parse_config
from cascade.engine.savings import always_top
from cascade.testing import MockLLMServer
from cascade.types import CascadeResult, StepRecord
from tests.conftest import live_config


@pytest.fixture
def config(server: MockLLMServer) -> Any:
    # mini (0.15/0.60) -> mid (2.5/10) -> sonnet (3/15 per 1M tokens)
    return parse_config(live_config(server, ladder=["mini", "mid", "sonnet"]))


def step(n: int, model: str, decision: str, tin: int, tout: int, cost: float) -> StepRecord:
    return StepRecord("r", "faq", n, model, "p", 1, tin, tout, cost, 1.0, decision)  # type: ignore[arg-type]


def result(model: str, *steps: StepRecord, cached: bool = False) -> CascadeResult:
    return CascadeResult("a", model, True, sum(s.cost_usd for s in steps), 1.0, "r", steps,
                         task="faq", cached=cached)


def test_top_rung_ran_its_bill_is_exact(config: Any) -> None:
    got = always_top(config, result(
        "sonnet", step(1, "mini", "escalate", 10, 2, 1e-6), step(2, "sonnet", "accept", 12, 30,
                                                                   0.25)))
    assert got == (0.25, False)


def test_estimate_first_answer_input_returned_answer_output(config: Any) -> None:
    """mini's 100 tokens in (the prompt as the first rung counted it), mid's 40 out (the
    answer returned), at sonnet's prices; an error step before them adds nothing."""
    got = always_top(config, result(
        "mid", step(1, "mini", "error", 0, 0, 0.0), step(2, "mini", "escalate", 100, 7, 1e-5),
        step(3, "mid", "accept", 120, 40, 1e-4)))
    assert got == (pytest.approx((100 * 3.0 + 40 * 15.0) / 1e6), True)


def test_unaccepted_run_prices_its_last_answer(config: Any) -> None:
    exhausted = CascadeResult("a", "mid", False, 0.0, 1.0, "r", (
        step(1, "mini", "escalate", 50, 5, 0.0), step(2, "mid", "escalate", 60, 25, 0.0)),
        task="faq")
    assert always_top(config, exhausted) == (pytest.approx((50 * 3 + 25 * 15) / 1e6), True)


def test_nothing_to_price(config: Any) -> None:
    assert always_top(config, result("mini", step(1, "mini", "cache", 0, 0, 0.0),
                                     cached=True)) is None
    assert always_top(config, result("", step(1, "mini", "error", 0, 0, 0.0))) is None
    other = CascadeResult("a", "mini", True, 0.0, 1.0, "r", (), task="gone")
    assert always_top(config, other) is None
