"""What a run would have cost sent to its task's top rung alone: the baseline of the savings.

Recorded on the run's ledger row (``runs.top_usd``, ``runs.top_estimated``) when the run ends,
so every report reads it with one SUM (``docs/dashboard.md``):

- the top rung answered in this run: its own bill for that call, exact (``top_estimated = 0``);
- otherwise an estimate (``top_estimated = 1``): the top rung's prices over the input tokens
  of the first rung that answered (the prompt, as that rung's tokenizer counted it) and the
  output tokens of the answer the run returned (the last rung that answered, when none was
  accepted). Its error is the top rung's tokenizer against the cheaper rung's, and the length
  of the top rung's answer against the one that was given: a terser top model is
  overestimated, a wordier one underestimated. Shadow calls of the top rung measure it: the
  report sets their exact bill beside the estimate over the same runs.

Nothing to price (a cache hit, or no rung answered): no figure (NULL), and the run is left
out of the savings rather than counted as saving nothing.
"""

from __future__ import annotations

from cascade.config import CascadeConfig
from cascade.types import CascadeResult, StepRecord

__all__ = ["TopCost", "always_top"]

# (dollars, estimated): what always-top would have cost, and whether that is an estimate.
TopCost = tuple[float, bool]

_ANSWERED = ("accept", "escalate")


def always_top(config: CascadeConfig, result: CascadeResult) -> TopCost | None:
    """What ``result``'s run would have cost at its task's top rung alone (see the module)."""
    task = config.tasks.get(result.task)
    if task is None or result.cached:
        return None
    top = task.ladder[-1].model
    answered = [s for s in result.steps if s.decision in _ANSWERED]
    if not answered:
        return None
    ran = [s for s in answered if s.model == top]
    if ran:
        return ran[-1].cost_usd, False
    answer = _answer(result, answered)
    price = config.models[top].price
    return price.estimate(answered[0].input_tokens, answer.output_tokens), True


def _answer(result: CascadeResult, answered: list[StepRecord]) -> StepRecord:
    """The step whose answer the run returned: the accepted one, else the last that answered."""
    accepted = [s for s in answered if s.decision == "accept" and s.model == result.model]
    return accepted[-1] if accepted else answered[-1]
