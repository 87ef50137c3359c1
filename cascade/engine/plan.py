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

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

from cascade.engine.caller import Call, Outcome
from cascade.evaluation import Slot
from cascade.types import Completion, Request

__all__ = ["Eval", "Hedge", "Io", "Plan", "adrive", "drive", "io"]


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


@dataclass(frozen=True, slots=True)
class Hedge:
    """Run ``count`` rung plans in ladder order until one's outcome is ``accepted``.

    The sync driver runs them one after another. The async driver starts plan i+1 when plan i
    has not finished ``after_s`` after the last start (a hedge) and ``fits(i + 1)`` says it may
    run beside those in flight (else it waits for one of them to finish), takes the first
    accepted outcome (lower rungs first among those that finish together) and cancels the
    rest: closing a cancelled plan settles its write-ahead row (``Ladder._attempt``). The
    reply is ``(winner index or None, {index: outcome of every plan that finished})``.
    """

    count: int
    make: Callable[[int], Plan]
    accepted: Callable[[Any], bool]
    after_s: float
    fits: Callable[[int], bool] = lambda i: True


def io(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Io:
    return Io(fn, args, kwargs)


Plan = Generator["Call | Eval | Io | Hedge", Any, Any]
Hedged = tuple["int | None", dict[int, Any]]


def drive(plan: Plan, call: Callable[[Call], Outcome]) -> Any:
    """Run ``plan`` to its result (a ``CascadeResult`` for a run's plan) in this thread."""
    try:
        step = _advance(plan, None, None)
        while not isinstance(step, _Done):
            reply: Any = None
            error: Exception | None = None
            try:
                if isinstance(step, Call):
                    reply = call(step)
                elif isinstance(step, Io):
                    reply = step.fn(*step.args, **step.kwargs)
                elif isinstance(step, Hedge):
                    reply = _hedge_in_turn(step, call)
                else:
                    reply = step.slot.run(step.request, step.completion)
            except Exception as exc:
                error = exc
            step = _advance(plan, reply, error)
        return step.value
    finally:
        plan.close()


async def adrive(
    plan: Plan,
    acall: Callable[[Call], Awaitable[Outcome]],
    ledger_io: Callable[..., Awaitable[Any]] | None,
    off_loop: Callable[..., Awaitable[Any]],
) -> Any:
    """Run ``plan`` to its result on the event loop.

    Ledger operations (budget checks, write-ahead rows, settlements) never wait on the loop:
    ``ledger_io`` runs them on it only when the ledger is free at once, else on the ledger's
    thread (None: there is no ledger, so they run in place); ``off_loop`` runs code that may
    wait (closing a plan that may settle a hold).
    """
    try:
        step = _advance(plan, None, None)
        while not isinstance(step, _Done):
            reply: Any = None
            error: Exception | None = None
            try:
                if isinstance(step, Call):
                    reply = await acall(step)
                elif isinstance(step, Io):
                    reply = (
                        step.fn(*step.args, **step.kwargs) if ledger_io is None
                        else await ledger_io(step.fn, *step.args, **step.kwargs)
                    )
                elif isinstance(step, Hedge):
                    reply = await _ahedge(
                        step, lambda sub: adrive(sub, acall, ledger_io, off_loop)
                    )
                else:
                    reply = await step.slot.arun(step.request, step.completion)
            except Exception as exc:
                error = exc
            step = _advance(plan, reply, error)
        return step.value
    finally:
        # Not run to its end (cancelled, failed): closing it may settle a hold.
        if inspect.getgeneratorstate(plan) != inspect.GEN_CLOSED:
            await off_loop(plan.close)


def _hedge_in_turn(hedge: Hedge, call: Callable[[Call], Outcome]) -> Hedged:
    """The sync driver does not hedge: one rung at a time, in ladder order."""
    outcomes: dict[int, Any] = {}
    for i in range(hedge.count):
        outcomes[i] = drive(hedge.make(i), call)
        if hedge.accepted(outcomes[i]):
            return i, outcomes
    return None, outcomes


async def _ahedge(hedge: Hedge, run: Callable[[Plan], Awaitable[Any]]) -> Hedged:
    """Hedged rungs on the event loop (see ``Hedge``)."""
    running: dict[int, asyncio.Future[Any]] = {}
    outcomes: dict[int, Any] = {}
    started = 0

    def start() -> None:
        nonlocal started
        running[started] = asyncio.ensure_future(run(hedge.make(started)))
        started += 1

    start()
    crowded = False  # the next rung did not fit beside those in flight: wait for one to end
    try:
        while running:
            # Wait for an outcome; past the delay with a rung left, start it alongside.
            wait = hedge.after_s if started < hedge.count and not crowded else None
            done, _ = await asyncio.wait(
                running.values(), timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                if hedge.fits(started):
                    start()
                else:
                    crowded = True
                continue
            crowded = False
            for i in sorted(i for i, f in running.items() if f in done):
                outcomes[i] = running.pop(i).result()  # a plan's error ends the run
                if hedge.accepted(outcomes[i]):
                    return i, outcomes
            if not running and started < hedge.count:
                start()
        return None, outcomes
    finally:
        # The losers: cancelling closes their plans, which settle what each call was billed.
        for future in running.values():
            future.cancel()
        if running:
            await asyncio.gather(*running.values(), return_exceptions=True)


@dataclass(frozen=True, slots=True)
class _Done:
    value: Any


def _advance(plan: Plan, reply: Any, error: Exception | None) -> Any:
    """The plan's next operation, or ``_Done`` with its result once it is done."""
    try:
        return plan.send(reply) if error is None else plan.throw(error)
    except StopIteration as done:
        return _Done(done.value)
