"""What a learned estimate may know at run time, as named numbers.

One function per source, shared by the ``quality_model`` evaluator, the router and calibration,
so a model is always fed the same features when it is fitted, replayed and served:

- ``prompt_features``: the prompt's length and how many numbers it holds;
- ``answer_features``: the answer's length and shape (lines, numbers, a final number, code,
  truncation);
- ``agreement_features``: whether this answer's extracted final answer agrees with the answers
  of the earlier rungs of the run;
- ``signal_features``: the verdicts of other evaluators (pass, score, no score);
- ``logprob_features``: the mean token log-probability, when the provider returned them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cascade.types import Completion, Verdict

__all__ = [
    "agreement_features",
    "answer_features",
    "logprob_features",
    "prompt_features",
    "prompt_text",
    "signal_features",
]

_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")
_WORDS = re.compile(r"\S+")
_MAX_SCAN = 20_000  # characters read from one text: enough for its shape, bounded in time


def prompt_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """Every message's text, joined: what the prompt features and hashing read."""
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                str(p.get("text", "")) for p in content if isinstance(p, Mapping) and "text" in p
            )
    return "\n".join(parts)


def _numbers(text: str) -> list[str]:
    return [n.replace(",", "").rstrip(".") for n in _NUMBER.findall(text)]


def prompt_features(prompt: str) -> dict[str, float]:
    """Length and numeric density of the prompt."""
    text = prompt[:_MAX_SCAN]
    return {
        "prompt.words": math.log1p(len(_WORDS.findall(text))),
        "prompt.numbers": math.log1p(len(_numbers(text))),
    }


def _as_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def answer_features(answer: str, prompt: str, finish_reason: str | None) -> dict[str, float]:
    """Length and shape of the answer, and how its final number relates to the text."""
    text = answer[:_MAX_SCAN]
    words = _WORDS.findall(text)
    numbers = _numbers(text)
    final = numbers[-1] if numbers else ""
    value = _as_float(final) if final else None
    tail = text.rstrip()[-40:]
    return {
        "answer.empty": float(not text.strip()),
        "answer.words": math.log1p(len(words)),
        "answer.lines": math.log1p(text.count("\n")),
        "answer.numbers": math.log1p(len(numbers)),
        "answer.chars_per_word": (len(text) / len(words)) / 10 if words else 0.0,
        "answer.ends_with_number": float(bool(final) and final in tail.replace(",", "")),
        "answer.final_integer": float(value is not None and value == int(value)),
        "answer.final_negative": float(value is not None and value < 0),
        "answer.final_repeats": math.log1p(sum(1 for n in numbers if n == final)) if final else 0.0,
        "answer.final_in_prompt": float(bool(final) and final in _numbers(prompt[:_MAX_SCAN])),
        "answer.code": float("```" in text or "def " in text),
        "answer.truncated": float(finish_reason == "length"),
    }


def agreement_features(
    answer: str, earlier: Sequence[str], extract: Any | None
) -> dict[str, float]:
    """Agreement of this answer's extracted final answer with each earlier rung's.

    Args:
        answer: This rung's answer text.
        earlier: The earlier rungs' answer texts, oldest first.
        extract: ``text -> comparable value or None`` (an ``agreement`` recipe); None means no
            agreement features (only the number of earlier answers).
    """
    out = {"history.answers": float(len(earlier))}
    if extract is None or not earlier:
        return out
    mine = extract(answer)
    if mine is None:
        out["history.unreadable"] = 1.0
        return out
    theirs = [extract(text) for text in earlier]
    agree = [t is not None and t == mine for t in theirs]
    out["history.agree_share"] = sum(agree) / len(agree)
    out["history.agree_last"] = float(agree[-1])
    out["history.agree_any"] = float(any(agree))
    return out


def signal_features(verdicts: Sequence[Verdict]) -> dict[str, float]:
    """Each verdict as ``NAME.passed``, ``NAME.score`` (its pass when it has no score) and
    ``NAME.missing``; a name used twice gets ``#2``, ``#3``..."""
    out: dict[str, float] = {}
    seen: dict[str, int] = {}
    for v in verdicts:
        seen[v.evaluator] = seen.get(v.evaluator, 0) + 1
        name = v.evaluator if seen[v.evaluator] == 1 else f"{v.evaluator}#{seen[v.evaluator]}"
        score = v.score if v.score is not None and math.isfinite(v.score) else None
        out[f"{name}.passed"] = float(v.passed)
        out[f"{name}.score"] = float(v.passed) if score is None else max(-10.0, min(10.0, score))
        out[f"{name}.missing"] = float(score is None)
    return out


def logprob_features(completion: Completion) -> dict[str, float]:
    """The mean token log-probability (clamped to [-20, 0]) and whether there was one."""
    lps = [lp for lp in (completion.logprobs or ()) if math.isfinite(lp)]
    if not lps:
        return {"logprob.missing": 1.0}
    mean = math.fsum(lps) / len(lps)
    return {"logprob.mean": max(-20.0, min(0.0, mean)), "logprob.missing": 0.0}
