"""Evaluators own their tunable threshold: the rule simulation and calibration reuse.

The property everything rests on: the value read from a verdict at one threshold tells whether
the evaluator passes at any other threshold (``value >= threshold``), so calibration can try
thresholds without re-running the evaluator.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

import cascade.config.plugins as plugins
from cascade import ConfigError
from cascade.calibration.calibrate import calibrate as _calibrate
from cascade.calibration.calibrate import write_calibrated
from cascade.config import load_config
from cascade.evaluation import (
    EvaluatorContext,
    Thresholded,
    Tunable,
    build_one,
    threshold_values,
    tunable_of,
)
from cascade.types import Completion, Message, Request, Verdict
from evaluators.agreement import Agreement
from evaluators.confidence import Logprob, SelfConfidence
from evaluators.judge import LLMJudge
from evaluators.length import Length
from evaluators.text import Contains
from tests.calibration.test_calibrate import answer, config, dataset


def calibrate(*args: Any, **kwargs: Any) -> Any:
    """These tests pin the per-evaluator threshold search (``method="thresholds"``)."""
    return _calibrate(*args, method="thresholds", **kwargs)


class Judges:
    """Model services whose judge replies with a fixed text (no engine, no network)."""

    def __init__(self, reply: str = "Score: 7/10") -> None:
        self.reply = reply

    def call_model(self, model: str, messages: Sequence[Message],
                   params: Mapping[str, Any] | None = None) -> Completion:
        return Completion(text=self.reply, model=model)

    async def acall_model(self, model: str, messages: Sequence[Message],
                          params: Mapping[str, Any] | None = None) -> Completion:
        return self.call_model(model, messages, params)

    def has_model(self, model: str) -> bool:
        return True

    def provider_type(self, model: str) -> str:
        return "fake"


def ctx(services: Judges | None = None) -> EvaluatorContext:
    return EvaluatorContext(location="tasks.t.evaluators[0]", task="t", model="small",
                            provider_type="openai", supports_logprobs=True, services=services)


def request(*history: str) -> Request:
    return Request(task="t", messages=({"role": "user", "content": "q?"},),
                   history=tuple(Completion(text=h, model=f"m{i}") for i, h in enumerate(history)))


def test_built_ins_declare_their_setting() -> None:
    """Each built-in's Tunable is the one calibration has always used for it."""
    assert Logprob.tunable == Tunable("min", 0.0, 1.0)
    assert SelfConfidence.tunable == Tunable("min", 0.0, 1.0)
    assert LLMJudge.tunable == Tunable("min_score", 1.0, 10.0, low_open=False)
    assert Agreement.tunable == Tunable("min_agree", 0.0, 1.0)
    assert Length.tunable == Tunable("min_words", 0.0, math.inf, low_open=False, integer=True,
                                     drop=False)
    for cls, config_cls in ((Logprob, Logprob.Config), (SelfConfidence, SelfConfidence.Config),
                            (LLMJudge, LLMJudge.Config), (Agreement, Agreement.Config),
                            (Length, Length.Config)):
        assert cls.tunable.setting in config_cls.model_fields


def test_tunable_of_reads_built_evaluators_only() -> None:
    """A built instance has one; a class, a plain function or an untuned evaluator has none."""
    logprob = Logprob(Logprob.Config(min=0.5))
    assert isinstance(logprob, Thresholded)
    assert tunable_of(logprob) is Logprob.tunable
    assert tunable_of(build_one({"type": "length", "min_words": 3}, ctx()).evaluator) == (
        Length.tunable)
    assert tunable_of(Logprob) is None  # the class, not a built evaluator
    assert tunable_of(Contains(Contains.Config(any=("x",)))) is None
    assert tunable_of(lambda r, c: True) is None

    class Impostor:  # the right names, but not a Tunable
        tunable = ("min", 0, 1)

        def threshold_value(self, verdict: Verdict, completion: Completion) -> float | None:
            return 1.0

    assert tunable_of(Impostor()) is None


# -- each rule: the value at one threshold predicts the verdict at every other ---------------------

Case = tuple[Request, Completion]
Build = Callable[[float], Any]


def consistent(build: Build, thresholds: Sequence[float], cases: Sequence[Case],
               basis: Build | None = None) -> list[float | None]:
    """Assert ``passed == (value >= T)`` across thresholds; return the values read."""
    values = []
    for req, done in cases:
        first = build(thresholds[0])
        seen = (basis or build)(thresholds[0])(req, done)
        value = first.threshold_value(seen, done)
        values.append(value)
        for t in thresholds:
            verdict = build(t)(req, done)
            assert verdict.passed == (value is not None and value >= t), (t, value, verdict)
    return values


def test_logprob_rule() -> None:
    """The probability itself; no log-probabilities or an empty answer is no value."""
    cases = [(request(), Completion(text="yes", logprobs=(lp,)))
             for lp in (-0.01, -0.1, math.log(0.5), -2.0, 0.3)]
    cases += [(request(), Completion(text="yes")), (request(), Completion(text=" ", logprobs=(0,)))]
    values = consistent(lambda t: Logprob(Logprob.Config(min=t)), [0.05, 0.5, 0.6, 0.9, 1.0],
                        cases)
    assert values[:5] == pytest.approx([math.exp(-0.01), math.exp(-0.1), 0.5, math.exp(-2), 1.0])
    assert values[5:] == [None, None]


def test_self_confidence_rule() -> None:
    """The stated confidence; missing, unreadable or empty is no value, never a pass at 0."""
    texts = ["A\nConfidence: 0.8", "A\nConfidence: 0.35", "A\nConfidence: 0", "A", "",
             "A\nConfidence: high"]
    values = consistent(lambda t: SelfConfidence(SelfConfidence.Config(min=t)),
                        [0.0, 0.3, 0.35, 0.5, 0.8, 0.85],
                        [(request(), Completion(text=x)) for x in texts])
    # A stated 0 with min 0 passes (value 0); with min > 0 its failing verdict reads as None,
    # which the simulation never passes: the engine rejects it at any min above 0 too.
    assert values == [0.8, 0.35, 0.0, None, None, 0.85]


def test_agreement_rule() -> None:
    """The agreeing share; with no earlier answer when_first decides whatever the threshold."""
    def build(when_first: str) -> Build:
        return lambda t: Agreement(
            Agreement.Config(recipe="final_number", min_agree=t, when_first=when_first), ctx())

    cases = [(request("it is 4", "so 5"), Completion(text="4")),
             (request("it is 4", "4", "4.0"), Completion(text="4")),
             (request("7"), Completion(text="4")),
             (request("7"), Completion(text="no number"))]
    assert consistent(build("fail"), [0.3, 0.5, 0.6, 1.0], cases) == [0.5, 1.0, 0.0, 0.0]
    assert consistent(build("pass"), [0.3, 1.0], [(request(), Completion(text="4"))]) == [math.inf]
    assert consistent(build("fail"), [0.3, 1.0], [(request(), Completion(text="4"))]) == [None]


@pytest.mark.parametrize(("reply", "fail_closed", "expected"), [
    ("Score: 7/10", True, 7.0),
    ("Score: 7.2/10", True, 7.2),  # exactly 7.2: 0.72 * 10 is 7.199999999999999
    ("Score: 3/10", True, 3.0),
    ('{"score": 10}', True, 10.0),
    ("no grade here", True, None),      # fail_closed: never passes
    ("no grade here", False, math.inf),  # fail open: always passes
])
def test_judge_rule(reply: str, fail_closed: bool, expected: float | None) -> None:
    """The grade out of 10; a failed judge is decided by fail_closed whatever the threshold."""
    def build(t: float) -> LLMJudge:
        return LLMJudge(LLMJudge.Config(model="judge", min_score=t, fail_closed=fail_closed),
                        ctx(Judges(reply)))

    values = consistent(build, [1.0, 3.0, 6.9, 7.0, 7.1, 7.2, 10.0],
                        [(request(), Completion(text="an answer"))])
    assert values == [expected]


def test_length_rule() -> None:
    """The word count, read from the verdict without min_words; other bounds still reject."""
    def build(t: float) -> Length:
        return Length(Length.Config(min_words=int(t), max_words=6))

    basis: Build = lambda t: Length(Length.Config(max_words=6))  # noqa: E731
    texts = ["one", " one two  three ", "a b c d e f", "a b c d e f g", ""]
    values = consistent(build, [0, 1, 3, 4, 6], [(request(), Completion(text=x)) for x in texts],
                        basis=basis)
    assert values == [1.0, 3.0, 6.0, None, 0.0]
    # With its own verdict the rule still holds for the configured min_words.
    consistent(lambda t: Length(Length.Config(min_words=3)), [3],
               [(request(), Completion(text=x)) for x in texts])


def test_length_calibrates_below_its_configured_minimum(tmp_path: Path) -> None:
    """Word counts are read without min_words, so a lower minimum than configured is found."""
    def short_when_wrong(i: int, rng: np.random.Generator) -> dict[str, Any]:
        good = rng.random() < 0.7
        words = int(rng.integers(5, 10)) if good else int(rng.integers(1, 3))
        return {"small": answer(" ".join(["w"] * words), float(good), "small"),
                "large": answer("right", 1.0, "large")}

    data = dataset(tmp_path / "d.jsonl", 150, short_when_wrong)
    cfg = config(tmp_path, ["small", "large"],
                 [{"type": "length", "min_words": 50, "max_words": 100}])
    result = calibrate(cfg, data, target_quality=1.0)
    assert result.status == "ok", result.message
    assert 2 < result.thresholds["small"]["length.min_words"] <= 5


# -- threshold_values -----------------------------------------------------------------------------


def test_threshold_values_is_the_rule_over_a_batch() -> None:
    """One float per pair, NaN where there is no value, inf kept, so >= is the verdict."""
    judge = LLMJudge(LLMJudge.Config(model="judge", min_score=7, fail_closed=False),
                     ctx(Judges()))
    done = Completion(text="x")
    verdicts = [Verdict("llm_judge", True, 0.8), Verdict("llm_judge", False, 0.6),
                Verdict("llm_judge", True, None), Verdict("llm_judge", False, None),
                Verdict("llm_judge", False, 0.0)]
    values = threshold_values(judge, verdicts, [done] * 5)
    assert values.dtype == np.float64
    assert values.shape == (5,)
    np.testing.assert_array_equal(values, [8.0, 6.0, math.inf, math.nan, 0.0])
    np.testing.assert_array_equal(values >= 7, [True, False, True, False, False])
    assert threshold_values(judge, [], []).shape == (0,)


def test_threshold_values_refuses_misuse() -> None:
    logprob = Logprob(Logprob.Config(min=0.5))
    with pytest.raises(ValueError, match="2 verdicts but 1 completions"):
        threshold_values(logprob, [Verdict("logprob", True, 0.9)] * 2, [Completion(text="x")])
    with pytest.raises(TypeError, match="Contains has no tunable threshold"):
        threshold_values(Contains(Contains.Config(any=("x",))), [], [])


# -- a third-party evaluator becomes calibratable by declaring its threshold ---------------------

_SCORE = re.compile(r"score=([0-9.]+)")


class Stated:
    """A plug-in with its own setting name: passes when the answer's ``score=`` is high enough."""

    name = "stated"
    cost = 0
    tunable: ClassVar[Tunable] = Tunable("at_least", 0.0, 1.0)

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        at_least: float = Field(default=0.5, gt=0, le=1)

    def __init__(self, config: Config, context: EvaluatorContext) -> None:
        self.config = config

    def __call__(self, request: Request, completion: Completion) -> Verdict:
        found = _SCORE.search(completion.text)
        if found is None:
            return Verdict(self.name, False, None, "no score")
        value = float(found.group(1))
        return Verdict(self.name, value >= self.config.at_least, value)

    def threshold_value(self, verdict: Verdict, completion: Completion) -> float | None:
        return verdict.score


# A built instance reached through ``type: callable``: it takes no YAML settings.
STATED = Stated(Stated.Config(at_least=0.99), None)  # type: ignore[arg-type]


class Untuned(Stated):
    """Declares a threshold its Config does not have."""

    tunable: ClassVar[Tunable] = Tunable("missing", 0.0, 1.0)


@pytest.fixture
def plug_ins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Register the classes above as installed ``cascade.evaluators`` entry points."""
    real = plugins._entry_points

    def patched(group: str) -> dict[str, Any]:
        found = dict(real(group))
        if group == plugins.EVALUATORS:
            for name, cls in (("stated", Stated), ("untuned", Untuned)):
                found[name] = EntryPoint(name, f"{cls.__module__}:{cls.__qualname__}", group)
        return found

    monkeypatch.setattr(plugins, "_entry_points", patched)
    plugins.load_plugin.cache_clear()
    yield
    plugins.load_plugin.cache_clear()


def separable(i: int, rng: np.random.Generator) -> dict[str, Any]:
    """small is right 70% of the time and its stated score says when; large always is."""
    good = rng.random() < 0.7
    p = rng.uniform(0.9, 0.99) if good else rng.uniform(0.2, 0.45)
    return {"small": answer(f"the answer is {i} score={p:.4f}", float(good), "small"),
            "large": answer(f"the answer is {i}", 1.0, "large")}


def test_plug_in_threshold_is_calibrated(tmp_path: Path, plug_ins: None) -> None:
    """A plug-in declaring tunable + threshold_value is tuned and written back like a built-in."""
    data = dataset(tmp_path / "d.jsonl", 150, separable)
    cfg = config(tmp_path, ["small", "large"], [{"type": "stated", "at_least": 0.99}])
    result = calibrate(cfg, data, target_quality=1.0)
    assert result.status == "ok", result.message
    chosen = result.thresholds["small"]["stated.at_least"]
    assert 0.45 < chosen <= 0.9
    train = result.train  # the chosen config replayed through the engine, plug-in and all
    assert train["target_met"] is True
    assert train["cost_per_query"] < 0.5 * train["baselines"]["always_top"]["cost_per_query"]
    out = tmp_path / "out.yaml"
    write_calibrated(result, out)
    load_config(out)
    rung = yaml.safe_load(out.read_text())["tasks"]["t"]["ladder"][0]
    assert rung["evaluators"] == [{"type": "stated", "at_least": chosen}]


def test_plug_in_without_the_setting_is_a_config_error(tmp_path: Path, plug_ins: None) -> None:
    """A declared setting its Config lacks cannot be written back: a clear error, not a guess."""
    data = dataset(tmp_path / "d.jsonl", 20, separable)
    cfg = config(tmp_path, ["small", "large"], [{"type": "untuned"}])
    with pytest.raises(ConfigError, match=r"'missing'.*no such field") as info:
        calibrate(cfg, data, target_quality=1.0)
    assert info.value.location == "tasks.t.evaluators"


def test_documented_example_is_calibratable() -> None:
    """The docs' example plug-in declares a threshold whose rule holds at every threshold."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "evaluators.md").read_text()
    section = text.split("### Making a custom evaluator calibratable", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, Any] = {}
    exec(compile(code, "docs/evaluators.md", "exec"), scope)
    cls = scope["Citations"]
    assert tunable_of(cls(cls.Config(), ctx())) == Tunable(
        "min_citations", 0, math.inf, low_open=False, integer=True)
    cases = [(request(), Completion(text=x)) for x in ("none", "one [1]", "two [1] [2]")]
    values = consistent(lambda t: cls(cls.Config(min_citations=int(t)), ctx()), [0, 1, 2, 3],
                        cases)
    assert values == [0.0, 1.0, 2.0]


def test_callable_is_never_tuned(tmp_path: Path) -> None:
    """type: callable has no settings to write a threshold to: its rung is simulated as is."""
    data = dataset(tmp_path / "d.jsonl", 60, separable)
    cfg = config(tmp_path, ["small", "large"],
                 [{"type": "callable", "path": f"{__name__}:STATED"}])
    result = calibrate(cfg, data, target_quality=0.5)
    assert result.status == "ok", result.message
    assert "small" not in result.thresholds
    assert result.train["target_met"] is True
