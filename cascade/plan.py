"""A run's plan and the two drivers that carry it out.

The engine writes the ladder once, as a generator (a *plan*) that yields the I/O it needs and
receives the outcome: a model ``Call``, an evaluation (``Eval``) or a ledger operation (``Io``).
``drive`` runs a plan synchronously and ``adrive`` with ``await``, so both paths take exactly
the same decisions.

Both drivers hand an operation's exception back into the plan (so it can record the step it
belongs to) and close the plan on the way out, so a cancelled or failed run releases its budget
reservations at once rather than whenever the generator is collected.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

from cascade.caller import Call, Outcome
from cascade.evaluation import Slot
from cascade.types import CascadeResult, Completion, Request

__all__ = ["Eval", "Io", "Plan", "adrive", "drive", "io"]


@dataclass(frozen=True, slots=True)
class Eval:
    """An evaluation of the plan: run ``slot`` on the answer."""

    slot: Slot
    request: Request
    completion: Completion


@dataclass(frozen=True, slots=True)
class Io:
    """A ledger operation of the plan. The sync driver runs it in place; the async driver runs
    it on the event loop only if it needs no waiting, else on the ledger's thread."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]


def io(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Io:
    return Io(fn, args, kwargs)


Plan = Generator["Call | Eval | Io", Any, CascadeResult]


def drive(plan: Plan, call: Callable[[Call], Outcome]) -> CascadeResult:
    """Run ``plan`` to its result in this thread."""
    try:
        step = _advance(plan, None, None)
        while not isinstance(step, CascadeResult):
            reply: Any = None
            error: Exception | None = None
            try:
                if isinstance(step, Call):
                    reply = call(step)
                elif isinstance(step, Io):
                    reply = step.fn(*step.args, **step.kwargs)
                else:
                    reply = step.slot.run(step.request, step.completion)
            except Exception as exc:
                error = exc
            step = _advance(plan, reply, error)
        return step
    finally:
        plan.close()


async def adrive(
    plan: Plan,
    acall: Callable[[Call], Awaitable[Outcome]],
    ledger_io: Callable[..., Awaitable[Any]],
    off_loop: Callable[..., Awaitable[Any]],
) -> CascadeResult:
    """Run ``plan`` to its result on the event loop.

    Ledger operations (budget checks, write-ahead rows, settlements) never wait on the loop:
    ``ledger_io`` runs them on it only when the ledger is free at once, else on the ledger's
    thread; ``off_loop`` runs code that may wait (closing a plan that may settle a hold).
    """
    try:
        step = _advance(plan, None, None)
        while not isinstance(step, CascadeResult):
            reply: Any = None
            error: Exception | None = None
            try:
                if isinstance(step, Call):
                    reply = await acall(step)
                elif isinstance(step, Io):
                    reply = await ledger_io(step.fn, *step.args, **step.kwargs)
                else:
                    reply = await step.slot.arun(step.request, step.completion)
            except Exception as exc:
                error = exc
            step = _advance(plan, reply, error)
        return step
    finally:
        # Not run to its end (cancelled, failed): closing it may settle a hold.
        if inspect.getgeneratorstate(plan) != inspect.GEN_CLOSED:
            await off_loop(plan.close)


def _advance(plan: Plan, reply: Any, error: Exception | None) -> Call | Eval | Io | CascadeResult:
    """The plan's next operation, or its result once it is done."""
    try:
        return plan.send(reply) if error is None else plan.throw(error)
    except StopIteration as done:
        result: CascadeResult = done.value
        return result
