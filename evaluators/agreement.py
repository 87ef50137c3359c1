"""``agreement``: accept an answer when it agrees with the answers of the earlier rungs.

Self-consistency across models: when a cheap model and a bigger one reach the same final answer,
the bigger one's answer is probably right and the top rung need not be paid for. The earlier
answers come from ``request.history``, so on the first rung there is nothing to agree with.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cascade.evaluation import EvaluatorContext, Tunable
from cascade.types import Completion, Request, Verdict

__all__ = ["RECIPES", "Agreement", "normalize"]

_NUMBER = r"-?[\d,]*\.?\d+"
RECIPES: dict[str, tuple[str, ...]] = {
    # The last number in the answer: "... so she pays $1,234.50." -> 1234.50
    "final_number": (f"({_NUMBER})",),
    # GSM8K style: the number after "####" when there is one, else the last number.
    "gsm8k": (rf"####\s*\$?\s*({_NUMBER})", f"({_NUMBER})"),
    # LaTeX \boxed{...} (innermost braces only), else the last number.
    "boxed": (r"\\boxed\{([^{}]*)\}", f"({_NUMBER})"),
    # A multiple-choice letter A-E: "Answer: (C)" or a line holding just the letter.
    "choice": (
        r"\b(?i:answer)\s*(?:is|:)?\s*\(?([A-E])\)?(?![A-Za-z])",
        r"(?m)^\s*\(?([A-E])\)?[.):]?\s*$",
    ),
}
_NUMERIC = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?")
_SNIPPET = 40


def normalize(value: str, *, numeric: bool = True) -> str | Decimal:
    """The comparable form of an answer: case-folded, whitespace collapsed, and a number when
    it reads as one (commas, ``$`` and trailing zeros after the point do not matter).

    Args:
        value: The extracted answer (or the whole answer).
        numeric: Also compare numbers by value.

    Returns:
        A ``Decimal`` for a number, else the normalized string.
    """
    text = " ".join(value.casefold().split())
    text = text.strip(" *_`\"'").rstrip(".!?;:,").strip(" *_`\"'")
    if numeric:
        compact = text.replace(",", "").replace("$", "").replace(" ", "")
        if _NUMERIC.fullmatch(compact):
            try:
                return Decimal(compact)
            except InvalidOperation:  # pragma: no cover - the pattern only admits valid numbers
                pass
    return text


def _short(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= _SNIPPET else text[: _SNIPPET - 3] + "...")


class Agreement:
    """Pass when this rung's answer agrees with enough of the earlier rungs' answers.

    YAML::

        tasks:
          math:
            ladder: [small, medium, large]
            evaluators:
              - {type: agreement, recipe: gsm8k, min_agree: 0.5}

    The score is the share of earlier answers that agree. With no earlier answer (the first rung)
    the verdict is ``when_first`` (fail by default, so the first rung always escalates and the
    second rung is accepted when it agrees with the first).

    Raises:
        ConfigError: an ``extract`` pattern does not compile.
    """

    name = "agreement"
    cost = 0
    tunable: ClassVar[Tunable] = Tunable("min_agree", 0.0, 1.0)
    # its value compares with the earlier rungs' answers: not a confidence of the answer alone,
    # so calibration's fixed scheme does not rely on it (``calibration.levels.own_signal``)
    reads_history: ClassVar[bool] = True

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        extract: tuple[str, ...] | None = None
        recipe: Literal["final_number", "gsm8k", "boxed", "choice"] | None = None
        min_agree: float = Field(default=0.5, gt=0, le=1)
        numeric: bool = True
        when_first: Literal["pass", "fail"] = "fail"

        @field_validator("extract", mode="before")
        @classmethod
        def _one_or_many(cls, value: object) -> object:
            return [value] if isinstance(value, str) else value

        @model_validator(mode="after")
        def _not_both(self) -> Agreement.Config:
            if self.extract is not None and self.recipe is not None:
                raise ValueError("give 'extract' or 'recipe', not both")
            if self.extract is not None and not self.extract:
                raise ValueError("'extract' needs at least one pattern")
            return self

    def __init__(self, config: Config, context: EvaluatorContext):
        self.config = config
        sources = config.extract or (RECIPES[config.recipe] if config.recipe else ())
        self.patterns: list[re.Pattern[str]] = []
        for i, pattern in enumerate(sources):
            try:
                self.patterns.append(re.compile(pattern))
            except re.error as exc:
                key = (
                    "extract"
                    if isinstance(config.extract, tuple) and len(sources) == 1
                    else f"extract[{i}]"
                )
                raise context.error(f"invalid regular expression: {exc}", key) from exc

    def extract(self, text: str) -> str | None:
        """The answer to compare: the last match of the first pattern that matches at all.

        A match's value is its first group that took part, or the whole match if it has none.
        Without patterns it is the whole answer. Empty values count as no match.
        """
        if not self.patterns:
            return text if text.strip() else None
        for pattern in self.patterns:
            last = None
            for m in pattern.finditer(text):
                value = next((g for g in m.groups() if g is not None), m.group())
                if value.strip():
                    last = value
            if last is not None:
                return last
        return None

    def threshold_value(self, verdict: Verdict, completion: Completion) -> float | None:
        """The share of earlier answers that agree (passes when >= ``min_agree``).

        With no earlier answer ``when_first`` decided, whatever the threshold.
        """
        if verdict.score is None:
            return math.inf if verdict.passed else None
        return verdict.score

    def __call__(self, request: Request, completion: Completion) -> Verdict:
        earlier = request.history
        if not earlier:
            return Verdict(
                self.name,
                self.config.when_first == "pass",
                None,
                "no earlier answer to compare with",
            )
        mine = self.extract(completion.text)
        if mine is None:
            reason = (
                "the extract pattern found nothing in this answer"
                if self.patterns
                else "this answer is empty"
            )
            return Verdict(self.name, False, 0.0, reason)
        key = normalize(mine, numeric=self.config.numeric)
        agree = 0
        seen = []
        for past in earlier:
            theirs = self.extract(past.text)
            same = theirs is not None and normalize(theirs, numeric=self.config.numeric) == key
            agree += same
            seen.append(f"{past.model or '?'}={_short(theirs) if theirs is not None else 'none'}")
        share = agree / len(earlier)
        passed = share >= self.config.min_agree
        reason = (
            f"{agree} of {len(earlier)} earlier answers agree with {_short(mine)} "
            f"(need {self.config.min_agree:.0%}); earlier: {', '.join(seen)}"
        )
        return Verdict(self.name, passed, share, reason)
