"""The whole exception tree of the cascade engine.

::

    CascadeError
    ├── ConfigError          path, location        (bad YAML, unknown key, missing API key)
    │   └── PluginNotFound   group, name
    ├── DatasetError         path, line            (a malformed replay dataset line)
    ├── RequestError         param                 (a call parameter is refused: max_tokens...)
    │   ├── FeedbackError    param                 (a score outside [0, 1], an unknown run id)
    │   └── KeyStoreError    param                 (a gateway key's name or limits are refused)
    ├── ProviderError        provider, model, status_code, retryable, result
    │   └── InvalidUsage                           (a reply's token counts are not believable)
    ├── EvaluatorError       evaluator             (an evaluator crashed: a bug, not a rejection)
    ├── BudgetExceeded       limit_usd, estimate_usd, result
    ├── TaskNotAllowed       key, task             (the caller's key may not run that task)
    ├── LedgerError          backend               (the ledger cannot take a write: fail closed)
    ├── RateLimiterUnavailable                     (the rate limiter's Redis cannot be reached)
    └── CascadeExhausted     result                (no rung passed and on_exhausted is "raise")

A rejected answer is never an exception: it is a ``Verdict`` with ``passed=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cascade.types import CascadeResult, Completion

__all__ = [
    "BudgetExceeded",
    "CascadeError",
    "CascadeExhausted",
    "ConfigError",
    "DatasetError",
    "EvaluatorError",
    "FeedbackError",
    "InvalidUsage",
    "KeyStoreError",
    "LedgerError",
    "PluginNotFound",
    "ProviderError",
    "RateLimiterUnavailable",
    "RequestError",
    "TaskNotAllowed",
    "caused_by",
]


class CascadeError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(CascadeError):
    """A configuration mistake: the message names the file and the key path.

    Args:
        message: What is wrong.
        path: The config file, when there is one.
        location: The dotted key path inside it, e.g. ``tasks.faq.ladder[1]``.
    """

    def __init__(self, message: str, *, path: str | None = None, location: str | None = None):
        self.message = message
        self.path = path
        self.location = location
        super().__init__(self._render())

    def _render(self) -> str:
        where = ": ".join(p for p in (self.path, self.location) if p)
        return f"{where}: {self.message}" if where else self.message


class PluginNotFound(ConfigError):
    """No installed plug-in provides ``name`` in the entry-point ``group``."""

    def __init__(self, group: str, name: str, *, available: list[str], location: str | None = None):
        self.group = group
        self.name = name
        known = ", ".join(sorted(available)) or "none"
        super().__init__(f"unknown type {name!r} (installed {group}: {known})", location=location)


class DatasetError(CascadeError, ValueError):
    """A replay dataset is missing or has a malformed line."""


class ProviderError(CascadeError):
    """A provider call failed, or no rung of a ladder produced an answer.

    Attributes:
        provider: The ``providers:`` key.
        model: The model name sent to the provider.
        status_code: The HTTP status, when there was one.
        retryable: Whether trying again could help (429, 5xx, timeouts, connection errors).
        result: Set when a whole ladder failed: the ``CascadeResult`` with every failed step.
        malformed: A 200 reply with no usable answer (bad JSON, no choices, empty text);
            retried once only, since a model that answers garbage rarely recovers.
        billed: The usage a failed call was still billed for (an empty 200 reply).
        timed_out: The request was sent and no reply came in time: whether the provider
            bills it will never be known, so the engine charges its worst case.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        model: str = "",
        status_code: int | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
        result: CascadeResult | None = None,
        malformed: bool = False,
        billed: Completion | None = None,
        timed_out: bool = False,
    ):
        super().__init__(message)
        self.malformed = malformed
        self.billed = billed
        self.timed_out = timed_out
        self.message = message
        self.provider = provider
        self.model = model
        self.status_code = status_code
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.result = result


class InvalidUsage(ProviderError):
    """A reply reported token counts that are not integers within sane bounds.

    Such a reply is billed at the reserved worst case (``billed``), never retried, and counted
    by the circuit breaker as a provider fault: the bill it reports cannot be trusted.
    """


class RequestError(CascadeError, ValueError):
    """A call's parameters are refused before anything is spent.

    Attributes:
        param: The parameter at fault, as a key path (``max_tokens``, ``extra_body.n``).
    """

    def __init__(self, message: str, *, param: str):
        super().__init__(f"{param}: {message}")
        self.message = message
        self.param = param


class EvaluatorError(CascadeError):
    """An evaluator raised: this is a bug to fix, never counted as a rejection."""

    def __init__(self, evaluator: str, message: str):
        super().__init__(f"evaluator {evaluator!r} crashed: {message}")
        self.evaluator = evaluator


class BudgetExceeded(CascadeError):
    """No rung fits the cost cap of this request or the period budget."""

    def __init__(
        self,
        message: str,
        *,
        limit_usd: float,
        estimate_usd: float,
        result: CascadeResult | None = None,
    ):
        super().__init__(message)
        self.limit_usd = limit_usd
        self.estimate_usd = estimate_usd
        self.result = result


class TaskNotAllowed(CascadeError):
    """The gateway key that made the request may not run the task (chosen by name, by
    ``auto`` or by ``x-cascade-task``). Raised after the task is chosen and before any model is
    called; the run leaves no ledger row, as nothing was spent.

    Attributes:
        key: The key's name (never the key).
        task: The task it may not run.
    """

    def __init__(self, key: str, task: str, allowed: frozenset[str]):
        shown = ", ".join(sorted(allowed)) or "none"
        super().__init__(f"key {key!r} may not use task {task!r} (its tasks: {shown})")
        self.key = key
        self.task = task


class LedgerError(CascadeError):
    """The ledger could not be opened, read or written.

    Raised before any upstream call when the write-ahead row of a step cannot be written, so
    nothing is paid for that is not recorded. The message never holds a database password.

    Attributes:
        backend: ``"sqlite"`` or ``"postgres"``.
    """

    def __init__(self, message: str, *, backend: str = ""):
        super().__init__(message)
        self.message = message
        self.backend = backend


class RateLimiterUnavailable(CascadeError):
    """The gateway's rate limiter could not check a request: its Redis is down or too slow.

    With ``limits.redis.on_error: closed`` the request is refused (503); with ``open`` it is
    served unlimited. The message never holds the Redis URL.
    """


class CascadeExhausted(CascadeError):
    """No rung passed its evaluators and the task says ``on_exhausted: raise``.

    The full result, with every step and the last answer, is in ``.result``.
    """

    def __init__(self, result: CascadeResult):
        super().__init__(
            f"task {result.task!r}: no rung passed after {len(result.steps)} step(s); "
            f"cost ${result.cost_usd:.6f}"
        )
        self.result = result


class FeedbackError(RequestError):
    """Feedback that cannot be stored: a score outside [0, 1], an unknown run id, no ledger.

    Attributes:
        param: ``score``, ``run_id``, ``comment`` or ``ledger``.
    """


class KeyStoreError(RequestError):
    """A gateway key that cannot be created or changed: a duplicate or unknown name, a
    negative budget or limit, an unreadable date.

    Attributes:
        param: The field at fault (``name``, ``daily_usd``, ``expires``...).
    """


def caused_by(exc: BaseException, match: Callable[[BaseException], bool]) -> bool:
    """Whether ``exc`` or an exception it was raised from (or while handling) ``match``es.

    Drivers and SDKs wrap the error that explains a failure (a refused connection, a row the
    database cannot store) in their own; the chain is short, and a cycle is never followed far.
    """
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if match(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
