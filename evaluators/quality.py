"""``quality_model``: a learned, calibrated estimate of P(this answer is right).

It combines what the engine knows when the answer arrives into one probability:

- the verdicts of its ``signals`` (any evaluators: ``arithmetic``, ``self_confidence``,
  ``json_schema``, a judge...), which it runs itself, all of them, with no short-circuit;
- the answer's mean token log-probability, when the provider returned them;
- agreement of the answer's extracted final answer with the earlier rungs' answers;
- the answer's length and shape, and the prompt's (plus hashed word n-grams, if fitted with them).

The fitted model is plain JSON written by ``cascade calibrate`` (``models.linear.LinearModel``):
weights, hashing settings and an isotonic map. Loading it validates every field and never runs
code. The same object scores the answer in ``complete``, in the gateway and in replay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cascade.config.messages import pydantic_message
from cascade.config.paths import read_capped
from cascade.errors import ConfigError
from cascade.evaluation import (
    EvaluatorContext,
    Slot,
    Tunable,
    build_evaluators,
    finalized,
    shown,
)
from cascade.models.features import (
    agreement_features,
    answer_features,
    logprob_features,
    prompt_features,
    prompt_text,
    signal_features,
)
from cascade.models.linear import LinearModel
from cascade.types import Completion, Message, Request, Verdict
from evaluators.agreement import Agreement, normalize

__all__ = ["MAX_MODEL_BYTES", "Features", "QualityModel", "load_model"]

MAX_MODEL_BYTES = 8 * 1024 * 1024  # a fitted model is a few KB; refuse anything absurd


def load_model(source: str | Mapping[str, Any], ctx: EvaluatorContext, key: str) -> LinearModel:
    """A ``LinearModel`` from a JSON file (relative to the config's folder) or a mapping.

    Raises:
        ConfigError: the file is missing, too large, not JSON, or not a valid model; the
            message names the file and the first bad field.
    """
    try:
        if isinstance(source, str):
            path = Path(source)
            if not path.is_absolute() and ctx.config_dir is not None:
                path = ctx.config_dir / path
            try:
                raw = read_capped(path, MAX_MODEL_BYTES)
            except ConfigError as exc:
                raise ctx.error(f"cannot read model file {str(path)!r}: {exc}", key) from exc
            return LinearModel.model_validate_json(raw)
        return LinearModel.model_validate(dict(source))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        problem = pydantic_message(err)
        raise ctx.error(f"not a valid quality model: {where}: {problem}", key) from exc


class Features:
    """Runs the signals and turns (request, answer) into the model's inputs.

    Calibration fits on exactly what this returns, and the evaluator scores exactly it.
    """

    def __init__(self, signals: tuple[Slot, ...], agree: Agreement | None, numeric: bool = True):
        self.signals = signals
        self.numeric = numeric
        self._agree = agree

    def _extract(self, text: str) -> Any:
        assert self._agree is not None
        value = self._agree.extract(text)
        return None if value is None else normalize(value, numeric=self.numeric)

    def of(
        self, request: Request, completion: Completion, verdicts: tuple[Verdict, ...]
    ) -> tuple[dict[str, float], dict[str, str]]:
        """(dense features, texts) given the signals' verdicts on this answer."""
        clean = finalized(self.signals, completion)
        prompt = prompt_text(request.messages)
        dense = {
            **prompt_features(prompt),
            **answer_features(clean.text, prompt, completion.finish_reason),
            **logprob_features(completion),
            **agreement_features(
                clean.text,
                [c.text for c in request.history],
                self._extract if self._agree is not None else None,
            ),
            **signal_features(verdicts),
        }
        return dense, {"prompt": prompt, "answer": clean.text}

    def verdicts(self, request: Request, completion: Completion) -> tuple[Verdict, ...]:
        """Every signal's verdict (no short-circuit: each one is a feature)."""
        clean = finalized(self.signals, completion)
        return tuple(s.run(request, shown(s, completion, clean)) for s in self.signals)

    async def averdicts(self, request: Request, completion: Completion) -> tuple[Verdict, ...]:
        clean = finalized(self.signals, completion)
        return tuple([await s.arun(request, shown(s, completion, clean)) for s in self.signals])


class QualityModel:
    """Pass when the fitted estimate of P(this answer is right) is at least ``min``.

    YAML (as ``cascade calibrate`` writes it)::

        - type: quality_model
          min: 0.62
          model: calibrated.math.mixtral.json    # or the model inline, as a mapping
          recipe: gsm8k                          # how to read a final answer for agreement
          signals:
            - {type: arithmetic}
            - {type: length, max_words: 160}

    The score is the probability; the reason lists it with the strongest signals.

    Raises:
        ConfigError: at load time, when the model file is missing or invalid, or a signal is.
    """

    name = "quality_model"
    tunable: ClassVar[Tunable] = Tunable("min", 0.0, 1.0, low_open=False)
    # fitted on labels: calibration's fixed scheme must not set its threshold as if it were a
    # signal known before the data (``calibration.levels.tunable_slots``)
    learned: ClassVar[bool] = True

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        min: float = Field(ge=0, le=1)
        model: str | dict[str, Any]
        signals: list[dict[str, Any]] = Field(default_factory=list, max_length=32)
        recipe: Literal["final_number", "gsm8k", "boxed", "choice"] | None = None
        numeric: bool = True

    def __init__(self, config: Config, context: EvaluatorContext):
        self.config = config
        self.model = load_model(config.model, context, "model")
        sub = replace(context, location=f"{context.location}.signals")
        agree = (
            Agreement(Agreement.Config(recipe=config.recipe), context)
            if config.recipe is not None
            else None
        )
        self.features = Features(build_evaluators(config.signals, sub), agree, config.numeric)
        # Runs after the cheap rules of its rung; a judge among the signals makes it dearer.
        self.cost = max([50.0, *(s.cost for s in self.features.signals)])
        if any("repair_message" in s.hooks for s in self.features.signals):
            raise context.error(
                "a signal cannot repair answers (set repair_attempts: 0)", "signals"
            )

    def __repr__(self) -> str:
        return f"QualityModel(min={self.config.min}, signals={len(self.features.signals)})"

    def prepare(
        self, messages: tuple[Message, ...], params: dict[str, Any]
    ) -> tuple[tuple[Message, ...], dict[str, Any]]:
        for slot in self.features.signals:
            if "prepare" in slot.hooks:
                messages, params = slot.hooks["prepare"](messages, params)
        return messages, params

    def finalize(self, text: str) -> str:
        for slot in self.features.signals:
            if "finalize" in slot.hooks:
                text = slot.hooks["finalize"](text)
        return text

    def probability(
        self, request: Request, completion: Completion, verdicts: tuple[Verdict, ...]
    ) -> float:
        """The calibrated probability for one answer, given its signals' verdicts."""
        dense, texts = self.features.of(request, completion, verdicts)
        return self.model.probability(dense, texts)

    def _verdict(self, p: float, verdicts: tuple[Verdict, ...]) -> Verdict:
        passed = p >= self.config.min
        failed = [v.evaluator for v in verdicts if not v.passed]
        reason = (
            f"P(correct) = {p:.3f} "
            f"({'at least' if passed else 'below'} the minimum {self.config.min:g})"
        )
        if failed:
            reason += f"; signals failed: {', '.join(failed)}"
        return Verdict(self.name, passed, p, reason)

    def __call__(self, request: Request, completion: Completion) -> Verdict:
        verdicts = self.features.verdicts(request, completion)
        return self._verdict(self.probability(request, completion, verdicts), verdicts)

    async def acall(self, request: Request, completion: Completion) -> Verdict:
        verdicts = await self.features.averdicts(request, completion)
        return self._verdict(self.probability(request, completion, verdicts), verdicts)

    def threshold_value(self, verdict: Verdict, completion: Completion) -> float | None:
        """The probability that ``min`` is compared with (calibration's threshold hook)."""
        return verdict.score
