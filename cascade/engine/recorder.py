"""What a run leaves behind: step records, the result, log events and ledger rows."""

from __future__ import annotations

import contextvars
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cascade.config import CascadeConfig
from cascade.engine.caller import Outcome
from cascade.engine.limits import Gate
from cascade.engine.savings import always_top
from cascade.errors import (
    BudgetExceeded,
    CascadeError,
    CascadeExhausted,
    LedgerError,
    ProviderError,
)
from cascade.ledger import Ledger
from cascade.ledger.keys import KeyScope
from cascade.ledger.money import Accounts, Hold, bill, ledger_failed
from cascade.ledger.writes import ContentRow
from cascade.logs import get_logger
from cascade.telemetry import Telemetry
from cascade.types import (
    CascadeResult,
    Completion,
    Decision,
    Message,
    RunWarning,
    StepRecord,
    Verdict,
)

__all__ = ["Recorder", "Run", "current_run"]

log = get_logger()

# Provider answers that say the config is wrong, not that the provider is unwell.
_MISCONFIGURED = {404: "model_not_found", 401: "key_refused", 403: "key_refused"}


@dataclass(slots=True)
class Run:
    """Mutable bookkeeping of one run; evaluators that call models add their steps here."""

    run_id: str
    task: str
    started: float
    log_content: bool
    steps: list[StepRecord] = field(default_factory=list)
    counter: int = 0
    cap: float | None = None  # max_cost_usd of this run, which judge calls must respect too
    # Steps in flight (step index -> amount): a called step's reservation (its worst case once
    # per attempt that may be billed), replaced by its real cost once its answer is back; gone
    # when the step is recorded. Hedged rungs, judges and retries count them against the cap.
    held: dict[int, float] = field(default_factory=dict)
    query_id: str | None = None  # passed on to side calls, so a replayed judge finds its reply
    deadline: float | None = None  # time.monotonic() by which the run must end
    messages: tuple[Message, ...] = ()  # the prompt, kept for the ledger's content rows
    task_probability: float | None = None  # set when task "auto" chose the task
    key_id: str | None = None  # the gateway key that made the run (stored on its ledger row)
    key: KeyScope | None = None  # the named gateway key that made it: its name is on every row
    span: Any = None  # the run's OpenTelemetry span, begun at its first step
    traced: bool | None = None  # whether an OpenTelemetry SDK was installed at its first step
    metered: bool | None = None
    warnings: list[RunWarning] = field(default_factory=list)

    @property
    def key_name(self) -> str | None:
        return self.key.name if self.key is not None else None

    def next_index(self) -> int:
        self.counter += 1
        return self.counter

    def cost(self) -> float:
        return sum(s.cost_usd for s in self.steps)

    def committed(self) -> float:
        """The recorded steps' cost plus what the steps in flight hold (``held``)."""
        return self.cost() + sum(self.held.values())


def _mean_logprob(logprobs: Sequence[float]) -> float | None:
    """The mean token log-probability (the replay format's ``logprob``), at most 0 (a
    positive one is a provider's rounding); None when any is not a finite number."""
    if not all(math.isfinite(lp) for lp in logprobs):
        return None
    return min(math.fsum(logprobs) / len(logprobs), 0.0)


# The run in progress in this thread or task, so a judge's model call lands in the right run.
current_run: contextvars.ContextVar[Run | None] = contextvars.ContextVar(
    "cascade_current_run", default=None
)


class Recorder:
    """Turns outcomes into ``StepRecord``s, logs them and queues them for the ledger.

    A step that called a model settles its write-ahead row (``hold``); one that called nothing
    (a skip, a cache hit) gets a row of its own.
    """

    def __init__(self, config: CascadeConfig, ledger: Ledger | None, accounts: Accounts):
        self.config = config
        self.ledger = ledger
        self.accounts = accounts
        self.telemetry = Telemetry(
            {k: p.type for k, p in config.providers.items()},
            {k: m.name for k, m in config.models.items()},
        )

    def _run_span(self, run: Run) -> Any:
        if run.traced is None:  # asked once per run: the checks cost microseconds
            run.traced = self.telemetry.enabled and self.telemetry.tracing()
            run.metered = self.telemetry.enabled and self.telemetry.metering()
        if run.span is None and run.traced:
            # perf_counter has no epoch: the run's start is now minus its age.
            age_ns = int((time.perf_counter() - run.started) * 1_000_000_000)
            run.span = self.telemetry.start_run(run.task, time.time_ns() - age_ns, run.key_name)
        return run.span

    def step(
        self,
        run: Run,
        model_key: str,
        outcome: Outcome,
        decision: Decision,
        verdicts: tuple[Verdict, ...],
        *,
        completion: Completion | None = None,
        index: int | None = None,
        error: str | None = None,
        hold: Hold | None = None,
    ) -> StepRecord:
        model = self.config.models[model_key]
        done = completion or outcome.completion
        # A recorded (replayed) latency is longer than the replay itself; a live one is shorter
        # than the wall time that includes retries. The larger is the step's real latency.
        latency = max(outcome.latency_ms, done.latency_ms if done else 0.0)
        # Every attempt's bill: the answer's, plus failed attempts that were charged anyway.
        paid = [*outcome.billed, *([done] if done and decision != "cache" else [])]
        step = StepRecord(
            run_id=run.run_id,
            task=run.task,
            step=index or run.next_index(),
            model=model_key,
            provider=model.provider,
            attempts=outcome.attempts,
            input_tokens=sum(c.input_tokens for c in paid),
            output_tokens=sum(c.output_tokens for c in paid),
            cached_input_tokens=sum(c.cached_input_tokens for c in paid),
            # An attempt that timed out may be billed, and at most its worst case.
            cost_usd=bill(paid, model.price) + outcome.lost_usd,
            latency_ms=latency,
            decision=decision,
            verdicts=verdicts,
            error=error or (outcome.error.message if outcome.error else None),
            ts=time.time(),
            text=done.text if done else None,
            usage_estimated=any(c.usage_estimated for c in paid),
            logprob=_mean_logprob(done.logprobs) if done and done.logprobs else None,
        )
        # The write only queues (the ledger's writer thread commits it), so it never waits and
        # never sends this call to a thread; it stays first all the same, so that a ledger
        # operation that could decline to wait (WouldBlock) would change nothing before it.
        if hold is not None:
            # Ended in a timeout: the outcome of the call that was sent last is not known.
            self.accounts.settle(hold, step, lost=done is None and outcome.lost > 0)
        elif self.ledger is not None:
            self.accounts.record(step, run.key_name)
        run.steps.append(step)
        run.held.pop(step.step, None)
        if outcome.error is not None:
            self._misconfigured(run, model_key, outcome.error)
        if log.enabled("info"):
            log.info("cascade.step", **step.as_event(log_content=run.log_content))
        # After the ledger write (see above).
        span = self._run_span(run)
        if span is not None or run.metered:
            failure = outcome.error
            error_type = (
                (str(failure.status_code) if failure.status_code else type(failure).__name__)
                if failure is not None
                else ("CascadeError" if error and decision == "error" else None)
            )
            self.telemetry.step(span, step, error_type, metered=bool(run.metered))
        return step

    def lost(self, run: Run | None, model_key: str, gate: Gate, index: int) -> None:
        """A step whose call was given up before it reported back (a hedged rung cancelled
        mid-call, a run cancelled by its caller): settled ``lost`` at what it reserved, and a
        step of the run at that cost, so that ``result.cost_usd`` agrees with the ledger. Does
        nothing for a step already recorded."""
        self.accounts.release(gate.hold)
        if run is None or run.held.pop(index, None) is None:
            return
        model = self.config.models[model_key]
        step = StepRecord(
            run_id=run.run_id, task=run.task, step=index, model=model_key,
            provider=model.provider, attempts=0, input_tokens=0, output_tokens=0,
            cost_usd=gate.reserved, latency_ms=0.0, decision="lost", ts=time.time(),
            error="cancelled before its outcome was known; counted at its reserved worst case",
        )
        run.steps.append(step)
        if log.enabled("info"):
            log.info("cascade.step", **step.as_event(log_content=run.log_content))

    def _misconfigured(self, run: Run, model_key: str, error: ProviderError) -> None:
        """A 404 (no such model) or 401/403 (key refused) is the config's fault, not the
        provider's: the ladder fails over for availability, but the user must hear of it."""
        code = _MISCONFIGURED.get(error.status_code or 0)
        if code is None or any(w.model == model_key for w in run.warnings):
            return
        model = self.config.models[model_key]
        if code == "model_not_found":
            message = (
                f"models.{model_key}.name: provider {model.provider!r} does not know model "
                f"{model.name!r} (HTTP {error.status_code}); the run failed over to the next rung"
            )
        else:
            message = (
                f"providers.{model.provider}: the API key was refused (HTTP "
                f"{error.status_code}) for model {model_key!r}; the run failed over to the next "
                "rung"
            )
        run.warnings.append(RunWarning(model_key, code, message))
        log.warning("cascade.misconfigured", run_id=run.run_id, task=run.task, model=model_key,
                    provider=model.provider, status_code=error.status_code, code=code,
                    error=error.message)

    def result(
        self,
        run: Run,
        model_key: str,
        completion: Completion | None,
        verdicts: tuple[Verdict, ...],
        *,
        accepted: bool,
        finalizers: Sequence[Callable[[str], str]] = (),
    ) -> CascadeResult:
        text = completion.text if completion else ""
        for finalize in finalizers:
            text = finalize(text)
        parsed = next((v.data for v in verdicts if v.data is not None and v.passed), None)
        return CascadeResult(
            text=text,
            model=model_key,
            accepted=accepted,
            cost_usd=run.cost(),
            latency_ms=(time.perf_counter() - run.started) * 1000,
            run_id=run.run_id,
            steps=tuple(sorted(run.steps, key=lambda s: s.step)),
            task=run.task,
            json=parsed,
            task_probability=run.task_probability,
            tool_calls=completion.tool_calls if completion else (),
            finish_reason=completion.finish_reason if completion else None,
            logprobs=completion.token_logprobs if completion else None,
            warnings=tuple(run.warnings),
        )

    def finish(self, result: CascadeResult, run: Run) -> CascadeResult:
        self.close(result, "ok" if result.accepted else "exhausted", run)
        return result

    def fail(self, exc: CascadeError, run: Run) -> None:
        """Close the run's ledger record when it ends in an exception, so no spend goes missing."""
        error = type(exc).__name__
        if isinstance(exc, CascadeExhausted):
            self.close(exc.result, "exhausted", run, error)
        elif isinstance(exc, (ProviderError, BudgetExceeded)) and exc.result is not None:
            status = "failed" if isinstance(exc, ProviderError) else "budget"
            self.close(exc.result, status, run, error)
        elif run.steps:
            self.close(
                self.result(run, "", None, (), accepted=False), f"error: {error}", run, error
            )

    def content(
        self, run: Run, steps: Sequence[StepRecord], *, prompt: bool = True
    ) -> list[ContentRow]:
        """The ``content`` rows of a run logged with content (none otherwise): the prompt and
        each answer with its mean token log-probability, so ``cascade data export`` can rebuild
        a dataset from the ledger."""
        if not run.log_content:
            return []
        rows: list[ContentRow] = []
        if prompt and run.messages:
            rows.append((0, "prompt", None, None, json.dumps(list(run.messages)), None))
        for step in steps:
            if step.text is not None and step.decision not in ("judge", "cache"):
                name = self.config.models[step.model].name
                rows.append((step.step, "answer", step.model, name, step.text, step.logprob))
        return rows

    def close(
        self,
        result: CascadeResult,
        status: str,
        run: Run | None = None,
        error_type: str | None = None,
    ) -> None:
        if self.ledger is not None:
            run_id = result.run_id

            def failed(exc: LedgerError) -> None:
                # The steps carry the money; a missing run row loses none of it.
                ledger_failed("cascade.ledger_write_failed", run_id=run_id, error=str(exc))

            # Queued for the ledger's writer thread: never waits, so it is safe first.
            try:
                self.ledger.record_run(
                    result, status=status,
                    content=self.content(run, result.steps) if run is not None else (),
                    failed=failed, key_id=run.key_id if run is not None else None,
                    key_name=run.key_name if run is not None else None,
                    top=always_top(self.config, result),
                )
            except LedgerError as exc:
                failed(exc)
        if log.enabled("info"):
            log.info(
                "cascade.run",
                run_id=result.run_id,
                task=result.task,
                model=result.model,
                accepted=result.accepted,
                status=status,
                steps=len(result.steps),
                cost_usd=result.cost_usd,
                latency_ms=round(result.latency_ms, 3),
            )
        if run is not None and self.telemetry.enabled:
            self.telemetry.end_run(self._run_span(run), result, status, error_type)
