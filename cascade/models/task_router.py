"""Task ``auto``: pick the task from the prompt with a linear classifier fitted from examples.

Features are hashed word n-grams (``models.linear.hashed``) and hashed character n-grams of the
prompt; each task gets a one-vs-rest logistic regression fitted by ``models.linear.fit_logistic``
(Newton's method, L2 penalty, deterministic). The probability of a task is its one-vs-rest
probability divided by the sum over tasks. The fitted model is plain JSON (``TaskClassifier``),
validated field by field when loaded: never a pickle, no downloaded weights.

Examples come from ``tasks.T.examples:`` in the YAML, or from the ledger's history (the prompts
of runs whose task the caller named, logged with ``logging: {content: true}``).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from cascade.config import CascadeConfig
from cascade.config.messages import pydantic_message
from cascade.config.paths import read_capped
from cascade.errors import ConfigError
from cascade.models.features import prompt_text
from cascade.models.linear import MAX_BUCKETS, Hashing, fit_logistic, hashed
from cascade.types import Message, as_messages

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "AUTO",
    "MAX_TASK_ROUTER_BYTES",
    "Choice",
    "TaskClassifier",
    "TaskRouter",
    "fit_classifier",
    "load_task_router",
    "pick_task",
]

AUTO = "auto"
_MAX_TASKS = 256
# The largest classifier allowed (256 tasks of 65,536 buckets, weights written to 6 decimals)
# fits; a file past this, or one that is not a regular file (/dev/zero, a FIFO), is refused.
MAX_TASK_ROUTER_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True, eq=False)
class _Arrays:
    """A classifier's weights and bias as read-only arrays.

    Derived from the model's fields, so two are equal whenever the fields are (pydantic compares
    the fields itself): comparing arrays with ``==`` would not give one truth value.
    """

    weights: np.ndarray
    bias: np.ndarray

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Arrays)

    __hash__ = None  # type: ignore[assignment]


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)  # shared by every request: nothing may change it in place
    return array


class TaskClassifier(BaseModel):
    """The fitted classifier, as plain data.

    Attributes:
        tasks: The task names, in the order of ``weights`` and ``bias``.
        hashing: Word n-gram hashing (shared bucket range with the character n-grams).
        char_ngrams: The character n-gram lengths hashed (e.g. ``[3, 4]``).
        weights: One list of ``hashing.buckets`` weights per task.
        bias: One intercept per task.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field("task_router", pattern="^task_router$")
    tasks: list[str] = Field(min_length=2, max_length=_MAX_TASKS)
    hashing: Hashing
    char_ngrams: list[int] = Field(default_factory=lambda: [3, 4], max_length=4)
    weights: list[list[float]]
    bias: list[float]

    @model_validator(mode="after")
    def _shapes(self) -> TaskClassifier:
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError("tasks: names must be distinct")
        if len(self.weights) != len(self.tasks) or len(self.bias) != len(self.tasks):
            raise ValueError("weights and bias: one entry per task")
        for row in self.weights:
            if len(row) != self.hashing.buckets:
                raise ValueError("weights: each list must have hashing.buckets entries")
            if not all(math.isfinite(v) for v in row):
                raise ValueError("weights: every number must be finite")
        if not all(math.isfinite(v) for v in self.bias):
            raise ValueError("bias: every number must be finite")
        if any(not 1 <= n <= 8 for n in self.char_ngrams):
            raise ValueError("char_ngrams: lengths from 1 to 8")
        return self

    # The weights as arrays, made once: a 34 MB classifier's lists took 0.7 s to convert, which
    # every ``auto`` request paid on the event loop.
    _arrays: _Arrays = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        import numpy as np  # here, not at the top: see cascade.models.linear

        self._arrays = _Arrays(_frozen(np.asarray(self.weights, dtype=float)),
                               _frozen(np.asarray(self.bias, dtype=float)))

    def probabilities(self, prompt: str) -> dict[str, float]:
        """P(task | prompt) for every task (summing to 1)."""
        import numpy as np  # here, not at the top: see cascade.models.linear

        x = features(prompt, self.hashing, self.char_ngrams)
        w, b = self._arrays.weights, self._arrays.bias
        z = b + (w[:, list(x)] @ np.fromiter(x.values(), float, len(x)) if x else 0.0)
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        total = float(p.sum()) or 1.0
        return {t: float(v) / total for t, v in zip(self.tasks, p, strict=True)}


def features(text: str, hashing: Hashing, char_ngrams: Sequence[int]) -> dict[int, float]:
    """Hashed word n-grams plus hashed character n-grams of the lower-cased text."""
    out = dict(hashed(text, hashing, "prompt"))
    lowered = " ".join(text[: hashing.max_chars].lower().split())
    counts: dict[int, float] = {}
    for n in char_ngrams:
        for i in range(len(lowered) - n + 1):
            h = zlib.crc32(f"c{n}|{lowered[i:i + n]}".encode())
            bucket, sign = h % hashing.buckets, 1.0 if (h >> 31) & 1 else -1.0
            counts[bucket] = counts.get(bucket, 0.0) + sign
    for bucket, value in counts.items():
        if value:
            # log-scaled like the word counts, and scaled down: there are many more of them
            out[bucket] = out.get(bucket, 0.0) + 0.5 * math.copysign(math.log1p(abs(value)), value)
    return out


def fit_classifier(
    examples: Sequence[tuple[str, str]],
    *,
    buckets: int = 1024,
    ngrams: int = 2,
    char_ngrams: Sequence[int] = (3, 4),
    l2: float = 1.0,
) -> TaskClassifier:
    """Fit one-vs-rest logistic regressions on (prompt, task) pairs.

    Raises:
        ValueError: fewer than two tasks among the examples.
    """
    import numpy as np

    tasks = sorted({task for _, task in examples})
    if len(tasks) < 2:
        raise ValueError(f"the task router needs examples of at least two tasks (got {tasks})")
    hashing = Hashing(buckets=min(buckets, MAX_BUCKETS), ngrams=ngrams, max_chars=4000)
    x = np.zeros((len(examples), hashing.buckets))
    for i, (prompt, _) in enumerate(examples):
        for bucket, value in features(prompt, hashing, char_ngrams).items():
            x[i, bucket] = value
    labels = [task for _, task in examples]
    weights, bias = [], []
    for task in tasks:
        y = np.asarray([1.0 if t == task else 0.0 for t in labels])
        w, b = fit_logistic(x, y, l2=l2, iterations=15)
        weights.append([round(float(v), 6) for v in w])
        bias.append(round(b, 6))
    return TaskClassifier(kind="task_router", tasks=tasks, hashing=hashing,
                          char_ngrams=list(char_ngrams), weights=weights, bias=bias)


@dataclass(frozen=True, slots=True)
class Choice:
    """What task ``auto`` chose: the task run, the classifier's top task and its probability."""

    task: str
    probability: float
    predicted: str


@dataclass(frozen=True, slots=True)
class TaskRouter:
    """A loaded classifier with the config's ``min_confidence`` and ``default_task``."""

    classifier: TaskClassifier
    min_confidence: float
    default_task: str | None

    def choose(self, prompt: str) -> Choice:
        probs = self.classifier.probabilities(prompt)
        best = max(probs, key=lambda t: (probs[t], t))
        if probs[best] < self.min_confidence and self.default_task is not None:
            return Choice(self.default_task, probs.get(self.default_task, 0.0), best)
        return Choice(best, probs[best], best)


def load_task_router(
    config: CascadeConfig, *, config_path: str | None = None
) -> TaskRouter | None:
    """The task router of a config's ``task_router:`` section (None without a fitted model).

    Raises:
        ConfigError: the model file is missing or invalid, or names a task the config lacks.
    """
    section = config.task_router
    if section is None or section.model is None:
        return None
    data: Any = section.model
    where = "task_router.model"
    try:
        if isinstance(data, str):
            base = Path(config_path).parent if config_path else Path(".")
            file = base / data
            try:
                raw = read_capped(file, MAX_TASK_ROUTER_BYTES)
            except ConfigError as exc:
                raise ConfigError(f"cannot read the task router {file}: {exc}",
                                  path=config_path, location=where) from exc
            # pydantic's parser, not json.loads: it stops at a nesting depth of its own
            classifier = TaskClassifier.model_validate_json(raw)
        else:
            classifier = TaskClassifier.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        inside = ".".join(map(str, first["loc"])) or "(top level)"  # a model validator has no loc
        raise ConfigError(
            f"invalid task router: {inside}: {pydantic_message(first)}",
            path=config_path, location=where,
        ) from exc
    unknown = sorted(set(classifier.tasks) - set(config.tasks))
    if unknown:
        raise ConfigError(f"the task router names unknown task(s) {', '.join(unknown)}",
                          path=config_path, location=where)
    return TaskRouter(classifier, section.min_confidence, section.default_task)


def pick_task(
    task: str,
    prompt: str | Sequence[Message],
    router: TaskRouter | None,
    tasks: Mapping[str, Any],
    path: str | None,
) -> tuple[str, Choice | None]:
    """The task to run: ``task`` itself, or for ``auto`` (when no task has that name) the task
    router's choice.

    Raises:
        ConfigError: ``auto`` without a fitted task router.
    """
    if task != AUTO or AUTO in tasks:
        return task, None
    if router is None:
        raise ConfigError(
            "task 'auto' needs a fitted task router (run: cascade router fit CONFIG)",
            path=path, location="task_router.model",
        )
    choice = router.choose(prompt_text(as_messages(prompt)))
    return choice.task, choice


def config_examples(config: CascadeConfig) -> list[tuple[str, str]]:
    """The ``tasks.T.examples:`` of a config as (prompt, task) pairs."""
    return [(text, name) for name, task in config.tasks.items() for text in task.examples]


def ledger_examples(ledger: Any, tasks: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Prompts of runs whose task the caller named (not chosen by ``auto``), from the ledger's
    content rows, for tasks the config still has."""
    rows = ledger.query(
        "SELECT r.task AS task, c.text AS text FROM runs r JOIN content c ON c.run_id = r.run_id"
        " WHERE c.kind = 'prompt' AND r.task_probability IS NULL ORDER BY r.ts"
    )
    out = []
    for row in rows:
        if row["task"] in tasks:
            out.append((prompt_text(json.loads(row["text"])), str(row["task"])))
    return out
