"""Confidence gates: ``self_confidence`` (the model says how sure it is) and ``logprob``.

``self_confidence`` asks the model to end its answer with ``Confidence: <0..1>``, parses that
last line, and strips it from the answer the caller gets. ``logprob`` asks the provider for
token log-probabilities and gates on their aggregate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cascade.evaluation import EvaluatorContext, Tunable
from cascade.types import Completion, Message, Request, Verdict

__all__ = [
    "DEFAULT_INSTRUCTION",
    "DEFAULT_WORDS",
    "Found",
    "Logprob",
    "SelfConfidence",
    "parse_confidence",
    "strip_confidence",
    "value_of",
]

DEFAULT_INSTRUCTION = (
    "After your answer, add one final line of the form `Confidence: <number between 0 and 1>` "
    "giving the probability that your answer is correct and complete. "
    "Write nothing after that line."
)

DEFAULT_WORDS: Mapping[str, float] = {
    "very high": 0.95,
    "high": 0.85,
    "medium": 0.6,
    "moderate": 0.6,
    "low": 0.3,
    "very low": 0.1,
}

# Markdown a model wraps around a line: emphasis, code, quotes, headings, list bullets.
_DECOR = re.compile(r"[*_`]+")
_LEAD = re.compile(r"^\s*(?:[#>]+\s*|[-+]\s+)*")
_NUMBER = r"(?:\d+(?:\.\d+)?|\.\d+)"
_VALUE = (
    rf"(?:{_NUMBER}\s*%|{_NUMBER}\s*(?:/|out\s+of)\s*{_NUMBER}|{_NUMBER}"
    r"|[a-z]+(?:[\s-]+[a-z]+){0,2})"
)
# Trailing matter allowed after a value: a short parenthetical aside and closing punctuation.
_TAIL = r"\s*(?:\([^()]{0,80}\))?\s*[.!]?\s*"
_LABEL = r"(?:(?:my|overall|final)\s+)?confidence(?:\s+(?:level|score|rating))?(?:\s+is)?"
_SEP = r"\s*[:=\-\u2013\u2014]\s*"
# A whole line that is a confidence statement with an explicit separator (value may be garbage).
_LABEL_LINE = re.compile(rf"^{_LABEL}{_SEP}(?P<raw>.*?)\s*$", re.I)
# The same without a separator ("Confidence 0.9", "Confidence is high"): the value must parse.
_LABEL_SPACE = re.compile(rf"^{_LABEL}\s+(?P<raw>{_VALUE}){_TAIL}$", re.I)
# A confidence statement closing the last line, after the answer text on the same line.
_TRAILING = re.compile(rf"^(?P<body>.*\S)\s+{_LABEL}(?:{_SEP}|\s+)(?P<raw>{_VALUE}){_TAIL}$", re.I)
# A bare value on its own last line. A bare integer ("1", "42") is far more often the end of
# the answer than a confidence, so only a decimal, a percentage or a fraction counts.
_BARE = re.compile(rf"^(?P<raw>{_NUMBER}\s*%|{_NUMBER}\s*/\s*{_NUMBER}|\d*\.\d+){_TAIL}$")


@dataclass(frozen=True, slots=True)
class Found:
    """Where a confidence statement sits in an answer and what it says.

    Attributes:
        value: The confidence in 0..1, or None when the statement is unparseable.
        raw: The statement's value as written.
        start / end: The character span to cut out of the answer (``finalize``).
    """

    value: float | None
    raw: str
    start: int
    end: int


def _normalize_word(word: str) -> str:
    return " ".join(word.lower().replace("-", " ").split())


def value_of(raw: str, words: Mapping[str, float]) -> float | None:
    """Turn ``0.85``, ``85%``, ``8/10``, ``8 out of 10`` or ``high`` into 0..1; else None.

    A bare number above 1 is ambiguous (7 out of 10? 70 percent?) and is not guessed at:
    write ``70%`` or ``7/10``.
    """
    text = _DECOR.sub("", raw).strip().rstrip(".!").strip()
    text = re.sub(r"\s*\([^()]*\)\s*$", "", text)
    if m := re.fullmatch(rf"({_NUMBER})\s*%", text):
        value = float(m.group(1)) / 100
    elif m := re.fullmatch(rf"({_NUMBER})\s*(?:/|out\s+of)\s*({_NUMBER})", text, re.I):
        numerator, denominator = float(m.group(1)), float(m.group(2))
        if denominator <= 0:
            return None
        value = numerator / denominator
    elif re.fullmatch(_NUMBER, text):
        value = float(text)
    else:
        return words.get(_normalize_word(text))
    return value if 0.0 <= value <= 1.0 else None


def _lines(text: str) -> list[tuple[int, int, str]]:
    """(start, end, line) of each non-blank line, end excluding the newline."""
    out = []
    for m in re.finditer(r"[^\r\n]*", text):
        if m.group().strip():
            out.append((m.start(), m.end(), m.group()))
    return out


def _clean(line: str) -> str:
    return _LEAD.sub("", _DECOR.sub("", line)).strip()


def parse_confidence(text: str, words: Mapping[str, float] = DEFAULT_WORDS) -> Found | None:
    """Find the confidence statement that closes an answer.

    Only the end of the answer counts, so a number in the answer body is never mistaken for a
    confidence. In order:

    1. the last non-blank line, if it is a confidence line (``Confidence: 0.9``,
       ``**Confidence:** 8/10``, ``Confidence - high``, ``confidence=95%``). With an explicit
       separator (``:``, ``=``, a dash) the line is the statement even when its value cannot
       be read (``Confidence: banana`` is unparseable, not missing);
    2. the last non-blank line, if it ends with a readable statement after the answer text
       (``Paris. Confidence: 0.9``), or is a bare readable value (``0.85``, ``85%``, ``8/10``)
       below other lines;
    3. otherwise the last line anywhere that is a readable confidence line, for models that
       add a closing remark after it.

    Args:
        text: The answer.
        words: Lower-case confidence words and their values.

    Returns:
        A ``Found`` (its ``value`` is None when the statement cannot be read), or None when the
        answer states no confidence.
    """
    lines = _lines(text)
    if not lines:
        return None
    start, end, last = lines[-1]
    cleaned = _clean(last)
    if m := _LABEL_LINE.match(cleaned):
        return Found(value_of(m["raw"], words), m["raw"], start, end)
    candidates = [(_LABEL_SPACE.match(cleaned), start)]
    if m := _TRAILING.match(cleaned):
        candidates.append((m, _cut_point(text, start, end)))
    if len(lines) > 1:
        candidates.append((_BARE.match(cleaned), start))
    for m, cut in candidates:
        if m and (value := value_of(m["raw"], words)) is not None:
            return Found(value, m["raw"], cut, end)
    for start, end, line in reversed(lines[:-1]):
        cleaned = _clean(line)
        m = _LABEL_LINE.match(cleaned) or _LABEL_SPACE.match(cleaned)
        if m and (value := value_of(m["raw"], words)) is not None:
            return Found(value, m["raw"], start, end)
    return None


def _cut_point(text: str, start: int, end: int) -> int:
    """Where a trailing statement begins in the raw line, its opening markdown included."""
    line = text[start:end]
    found = list(re.finditer(rf"\b{_LABEL}", line, re.I))
    at = found[-1].start() if found else 0
    while at > 0 and line[at - 1] in "*_`":
        at -= 1
    return start + at


def strip_confidence(text: str, words: Mapping[str, float] = DEFAULT_WORDS) -> str:
    """The answer without its confidence statement (unchanged when there is none)."""
    found = parse_confidence(text, words)
    if found is None:
        return text
    before, after = text[: found.start], text[found.end :]
    if not after.strip():
        return before.rstrip()
    # The statement was a whole line: drop it with its own line break, keep the rest as is.
    return before + (after[2:] if after.startswith("\r\n") else after[1:])


def _stated(verdict: Verdict) -> float | None:
    """The score a confidence gate compares with ``min``; None when there is nothing to compare.

    A failure scored 0 is "no value" (missing, unreadable or empty), never a pass.
    """
    if verdict.score is None or (not verdict.passed and verdict.score == 0.0):
        return None
    return verdict.score


def _with_instruction(messages: tuple[Message, ...], instruction: str) -> tuple[Message, ...]:
    """Add the instruction to the first system message, or put one at the start."""
    out = [dict(m) for m in messages]
    for message in out:
        if message.get("role") in ("system", "developer"):
            content = message.get("content")
            if isinstance(content, str):
                if instruction not in content:
                    message["content"] = (
                        f"{content.rstrip()}\n\n{instruction}" if content.strip() else instruction
                    )
                return tuple(out)
            if isinstance(content, list):  # OpenAI content parts
                message["content"] = [*content, {"type": "text", "text": instruction}]
                return tuple(out)
    return ({"role": "system", "content": instruction}, *out)


class SelfConfidence:
    """Ask the model how sure it is, and escalate when it says it is not sure enough.

    YAML::

        - {type: self_confidence, min: 0.8}

    ``prepare`` adds the instruction to the first ``system`` (or ``developer``) message, or
    inserts a system message at the start when there is none; the Anthropic provider folds
    system messages into its ``system`` parameter, so it gets the instruction too.
    ``finalize`` removes the confidence statement from the answer returned to the caller.
    The score is the stated confidence.
    """

    name = "self_confidence"
    cost = 0
    tunable: ClassVar[Tunable] = Tunable("min", 0.0, 1.0)

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        min: float = Field(default=0.7, ge=0, le=1)
        instruction: str = Field(default=DEFAULT_INSTRUCTION, min_length=1)
        words: dict[str, float] = Field(default_factory=dict)

        @field_validator("words")
        @classmethod
        def _word_values(cls, value: dict[str, float]) -> dict[str, float]:
            out = {}
            for word, number in value.items():
                key = _normalize_word(word)
                if not key:
                    raise ValueError("a confidence word cannot be empty")
                if not 0.0 <= number <= 1.0:
                    raise ValueError(f"the value of {word!r} must be in 0..1, got {number}")
                out[key] = number
            return out

    def __init__(self, config: Config, context: EvaluatorContext | None = None):
        self.config = config
        self.words: Mapping[str, float] = {**DEFAULT_WORDS, **config.words}

    def __repr__(self) -> str:
        return f"SelfConfidence(min={self.config.min})"

    def prepare(
        self, messages: tuple[Message, ...], params: dict[str, Any]
    ) -> tuple[tuple[Message, ...], dict[str, Any]]:
        return _with_instruction(tuple(messages), self.config.instruction.strip()), dict(params)

    def finalize(self, text: str) -> str:
        return strip_confidence(text, self.words)

    def threshold_value(self, verdict: Verdict, completion: Completion) -> float | None:
        """The stated confidence (passes when >= ``min``); None when it is missing or unread."""
        return _stated(verdict)

    def __call__(self, request: Request, completion: Completion) -> Verdict:
        text = completion.text
        if not text.strip():
            return Verdict(self.name, False, 0.0, "empty answer")
        found = parse_confidence(text, self.words)
        if found is None:
            return Verdict(
                self.name,
                False,
                0.0,
                "confidence missing: the answer does not end with 'Confidence: <0..1>'",
            )
        if found.value is None:
            return Verdict(self.name, False, 0.0, f"confidence unparseable: {found.raw[:80]!r}")
        if found.value < self.config.min:
            return Verdict(
                self.name,
                False,
                found.value,
                f"confidence {found.value:g}, below the minimum {self.config.min:g}",
            )
        return Verdict(self.name, True, found.value, f"confidence {found.value:g}")


class Logprob:
    """Gate on the model's own token probabilities (OpenAI-style ``logprobs``).

    YAML::

        - {type: logprob, min: 0.8, aggregate: mean}

    ``mean`` is the geometric mean token probability, exp(mean logprob); ``min`` is the least
    likely token's probability; ``first`` is the first token's (useful for one-word labels).
    The score is that probability.

    Raises:
        ConfigError: at load time, when the rung's provider cannot return log-probabilities.
    """

    name = "logprob"
    cost = 0
    tunable: ClassVar[Tunable] = Tunable("min", 0.0, 1.0)

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        min: float = Field(gt=0, le=1)
        aggregate: Literal["mean", "min", "first"] = "mean"

    def __init__(self, config: Config, context: EvaluatorContext | None = None):
        self.config = config
        if context is not None and not context.supports_logprobs:
            raise context.error(
                f"the {context.provider_type} provider cannot return log-probabilities; "
                f"use self_confidence or llm_judge on the rung of model {context.model!r}",
                "type",
            )

    def __repr__(self) -> str:
        return f"Logprob(min={self.config.min}, aggregate={self.config.aggregate!r})"

    def prepare(
        self, messages: tuple[Message, ...], params: dict[str, Any]
    ) -> tuple[tuple[Message, ...], dict[str, Any]]:
        return tuple(messages), {**params, "logprobs": True}

    def threshold_value(self, verdict: Verdict, completion: Completion) -> float | None:
        """The aggregate token probability (passes when >= ``min``); None when there is none."""
        return _stated(verdict)

    def __call__(self, request: Request, completion: Completion) -> Verdict:
        if not completion.text.strip():
            return Verdict(self.name, False, 0.0, "empty answer")
        logprobs = completion.logprobs
        if not logprobs:
            return Verdict(self.name, False, None, "provider returned no log-probabilities")
        if any(math.isnan(lp) or lp == math.inf for lp in logprobs):
            return Verdict(self.name, False, None, "provider returned invalid log-probabilities")
        how = self.config.aggregate
        if how == "mean":
            logprob = math.fsum(logprobs) / len(logprobs)
        elif how == "min":
            logprob = min(logprobs)
        else:
            logprob = logprobs[0]
        # A positive log-probability is a provider rounding artefact: a probability of 1.
        probability = math.exp(min(logprob, 0.0))
        shown = f"{how} token probability {probability:.3f}"
        if probability < self.config.min:
            return Verdict(
                self.name, False, probability, f"{shown}, below the minimum {self.config.min:g}"
            )
        return Verdict(self.name, True, probability, shown)
