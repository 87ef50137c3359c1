"""How evaluators plug in, get built from YAML, run cheapest first, and combine into a decision.

An evaluator is any callable ``(request, completion) -> Verdict | bool``. Classes registered in
the ``cascade.evaluators`` entry-point group may also declare:

- ``Config``: a pydantic model of their YAML settings (``extra="forbid"``), validated at load time;
  the class is then constructed as ``cls(config, context)``.
- ``cost``: a number used to run cheap checks first (rules 0, model calls 100).
- ``prepare(messages, params) -> (messages, params)``: change the call before it is made
  (add an instruction, ask for log-probabilities).
- ``finalize(text) -> text``: clean the accepted answer (strip a confidence line).
- ``acall(request, completion)``: an async version, used by ``acomplete``.
- ``repair_attempts`` and ``repair_message(verdict)``: re-ask the same model after a rejection.
- ``tunable`` and ``threshold_value(verdict, completion)`` (``Thresholded``): one threshold that
  ``cascade calibrate`` can tune, and the number each verdict compares with it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from cascade.config import MinScore, format_location
from cascade.config.messages import (
    joined,
    joined_errors,
    suggestion,
    unknown_key,
    validation_problems,
)
from cascade.config.plugins import EVALUATORS, load_object, load_plugin
from cascade.errors import CascadeError, ConfigError, EvaluatorError
from cascade.types import Completion, Request, Verdict

if TYPE_CHECKING:
    import numpy as np

    from cascade.types import Message

__all__ = [
    "Evaluator",
    "EvaluatorContext",
    "EvaluatorLike",
    "ModelServices",
    "Slot",
    "Thresholded",
    "Tunable",
    "build_evaluators",
    "build_one",
    "combine",
    "decided",
    "finalized",
    "judging",
    "shown",
    "threshold_values",
    "to_verdict",
    "tunable_of",
]


@runtime_checkable
class Evaluator(Protocol):
    name: str

    def __call__(self, request: Request, completion: Completion) -> Verdict | bool: ...


EvaluatorLike = Evaluator | Callable[[Request, Completion], "Verdict | bool"]


@dataclass(frozen=True, slots=True)
class Tunable:
    """How calibration reads and writes one evaluator's threshold.

    The evaluator passes exactly when ``threshold_value(verdict, completion) >= threshold``, where
    the threshold is the number its YAML holds under ``setting``.

    Attributes:
        setting: The YAML key (a field of the evaluator's ``Config``) that holds the threshold,
            e.g. ``"min"``; calibration writes the chosen value back under this key.
        low / high: The setting's allowed range (``math.inf`` for no upper bound); calibration
            only proposes thresholds inside it.
        low_open: ``low`` itself is not allowed (``min > 0``); False when it is (``min_score``
            may be 1).
        integer: The setting takes whole numbers only (``min_words``).
        drop: "Accept all" is written as the evaluator removed from the rung. When False it is
            written as the ``low`` bound instead, because the evaluator checks other things too
            (``length`` with ``max_words``) and must stay.
    """

    setting: str
    low: float
    high: float
    low_open: bool = True
    integer: bool = False
    drop: bool = True


@runtime_checkable
class Thresholded(Protocol):
    """An evaluator with one tunable threshold: it passes exactly when value >= threshold.

    ``threshold_value`` maps one of the evaluator's verdicts (and the answer it judged) to that
    value: None never passes, ``math.inf`` always passes (the verdict was decided by something
    other than the threshold, e.g. ``when_first`` or ``fail_closed``). It must hold for the
    configured threshold, and it is what lets simulation and calibration try any other threshold
    without re-running the evaluator.
    """

    tunable: ClassVar[Tunable]

    def threshold_value(self, verdict: Verdict, completion: Completion) -> float | None: ...


def tunable_of(evaluator: Any) -> Tunable | None:
    """The evaluator's ``Tunable``, or None when it has no tunable threshold.

    Only a built evaluator (an instance, as held by ``Slot.evaluator``) counts: a class or a
    plain function without both ``tunable`` and ``threshold_value`` has none.
    """
    if inspect.isclass(evaluator) or not isinstance(evaluator, Thresholded):
        return None
    found = evaluator.tunable
    return found if isinstance(found, Tunable) else None


def threshold_values(
    evaluator: Any, verdicts: Sequence[Verdict], completions: Sequence[Completion]
) -> np.ndarray:
    """Vectorised: one float per (verdict, completion); NaN where threshold_value is None.

    ``values >= threshold`` is then the evaluator's pass/fail for every answer at once (NaN
    compares False, so "no value" never passes).

    Raises:
        TypeError: the evaluator has no tunable threshold.
        ValueError: ``verdicts`` and ``completions`` differ in length.
    """
    import numpy as np  # here, not at import time: the engine's hot path never needs it

    if tunable_of(evaluator) is None:
        raise TypeError(f"{type(evaluator).__name__} has no tunable threshold")
    if len(verdicts) != len(completions):
        raise ValueError(
            f"{len(verdicts)} verdicts but {len(completions)} completions: they must pair up"
        )
    rule = evaluator.threshold_value
    out = np.empty(len(verdicts), dtype=float)
    for k, (verdict, completion) in enumerate(zip(verdicts, completions, strict=True)):
        value = rule(verdict, completion)
        out[k] = math.nan if value is None else value
    return out


class ModelServices(Protocol):
    """What the engine lends to evaluators that call a model themselves (the judge).

    Calls made through it are recorded as their own steps of the current run.
    """

    def call_model(
        self, model: str, messages: Sequence[Message], params: Mapping[str, Any] | None = None
    ) -> Completion: ...

    async def acall_model(
        self, model: str, messages: Sequence[Message], params: Mapping[str, Any] | None = None
    ) -> Completion: ...

    def has_model(self, model: str) -> bool: ...

    def provider_type(self, model: str) -> str:
        """The provider ``type`` serving a ``models:`` key (openai, anthropic, replay...)."""
        ...


@dataclass(frozen=True, slots=True)
class EvaluatorContext:
    """What an evaluator may know about where it sits, handed to it when it is built."""

    location: str
    task: str
    model: str
    provider_type: str
    supports_logprobs: bool
    services: ModelServices | None = None
    config_dir: Path | None = None

    def error(self, message: str, key: str | None = None) -> ConfigError:
        """A ``ConfigError`` located at this evaluator (or one of its keys)."""
        return ConfigError(message, location=f"{self.location}.{key}" if key else self.location)


@dataclass(frozen=True, slots=True)
class Slot:
    """A built evaluator with the per-use settings that are not its own business."""

    name: str
    evaluator: Any
    weight: float = 1.0
    cost: float = 0.0
    hooks: Mapping[str, Callable[..., Any]] = field(default_factory=dict)

    def run(self, request: Request, completion: Completion) -> Verdict:
        try:
            outcome = self.evaluator(request, completion)
        except ConfigError:
            raise  # a missing judge key is the user's config, not this evaluator's bug
        except CascadeError:
            raise
        except Exception as exc:
            raise EvaluatorError(self.name, f"{type(exc).__name__}: {exc}") from exc
        return to_verdict(self.name, outcome)

    async def arun(self, request: Request, completion: Completion) -> Verdict:
        acall = self.hooks.get("acall")
        if acall is None:
            return self.run(request, completion)
        try:
            outcome = await acall(request, completion)
        except CascadeError:
            raise
        except Exception as exc:
            raise EvaluatorError(self.name, f"{type(exc).__name__}: {exc}") from exc
        return to_verdict(self.name, outcome)


def finalized(slots: Sequence[Slot], completion: Completion) -> Completion:
    """The answer as the user gets it: every ``finalize`` hook applied (a confidence line cut)."""
    clean = completion
    for slot in slots:
        if "finalize" in slot.hooks:
            clean = replace(clean, text=slot.hooks["finalize"](clean.text))
    return clean


def judging(slots: Sequence[Slot], completion: Completion) -> tuple[Slot, ...]:
    """The evaluators that judge this answer.

    An answer that calls tools has no text to judge: only evaluators that declare
    ``judges_tool_calls = True`` (the ``tool_call`` evaluator) see it. A text answer is judged
    by every evaluator (``tool_call`` checks that no call was required).
    """
    if not completion.tool_calls:
        return tuple(slots)
    return tuple(s for s in slots if getattr(s.evaluator, "judges_tool_calls", False))


def shown(slot: Slot, raw: Completion, clean: Completion) -> Completion:
    """What one evaluator judges: its own raw form if it finalizes, else the user's text."""
    return raw if "finalize" in slot.hooks else clean


def to_verdict(name: str, outcome: Any) -> Verdict:
    """Accept a ``Verdict`` or a plain bool from an evaluator; anything else is its bug."""
    if isinstance(outcome, Verdict):
        return outcome
    if isinstance(outcome, bool):
        return Verdict(evaluator=name, passed=outcome, score=1.0 if outcome else 0.0)
    raise EvaluatorError(name, f"returned {type(outcome).__name__}, expected Verdict or bool")


_HOOKS = ("prepare", "finalize", "acall", "repair_message")
# Keys every evaluator spec may hold besides its own settings (build_one takes them out).
_COMMON_KEYS = ("type", "weight", "name")


def _instantiate(kind: str, target: Any, settings: dict[str, Any], ctx: EvaluatorContext) -> Any:
    config_model = getattr(target, "Config", None)
    if isinstance(config_model, type) and issubclass(config_model, BaseModel):
        try:
            config = config_model.model_validate(settings)
        except ValidationError as exc:
            found = validation_problems(exc, config_model, settings, also=_COMMON_KEYS)
            raise joined([(_at(ctx, where), message) for where, message in found]) from exc
        return target(config, ctx)
    if settings:
        refused = f"evaluator {kind!r} takes no settings"
        raise joined([(_at(ctx, (k,)), refused + suggestion(k, _COMMON_KEYS)) for k in settings])
    if inspect.isclass(target):
        return target()
    return target


def _at(ctx: EvaluatorContext, where: tuple[int | str, ...]) -> str:
    inside = format_location(where)
    if not inside:
        return ctx.location
    return f"{ctx.location}{inside}" if inside.startswith("[") else f"{ctx.location}.{inside}"


def build_one(spec: Mapping[str, Any], ctx: EvaluatorContext) -> Slot:
    """Turn one ``{type: NAME, ...}`` mapping into a ready ``Slot``.

    Raises:
        ConfigError: naming every mistake in the spec's settings, at their key paths.
    """
    settings = dict(spec)
    kind = settings.pop("type", None)
    if not isinstance(kind, str):
        raise ctx.error("each evaluator needs a 'type'", "type")
    weight = settings.pop("weight", 1.0)
    if (
        not isinstance(weight, (int, float))
        or isinstance(weight, bool)
        or not math.isfinite(weight)
        or weight < 0
    ):
        raise ctx.error(f"weight must be a number >= 0, got {weight!r}", "weight")
    label = settings.pop("name", None)
    if kind == "callable":
        path = settings.pop("path", None)
        if not isinstance(path, str):
            raise ctx.error("a callable evaluator needs path: 'package.module:function'", "path")
        if settings:
            raise joined([
                (_at(ctx, (key,)), unknown_key(key, ("path", *_COMMON_KEYS))) for key in settings
            ])
        # A module beside the config, or in the working directory, needs no packaging.
        search = [*([ctx.config_dir] if ctx.config_dir is not None else []), Path.cwd()]
        target = load_object(path, location=f"{ctx.location}.path", search=search)
        if not callable(target):
            raise ctx.error(f"{path!r} is not callable", "path")
        evaluator: Any = target
        name = label or path.rpartition(":")[2]
    else:
        target = load_plugin(EVALUATORS, kind, location=f"{ctx.location}.type")
        evaluator = _instantiate(kind, target, settings, ctx)
        name = label or kind
    hooks = {h: getattr(evaluator, h) for h in _HOOKS if callable(getattr(evaluator, h, None))}
    cost = float(getattr(evaluator, "cost", 1.0))
    return Slot(name=name, evaluator=evaluator, weight=float(weight), cost=cost, hooks=hooks)


def build_evaluators(specs: Sequence[Mapping[str, Any]], ctx: EvaluatorContext) -> tuple[Slot, ...]:
    """Build a rung's evaluators, ordered cheapest first (stable for equal costs).

    Raises:
        ConfigError: naming every evaluator's mistakes, not only the first evaluator's.
    """
    slots: list[Slot] = []
    errors: list[ConfigError] = []
    for i, spec in enumerate(specs):
        item_ctx = replace(ctx, location=f"{ctx.location}[{i}]")
        try:
            if not isinstance(spec, Mapping):
                raise item_ctx.error("an evaluator must be a mapping like {type: length, ...}")
            slots.append(build_one(spec, item_ctx))
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise joined_errors(errors)
    return tuple(sorted(slots, key=lambda s: s.cost))


def combine(policy: str | MinScore, verdicts: Sequence[Verdict], weights: Sequence[float]) -> bool:
    """Decide acceptance from the verdicts gathered so far (all of them, unless short-circuited)."""
    if not verdicts:
        return True
    if policy == "all":
        return all(v.passed for v in verdicts)
    if policy == "any":
        return any(v.passed for v in verdicts)
    assert isinstance(policy, MinScore)
    total = sum(weights)
    if total == 0:
        return all(v.passed for v in verdicts)
    scores = [v.score if v.score is not None else float(v.passed) for v in verdicts]
    return sum(w * s for w, s in zip(weights, scores, strict=True)) / total >= policy.min_score


def decided(policy: str | MinScore, verdict: Verdict) -> bool:
    """Whether one verdict already settles the outcome, so the rest can be skipped."""
    if policy == "all":
        return not verdict.passed
    if policy == "any":
        return verdict.passed
    return False
