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
from cascade.formatting import plural
from cascade.types import Completion, Request, Verdict

_ANNOTATION = re.compile(r"<<([^=<>]{1,200})=([^<>]{1,50})>>")
_OPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
# What a written-out expression is made of. Sides are found by scanning outwards from each "="
# over these characters: linear in the answer's length, where a regular expression for
# "number (operator number)+" backtracks exponentially on long sums without an "=".
_SIDE = set("0123456789.,$%()+-*/x\\ \t") | {"\u00d7", "\u00f7"}  # plus the signs x and ÷
_START = set("0123456789($-")
_MAX_SIDE = 200
_MAX_EQUATIONS = 2000


def _clean(text: str, percent: str) -> str:
    for old, new in (
        ("\\*", "*"),
        ("$", ""),
        (",", ""),
        ("\u00d7", "*"),
        ("\u00f7", "/"),
        ("x", "*"),
    ):
        text = text.replace(old, new)
    return text.replace("%", percent)


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


def _readings(expression: str) -> set[float]:
    """Every value the written expression can mean.

    Models write "50%" both as a number (``60%`` after ``* 100``) and as a fraction
    (``20 * 50% = 10``), so both readings are kept; an equation is wrong only if no reading
    of either side matches.
    """
    values = set()
    for percent in ("", "/100"):
        try:
            values.add(_value(ast.parse(_clean(expression, percent).strip(), mode="eval")))
        except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, OverflowError):
            continue
    return values


def _has_operator(expression: str) -> bool:
    body = expression.strip().lstrip("-")
    return any(op in body for op in "+-*/x\u00d7\u00f7")


def _sides(text: str, at: int) -> tuple[str, str]:
    start = at
    while start > 0 and text[start - 1] in _SIDE and at - start < _MAX_SIDE:
        start -= 1
    left = text[start:at]
    while left and left[0] not in _START:  # a word's trailing "x", a stray operator
        left = left[1:]
    if left.startswith("-") and start > 0 and text[start - 1].isalnum():
        left = left[1:]  # "2019-2020": a hyphen in a word, not a minus
    end = at + 1
    while end < len(text) and text[end] in _SIDE and end - at < _MAX_SIDE:
        end += 1
    right = text[at + 1 : end].rstrip(" \t.,+-*/")
    return left, right


def equations(text: str) -> Iterator[tuple[str, set[float], set[float]]]:
    """Yield ``(written, left readings, right readings)`` for each equation that computes.

    The right side counts both as a whole (``= 500 - 2``) and as its first number
    (``4 * 125 = 500 - 2 = 498``, where each step restarts from the last result).
    """
    for match in _ANNOTATION.finditer(text):
        lvalues, rvalues = _readings(match.group(1)), _readings(match.group(2))
        if lvalues and rvalues:
            yield match.group(0), lvalues, rvalues
    plain = _ANNOTATION.sub("", text)
    seen = 0
    at = plain.find("=")
    while at != -1 and seen < _MAX_EQUATIONS:
        seen += 1
        left, right = _sides(plain, at)
        if _has_operator(left) and right.strip():
            first = right.strip().split()[0]
            lvalues, rvalues = _readings(left), _readings(right) | _readings(first)
            if lvalues and rvalues:
                yield f"{left.strip()} = {right.strip()}", lvalues, rvalues
        at = plain.find("=", at + 1)


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

    def _matches(self, computed: float, claimed: float) -> bool:
        # Rounded intermediate results ("= 33.33") are fine; a different number is not.
        allowed = max(self.config.tolerance, self.config.relative_tolerance * abs(claimed))
        return abs(computed - claimed) <= allowed

    def __call__(self, request: Request, completion: Completion) -> Verdict:
        checked = list(equations(completion.text))
        if not checked:
            return Verdict(
                self.name, not self.config.require_equations, None, "no equations to check"
            )
        wrong = [
            (written, min(left))
            for written, left, right in checked
            if not any(self._matches(c, r) for c in left for r in right)
        ]
        score = 1 - len(wrong) / len(checked)
        if wrong:
            written, computed = wrong[0]
            return Verdict(
                self.name,
                False,
                score,
                f"{len(wrong)} of {plural(len(checked), 'equation')} wrong, e.g. "
                f"{written!r} (it is {computed:g})",
            )
        checks_out = (
            "the one equation checks out"
            if len(checked) == 1
            else f"all {len(checked)} equations check out"
        )
        return Verdict(self.name, True, score, checks_out)
