"""``arithmetic``: re-check the arithmetic a model wrote down in a worked answer.

Math answers from small models are often right in method and wrong in one multiplication.
This evaluator recomputes every equation it can read and rejects the answer when one is wrong:
calculator annotations such as ``<<12*3=36>>`` and plain ``12 x 3 = 36`` or
``(12 / 20) * 100 = 60%``.
Numbers may carry ``$``, ``%`` and thousands separators. Only + - * / and parentheses are
evaluated, with ``ast`` (never ``eval``).
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Iterator

from pydantic import BaseModel, ConfigDict, Field

from cascade.evaluation import EvaluatorContext
from cascade.types import Completion, Request, Verdict

_NUM = r"\$?\d[\d,]*(?:\.\d+)?%?"
_OPERAND = r"\(?\s*" + _NUM + r"\s*\)?"
_EQUATION = re.compile(
    r"((?:" + _OPERAND + r"\s*(?:[-+*/x×÷]|\\\*)\s*)+" + _OPERAND + r")"  # noqa: RUF001
    r"\s*=\s*(" + _NUM + ")"
)
_ANNOTATION = re.compile(r"<<([^=<>]{1,200})=([^<>]{1,50})>>")
_OPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _clean(text: str) -> str:
    for old, new in (
        ("\\*", "*"),
        ("$", ""),
        (",", ""),
        ("%", ""),
        ("×", "*"),  # noqa: RUF001  (models write the multiplication sign)
        ("÷", "/"),
        ("x", "*"),
    ):
        text = text.replace(old, new)
    return text


def _value(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _value(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left), _value(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand)
    raise ValueError("not plain arithmetic")


def _compute(expression: str) -> float | None:
    try:
        return _value(ast.parse(_clean(expression).strip(), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def equations(text: str) -> Iterator[tuple[str, float, float]]:
    """Yield ``(written, computed, claimed)`` for every equation that can be recomputed."""
    for match in _ANNOTATION.finditer(text):
        left, right = _compute(match.group(1)), _compute(match.group(2))
        if left is not None and right is not None:
            yield match.group(0), left, right
    plain = _ANNOTATION.sub("", text)
    for match in _EQUATION.finditer(plain):
        left, right = _compute(match.group(1)), _compute(match.group(2))
        if left is not None and right is not None:
            yield match.group(0).strip(), left, right


class Arithmetic:
    """Reject worked answers whose written-out arithmetic is wrong.

    YAML::

        - {type: arithmetic}                 # any wrong equation rejects
        - {type: arithmetic, tolerance: 0.01, require_equations: true}
    """

    name = "arithmetic"
    cost = 0

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        tolerance: float = Field(default=0.01, ge=0)
        relative_tolerance: float = Field(default=0.001, ge=0)
        require_equations: bool = False

    def __init__(self, config: Config, context: EvaluatorContext | None = None):
        self.config = config

    def _wrong(self, computed: float, claimed: float) -> bool:
        # Rounded intermediate results ("= 33.33") are fine; a different number is not.
        allowed = max(self.config.tolerance, self.config.relative_tolerance * abs(claimed))
        return abs(computed - claimed) > allowed

    def __call__(self, request: Request, completion: Completion) -> Verdict:
        checked = list(equations(completion.text))
        if not checked:
            return Verdict(
                self.name, not self.config.require_equations, None, "no equations to check"
            )
        wrong = [(w, c) for w, c, claimed in checked if self._wrong(c, claimed)]
        score = 1 - len(wrong) / len(checked)
        if wrong:
            written, computed = wrong[0]
            return Verdict(
                self.name,
                False,
                score,
                f"{len(wrong)} of {len(checked)} equations wrong, e.g. "
                f"{written!r} (it is {computed:g})",
            )
        return Verdict(self.name, True, score, f"all {len(checked)} equations check out")
