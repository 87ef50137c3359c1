"""The records that flow through a cascade: request in, completions, verdicts, steps, result out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

__all__ = [
    "CascadeResult",
    "Completion",
    "Decision",
    "Message",
    "Request",
    "RunWarning",
    "StepRecord",
    "ToolCall",
    "Verdict",
]

Message = Mapping[str, Any]
# "shadow": a rung above the one that answered, called after the run for a label (its cost is
# reported apart from the run's).
# "lost": a call given up before it reported back (a hedged rung that lost), at its worst case.
Decision = Literal[
    "accept", "escalate", "error", "judge", "repair", "skip", "cache", "shadow", "lost"
]


@dataclass(frozen=True, slots=True)
class Verdict:
    """One evaluator's opinion of one answer.

    Attributes:
        evaluator: The evaluator's name (its YAML ``type``).
        passed: Whether the answer is good enough for this evaluator.
        score: A 0..1 score where the evaluator has one, else None.
        reason: A human-readable explanation, especially of a rejection.
        data: Anything the evaluator extracted, e.g. the parsed JSON object.
    """

    evaluator: str
    passed: bool
    score: float | None = None
    reason: str = ""
    data: Any = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "evaluator": self.evaluator,
            "passed": self.passed,
            "score": self.score,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model asked for, in OpenAI's terms.

    Attributes:
        id: The provider's call id (``call_...``, Anthropic's ``toolu_...``), echoed back in the
            ``tool`` message that carries the result.
        name: The function's name.
        arguments: Its arguments as the model wrote them: a JSON text, not yet parsed (a model
            can write invalid JSON, which the ``tool_call`` evaluator reports).
    """

    id: str
    name: str
    arguments: str

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True, slots=True)
class Completion:
    """A provider's answer with the usage it reported.

    Token counts are the provider's own; cost is derived later from the config's prices only.
    """

    text: str
    model: str = ""
    provider: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    latency_ms: float = 0.0
    logprobs: tuple[float, ...] | None = None
    finish_reason: str | None = None
    cost_usd: float | None = None  # set only when the source reports a billed cost (replay)
    usage_estimated: bool = False  # the reply reported no usage: the counts are our estimate
    # Function calls the model asked for; a completion with tool calls is an answer even
    # when its text is empty.
    tool_calls: tuple[ToolCall, ...] = ()
    # OpenAI's per-token logprob entries as sent ({"token", "logprob", "bytes",
    # "top_logprobs"}), passed through to gateway clients that asked for them.
    token_logprobs: tuple[Mapping[str, Any], ...] | None = None

    def named(self, model: str) -> Completion:
        """This answer under the ``models:`` key that gave it (the engine's, per step).

        ``dataclasses.replace`` does the same at several times the cost, on every step.
        """
        if model == self.model:
            return self
        new = object.__new__(Completion)
        for name in Completion.__slots__:
            object.__setattr__(new, name, getattr(self, name))
        object.__setattr__(new, "model", model)
        return new


@dataclass(frozen=True, slots=True)
class Request:
    """What evaluators see of the call: the task, the messages and the run so far.

    Attributes:
        task: The task name.
        messages: The conversation as sent by the caller (before any evaluator instruction).
        params: Keyword overrides passed to ``complete``.
        run_id: The run this request belongs to.
        history: Answers of the earlier rungs of this run, oldest first.
        query_id: An external id of the query (the replay provider uses it).
    """

    task: str
    messages: tuple[Message, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    run_id: str = ""
    history: tuple[Completion, ...] = ()
    query_id: str | None = None

    @property
    def prompt(self) -> str:
        """The text of the last user message, the usual thing to grade an answer against."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                content = message.get("content")
                return content if isinstance(content, str) else str(content)
        return ""


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One model call of a run (with all its retries) and what the engine decided about it."""

    run_id: str
    task: str
    step: int
    model: str
    provider: str
    attempts: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float
    decision: Decision
    verdicts: tuple[Verdict, ...] = ()
    error: str | None = None
    cached_input_tokens: int = 0
    ts: float = 0.0
    text: str | None = None
    usage_estimated: bool = False  # some of the usage billed was estimated, not reported
    # The answer's mean token log-probability, when the provider returned them (kept with the
    # answer's content row in the ledger; like ``text``, not part of the step's event).
    logprob: float | None = None

    def as_event(self, *, log_content: bool = False) -> dict[str, Any]:
        """The structured-log and ledger view of this step (answer text only if asked)."""
        # Built by hand: dataclasses.asdict deep-copies and costs more than a replayed step.
        event = {name: getattr(self, name) for name in _STEP_FIELDS}
        event["verdicts"] = [v.as_dict() for v in self.verdicts]
        if log_content:
            event["text"] = self.text
        return event


_STEP_FIELDS = tuple(
    f.name for f in fields(StepRecord) if f.name not in ("verdicts", "text", "logprob")
)


@dataclass(frozen=True, slots=True)
class RunWarning:
    """Something the run survived that the user must fix (a rung's model name the provider
    does not know, a refused API key): the ladder failed over, so the answer came, but dearer.

    Attributes:
        model: The ``models:`` key of the rung at fault.
        code: ``model_not_found`` (HTTP 404) or ``key_refused`` (HTTP 401/403).
        message: One line for a person, naming the config key to check.
    """

    model: str
    code: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class CascadeResult:
    """What ``Cascade.complete`` returns.

    Attributes:
        text: The answer returned to the caller.
        model: The ``models:`` key of the rung whose answer this is.
        accepted: False when no rung passed and the last answer was returned anyway.
        cost_usd: Sum over every step, failed and judge steps included.
        latency_ms: Wall time of the whole run.
        run_id: The id under which the ledger stores this run.
        steps: Every step, in order.
        task: The task name.
        json: The parsed JSON object when a ``json_schema`` evaluator accepted the answer.
        cached: True when the answer came from the response cache (cost 0).
        task_probability: With task ``auto``, the task router's probability for ``task``
            (None when the caller named the task).
        tool_calls: The function calls of the returned answer (OpenAI's shape: ``.id``,
            ``.name``, ``.arguments`` as JSON text); empty for a text answer.
        finish_reason: Why the returned answer ended, in OpenAI's words: ``stop``,
            ``length`` (cut off at the output limit), ``tool_calls``, ``content_filter``;
            None when no answer came back or the provider did not say.
        logprobs: Per-token log-probabilities of the returned answer, when asked for
            (``logprobs=True``) and the provider sent them.
        warnings: Misconfigurations the run failed over (``RunWarning``): a rung whose model
            the provider does not know, or whose API key it refused.
    """

    text: str
    model: str
    accepted: bool
    cost_usd: float
    latency_ms: float
    run_id: str
    steps: tuple[StepRecord, ...]
    task: str = ""
    json: Any = None
    cached: bool = False
    task_probability: float | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    logprobs: tuple[Mapping[str, Any], ...] | None = None
    warnings: tuple[RunWarning, ...] = ()

    @property
    def input_tokens(self) -> int:
        return sum(s.input_tokens for s in self.steps)

    @property
    def output_tokens(self) -> int:
        return sum(s.output_tokens for s in self.steps)


def as_messages(prompt: str | Sequence[Message]) -> tuple[Message, ...]:
    """Accept a plain prompt or an OpenAI-style messages list."""
    if isinstance(prompt, str):
        return ({"role": "user", "content": prompt},)
    return tuple(dict(m) for m in prompt)
