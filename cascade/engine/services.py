"""Model services lent to evaluators that call a model themselves (the LLM judge).

A judge's call is a ``judge`` step of the run in progress (``current_run``): it passes the same
circuit breakers, cost cap and period budgets as a rung, writes its pending row first, and is
settled like any step.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from cascade.config import CascadeConfig
from cascade.config.params import bound_output, check_call_params
from cascade.engine.caller import NOTHING, Call, Caller, Outcome
from cascade.engine.limits import Gate, Limits
from cascade.engine.recorder import Recorder, Run, current_run
from cascade.errors import ProviderError
from cascade.types import Completion, Message, as_messages

__all__ = ["Services"]


class Services:
    """The engine's ``ModelServices`` (``cascade.evaluation``).

    Args:
        off_loop: Runs a function that may wait for the ledger off the event loop.
    """

    def __init__(
        self,
        config: CascadeConfig,
        caller: Caller,
        limits: Limits,
        recorder: Recorder,
        off_loop: Callable[..., Awaitable[Any]],
    ):
        self.config = config
        self.caller = caller
        self.limits = limits
        self.recorder = recorder
        self.off_loop = off_loop

    def has_model(self, model: str) -> bool:
        return model in self.config.models

    def provider_type(self, model: str) -> str:
        return self.config.providers[self.config.models[model].provider].type

    def call_model(
        self, model: str, messages: Sequence[Message], params: Mapping[str, Any] | None = None
    ) -> Completion:
        """Call one model outside the ladder; the call is a ``judge`` step of the current run.

        The run's cost cap and period budgets apply to it like to any rung.

        Raises:
            ProviderError: the call failed, or a budget or open circuit refused it.
        """
        op, run, gate, index = self._begin(model, messages, params)
        try:
            return self._end(op, run, self.caller.call(op), gate, index)
        finally:
            self.recorder.lost(run, model, gate, index)

    async def acall_model(
        self, model: str, messages: Sequence[Message], params: Mapping[str, Any] | None = None
    ) -> Completion:
        """The async twin of ``call_model``."""
        op, run, gate, index = await self.off_loop(self._begin, model, messages, params)
        try:
            outcome = await self.caller.acall(op)
            done: Completion = await self.off_loop(self._end, op, run, outcome, gate, index)
            return done
        finally:
            await self.off_loop(self.recorder.lost, run, model, gate, index)

    def _begin(
        self, model: str, messages: Sequence[Message], params: Mapping[str, Any] | None
    ) -> tuple[Call, Run | None, Gate, int]:
        """Check the parameters and pass the gate (writing the pending row) before the call."""
        settings = self.config.models[model]
        run = current_run.get()
        merged = {**settings.params, **(params or {})}
        # The model's own config params are the operator's; a caller's need server.allow_params.
        check_call_params(merged, {*self.config.server.allow_params, *settings.params})
        op = Call(
            model,
            as_messages(messages),
            bound_output(merged, settings.max_output_tokens, model),
            run.query_id if run is not None else None,
            run.deadline if run is not None else None,
        )
        if run is None:
            return op, None, Gate(), 0
        index = run.next_index()
        spent, estimate = run.committed(), None
        if run.cap is not None:  # held before the check, as for a rung (Ladder._gate)
            estimate = run.held[index] = self.limits.worst_case(model, op.messages, op.params)
        try:
            gate = self.limits.check(
                run.task, settings.provider, model, op.messages, op.params, spent, run.cap,
                run_id=run.run_id, step=index, estimate=estimate, tab=run, key=run.key,
            )
        except BaseException:
            run.held.pop(index, None)
            raise
        if gate.skipped:
            run.held.pop(index, None)
        else:
            run.held[index] = gate.reserved
            op = replace(op, gate=gate)
        if gate.skipped:
            self.recorder.step(run, model, NOTHING, "skip", (), error=gate.reason, index=index)
            raise ProviderError(
                f"judge call refused: {gate.reason}",
                provider=settings.provider,
                model=settings.name,
            )
        return op, run, gate, index

    def _end(
        self, op: Call, run: Run | None, outcome: Outcome, gate: Gate, index: int
    ) -> Completion:
        """Record the call as a ``judge`` step, then return its answer or raise its error."""
        if run is not None:
            error = None if outcome.unsent is None else f"not sent: {outcome.unsent}"
            self.recorder.step(run, op.model_key, outcome, "judge", (), index=index,
                               hold=gate.hold, error=error)
        if outcome.unsent is not None:
            raise outcome.unsent
        if outcome.error is not None:
            raise outcome.error
        assert outcome.completion is not None
        return outcome.completion
