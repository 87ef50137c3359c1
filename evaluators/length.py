"""``length``: bounds on characters, words and the provider's reported output tokens."""

from __future__ import annotations

import math
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cascade.evaluation import EvaluatorContext, Tunable
from cascade.formatting import plural
from cascade.types import Completion, Request, Verdict


class Length:
    """Reject answers that are too short (often a refusal or truncation) or too long.

    YAML::

        - {type: length, min_words: 3, max_words: 200, max_output_tokens: 512}
    """

    name = "length"
    cost = 0
    # "Accept all" is min_words 0, never the evaluator dropped: its other bounds still apply.
    tunable: ClassVar[Tunable] = Tunable(
        "min_words", 0.0, math.inf, low_open=False, integer=True, drop=False
    )

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        min_chars: int | None = Field(default=None, ge=0)
        max_chars: int | None = Field(default=None, ge=0)
        min_words: int | None = Field(default=None, ge=0)
        max_words: int | None = Field(default=None, ge=0)
        max_output_tokens: int | None = Field(default=None, ge=0)

        @model_validator(mode="after")
        def _ordered(self) -> Length.Config:
            for low, high in (("min_chars", "max_chars"), ("min_words", "max_words")):
                lo, hi = getattr(self, low), getattr(self, high)
                if lo is not None and hi is not None and lo > hi:
                    raise ValueError(f"{low} ({lo}) is greater than {high} ({hi})")
            return self

    def __init__(self, config: Config, context: EvaluatorContext | None = None):
        self.config = config

    def threshold_value(self, verdict: Verdict, completion: Completion) -> float | None:
        """The answer's word count (passes when >= ``min_words``); None when it failed.

        Give it the verdict of this evaluator without ``min_words`` (the other bounds alone) to
        read any ``min_words``; with its own verdict it holds for the configured one.
        """
        return float(len(completion.text.strip().split())) if verdict.passed else None

    def __call__(self, request: Request, completion: Completion) -> Verdict:
        c = self.config
        text = completion.text.strip()
        chars, words = len(text), len(text.split())
        checks = (
            ("character", chars, c.min_chars, c.max_chars),
            ("word", words, c.min_words, c.max_words),
            ("output token", completion.output_tokens, None, c.max_output_tokens),
        )
        for unit, value, low, high in checks:
            if low is not None and value < low:
                return Verdict(self.name, False, 0.0,
                               f"{plural(value, unit)}, below the minimum {low}")
            if high is not None and value > high:
                return Verdict(self.name, False, 0.0,
                               f"{plural(value, unit)}, above the maximum {high}")
        return Verdict(self.name, True, 1.0,
                       f"{plural(chars, 'character')}, {plural(words, 'word')}")
