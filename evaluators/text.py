"""Text rules: ``regex``, ``contains``, ``not_contains`` and the ``refusal`` preset.

All four are pure string checks (cost 0) that never call a model.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cascade.evaluation import EvaluatorContext
from cascade.types import Completion, Request, Verdict

__all__ = ["REFUSAL_PATTERNS", "Contains", "NotContains", "Refusal", "Regex"]

_SNIPPET = 80

_FLAGS: dict[str, re.RegexFlag] = {
    "i": re.IGNORECASE,
    "ignorecase": re.IGNORECASE,
    "m": re.MULTILINE,
    "multiline": re.MULTILINE,
    "s": re.DOTALL,
    "dotall": re.DOTALL,
    "x": re.VERBOSE,
    "verbose": re.VERBOSE,
    "a": re.ASCII,
    "ascii": re.ASCII,
}


def _short(text: str, limit: int = _SNIPPET) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _listing(items: list[str]) -> str:
    return ", ".join(_short(i) for i in items)


class Regex:
    """Pass when a regular expression matches the answer (or, with ``must_match: false``, not).

    YAML::

        - {type: regex, pattern: '^\\d{3}-\\d{4}$', mode: fullmatch}
        - {type: regex, pattern: 'lorem ipsum', flags: [i], must_match: false}

    The answer's surrounding whitespace is stripped first, so ``fullmatch`` does not trip over
    the trailing newline many models add.

    Raises:
        ConfigError: the pattern does not compile (at load time, naming ``pattern``).
    """

    name = "regex"
    cost = 0

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        pattern: str
        flags: tuple[str, ...] = ()
        must_match: bool = True
        mode: Literal["search", "match", "fullmatch"] = "search"

        @field_validator("flags", mode="before")
        @classmethod
        def _split(cls, value: Any) -> Any:
            if isinstance(value, str):  # flags: i  or  flags: ims  or  flags: IGNORECASE
                low = value.lower()
                return list(low) if low not in _FLAGS and set(low) <= set("imsxa") else [low]
            return value

        @field_validator("flags")
        @classmethod
        def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
            for flag in value:
                if flag.lower() not in _FLAGS:
                    raise ValueError(
                        f"unknown flag {flag!r} (use i, m, s, x, a or IGNORECASE, "
                        "MULTILINE, DOTALL, VERBOSE, ASCII)"
                    )
            return value

    def __init__(self, config: Config, context: EvaluatorContext):
        self.config = config
        flags = re.RegexFlag(0)
        for flag in config.flags:
            flags |= _FLAGS[flag.lower()]
        try:
            self.pattern = re.compile(config.pattern, flags)
        except re.error as exc:
            raise context.error(f"invalid regular expression: {exc}", "pattern") from exc
        self._find = getattr(self.pattern, config.mode)

    def __call__(self, request: Request, completion: Completion) -> Verdict:
        match: re.Match[str] | None = self._find(completion.text.strip())
        shown = self.pattern.pattern
        shown = f"/{shown if len(shown) <= _SNIPPET else shown[: _SNIPPET - 3] + '...'}/"
        if self.config.must_match:
            if match is None:
                return Verdict(self.name, False, 0.0, f"no {self.config.mode} of {shown}")
            return Verdict(self.name, True, 1.0, f"matched {_short(match.group())}")
        if match is not None:
            return Verdict(
                self.name, False, 0.0, f"forbidden pattern {shown} matched {_short(match.group())}"
            )
        return Verdict(self.name, True, 1.0, f"no {self.config.mode} of {shown}")


def _terms(value: list[str] | None) -> list[str] | None:
    if value is not None and any(not term for term in value):
        raise ValueError("empty strings match every answer; remove them")
    return value


class Contains:
    """Pass when the answer contains required substrings.

    YAML::

        - {type: contains, any: [Paris, paris], all: ["Eiffel"], case_sensitive: false}

    ``all`` needs every term, ``any`` at least one; with both, both must hold. The score is the
    share of checks met, counting each ``all`` term and the ``any`` group as one check each.
    """

    name = "contains"
    cost = 0

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        any_: list[str] | None = Field(default=None, alias="any", min_length=1)
        all_: list[str] | None = Field(default=None, alias="all", min_length=1)
        case_sensitive: bool = False

        _no_empty = field_validator("any_", "all_")(_terms)

        @model_validator(mode="after")
        def _something(self) -> Contains.Config:
            if self.any_ is None and self.all_ is None:
                raise ValueError("give 'any', 'all' or both")
            return self

    def __init__(self, config: Config, context: EvaluatorContext | None = None):
        self.config = config

    def _fold(self, text: str) -> str:
        return text if self.config.case_sensitive else text.casefold()

    def __call__(self, request: Request, completion: Completion) -> Verdict:
        text = self._fold(completion.text)
        need_all = self.config.all_ or []
        missing = [t for t in need_all if self._fold(t) not in text]
        met, checks, problems = len(need_all) - len(missing), len(need_all), []
        if missing:
            problems.append(f"missing {_listing(missing)}")
        if self.config.any_:
            checks += 1
            hit = next((t for t in self.config.any_ if self._fold(t) in text), None)
            if hit is None:
                problems.append(f"none of {_listing(self.config.any_)}")
            else:
                met += 1
        if problems:
            return Verdict(self.name, False, met / checks, "; ".join(problems))
        return Verdict(self.name, True, 1.0, "contains every required term")


class NotContains:
    """Fail when the answer contains any forbidden substring.

    YAML::

        - {type: not_contains, any: ["lorem ipsum", "TODO"], case_sensitive: false}
    """

    name = "not_contains"
    cost = 0

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        any_: list[str] = Field(alias="any", min_length=1)
        case_sensitive: bool = False

        _no_empty = field_validator("any_")(_terms)

    def __init__(self, config: Config, context: EvaluatorContext | None = None):
        self.config = config

    def __call__(self, request: Request, completion: Completion) -> Verdict:
        fold = (lambda s: s) if self.config.case_sensitive else str.casefold
        text = fold(completion.text)
        found = [t for t in self.config.any_ if fold(t) in text]
        if found:
            return Verdict(self.name, False, 0.0, f"contains forbidden {_listing(found)}")
        return Verdict(self.name, True, 1.0, "contains no forbidden term")


# Each pattern is tried at the start of a sentence (never in the middle of one) within the first
# ``max_chars_scanned`` characters, case-insensitively, after curly quotes become straight ones.
_I_CANT = (
    r"I\s*(?:can(?:'?t|not| not)|am\s+unable\s+to|'m\s+unable\s+to|am\s+not\s+able\s+to"
    r"|'m\s+not\s+able\s+to|won'?t(?:\s+be\s+able\s+to)?|will\s+not(?:\s+be\s+able\s+to)?"
    r"|am\s+not\s+(?:going|allowed|permitted)\s+to|'m\s+not\s+(?:going|allowed|permitted)"
    r"\s+to|(?:must|have\s+to|need\s+to)\s+(?:respectfully\s+)?decline\s+to)"
)
# Only verbs of helping: "I can't stress enough..." or "I'm unable to find a bug" pass.
_HELP = (
    r"\s+(?:help(?!\s+but\b)|assist|provide|comply|fulfil|fulfill|support|answer|respond"
    r"|engage|participate|generate|create|write|produce|share|give|offer|discuss|do\s+(?:that"
    r"|this|so)|complete|continue|process|accommodate|access|browse|view|open)\b"
)
REFUSAL_PATTERNS: tuple[str, ...] = (
    # "I can't help with that", "I'm unable to provide ...", "I won't be able to assist"
    _I_CANT + _HELP,
    # "I'm sorry, but I can't help with that"; "Sorry, I cannot assist"; "Apologies, but I won't"
    r"(?:I'?m\s+|I\s+am\s+)?(?:really\s+|very\s+|so\s+|truly\s+)?(?:sorry|afraid)"
    r"|(?:my\s+)?apologies|I\s+apologi[sz]e",
    # "As an AI language model, ..." and "As an AI, I don't/can't ..."
    r"As\s+an\s+AI\s+(?:language\s+)?model\b"
    r"|As\s+an\s+AI(?:\s+assistant)?,?\s+I\s+(?:don'?t|do\s+not|can'?t|cannot|am\s+not|'m\s+not)",
    # "I must decline", "I have to respectfully decline this request"
    r"I\s+(?:must|have\s+to|need\s+to|will\s+have\s+to)\s+(?:respectfully\s+|politely\s+)?decline",
    # "Unfortunately, I cannot ...", "Regrettably I'm unable to ..."
    r"(?:Unfortunately|Regrettably),?\s+" + _I_CANT + _HELP,
    # "That's not something I can help with", "This request goes against my guidelines"
    r"(?:That|This)(?:'s|\s+is)\s+not\s+something\s+I\s+(?:can|am\s+able\s+to|'m\s+able\s+to)",
    r"(?:This|That|Your)\s+request\s+(?:goes\s+against|violates|is\s+against)",
)
# The sorry/afraid/apologies openers only count when a refusal of the same sentence follows,
# so "Sorry for the delay, here is the code" and "I'm sorry to hear that" pass.
_APOLOGY_THEN = re.compile(
    r"[^.!?\n]*?\b" + _I_CANT + _HELP + r"|[^.!?\n]*?\bI\s+(?:must|have\s+to"
    r"|need\s+to)\s+(?:respectfully\s+|politely\s+)?decline"
    r"|,?\s+(?:but\s+)?(?:that'?s|this\s+is)\s+not\s+something\s+I",
    re.IGNORECASE,
)
# Markdown emphasis, headings and list bullets may precede a sentence; quotes may not: a
# sentence that opens with a quote mark or ">" is quoting someone, not refusing.
_SENTENCE_START = re.compile(r"(?:^|(?<=[.!?])\s+|\n\s*)[\s*_#(\[-]*")
_CURLY = str.maketrans(
    {"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " "}
)


class Refusal:
    """Fail when the answer opens with a refusal ("I'm sorry, but I can't help with that").

    YAML::

        - {type: refusal, extra_patterns: ["I do not have access to"], max_chars_scanned: 300}

    Only the start of each sentence in the first ``max_chars_scanned`` characters is checked,
    so a long answer that quotes a refusal later, or mid-sentence, is not rejected.
    ``extra_patterns`` are regular expressions matched the same way (case-insensitive, at a
    sentence start); begin one with ``.*?`` to match anywhere in those sentences.

    Raises:
        ConfigError: an extra pattern does not compile (naming ``extra_patterns[i]``).
    """

    name = "refusal"
    cost = 0

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        extra_patterns: list[str] = Field(default_factory=list)
        max_chars_scanned: int = Field(default=300, ge=1)

    def __init__(self, config: Config, context: EvaluatorContext):
        self.config = config
        self._builtin = [re.compile(p, re.IGNORECASE) for p in REFUSAL_PATTERNS]
        self._apology = self._builtin[1]
        self._extra = []
        for i, pattern in enumerate(config.extra_patterns):
            try:
                self._extra.append(re.compile(pattern, re.IGNORECASE))
            except re.error as exc:
                raise context.error(
                    f"invalid regular expression: {exc}", f"extra_patterns[{i}]"
                ) from exc

    def _refusal_at(self, head: str, pos: int) -> str | None:
        for pattern in self._builtin:
            m = pattern.match(head, pos)
            if m is None:
                continue
            if pattern is not self._apology or _APOLOGY_THEN.match(head, m.end()):
                return head[pos:]
        for pattern in self._extra:
            if pattern.match(head, pos):
                return head[pos:]
        return None

    def __call__(self, request: Request, completion: Completion) -> Verdict:
        head = completion.text.lstrip()[: self.config.max_chars_scanned].translate(_CURLY)
        for start in _SENTENCE_START.finditer(head):
            found = self._refusal_at(head, start.end())
            if found is not None:
                sentence = re.split(r"(?<=[.!?])\s|\n", found, maxsplit=1)[0]
                return Verdict(self.name, False, 0.0, f"looks like a refusal: {_short(sentence)}")
        return Verdict(
            self.name,
            True,
            1.0,
            f"no refusal in the first {self.config.max_chars_scanned} characters",
        )
