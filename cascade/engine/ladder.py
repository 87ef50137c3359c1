"""The ladder, written once: call a rung -> price it -> evaluate -> record -> accept or escalate.

``Ladder.plan`` is a generator (a *plan*, see ``engine.plan``) that yields the I/O it needs: a
model ``Call``, an evaluation (``Eval``), a ledger operation (``Io``) or a ``Hedge`` of rung
plans. ``complete`` drives it synchronously and ``acomplete`` with ``await``, so both paths take
exactly the same decisions. Nothing here waits for anything itself.

Reading order: ``plan`` walks the rungs; ``_rung`` is one rung (router skip, deadline, budget
gate, repairs); ``_attempt`` is one call of one rung and its evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cascade.config import MinScore, ModelConfig
from cascade.config.params import bound_output
from cascade.engine.caller import NOTHING, Call, Outcome
from cascade.engine.limits import Gate, Limits
from cascade.engine.plan import Eval, Hedge, Io, Plan, io
from cascade.engine.recorder import Recorder, Run
from cascade.errors import BudgetExceeded, CascadeExhausted, ProviderError
from cascade.evaluation import Slot, combine, decided, finalized, judging, shown
from cascade.ledger.money import bill
from cascade.models.features import prompt_text
from cascade.models.router import Router
from cascade.providers.base import Provider
from cascade.types import CascadeResult, Completion, Decision, Message, Request, Verdict

__all__ = ["TRUNCATED", "Climb", "Ladder", "Rung", "TaskLadder"]

# The verdict of an answer cut off at the output limit (task option escalate_on_truncation).
TRUNCATED = Verdict(
    "truncation", False, 0.0, "the answer was cut off at the output limit (finish_reason length)"
)

# A rung that answered but was not accepted: the answer returned if no rung is.
_Last = tuple["Rung", Completion, tuple[Verdict, ...]]
# One call's answer, its verdicts, whether it was accepted, and the evaluator to repair with.
_Attempt = tuple[Completion, tuple[Verdict, ...], bool, "tuple[Slot, Verdict] | None"]
_RungPlan = Generator["Call | Eval | Io | Hedge", Any, "tuple[CascadeResult | None, _Last | None]"]



@dataclass(frozen=True, slots=True)
class Rung:
    key: str
    model: ModelConfig
    provider: Provider
    slots: tuple[Slot, ...]
    accept: str | MinScore


@dataclass(frozen=True, slots=True)
class TaskLadder:
    """A task's rungs with their evaluators built: what a run climbs."""

    name: str
    rungs: tuple[Rung, ...]
    on_exhausted: str
    params: Mapping[str, Any]
    router: Router | None = None
    escalate_on_truncation: bool = True
    hedge_after_ms: float | None = None


@dataclass(slots=True)
class Climb:
    """One run's walk up a ladder: what every rung needs, and what the rungs below left."""

    task: TaskLadder
    messages: tuple[Message, ...]
    params: dict[str, Any]
    run: Run
    cap: float | None
    prompt: str  # the prompt's text, for the router ("" without one)
    bounded: tuple[dict[str, Any], ...]  # each rung's call parameters (``bounded``)
    history: list[Completion] = field(default_factory=list)  # earlier rungs' answers
    refused: list[Gate] = field(default_factory=list)  # budget and circuit refusals

    def request(self, history: tuple[Completion, ...]) -> Request:
        return Request(
            task=self.task.name,
            messages=self.messages,
            params=self.params,
            run_id=self.run.run_id,
            history=history,
            query_id=self.run.query_id,
        )


class Ladder:
    """Plans runs over built task ladders, recording through the engine's recorder and limits."""

    def __init__(
        self,
        models: Mapping[str, ModelConfig],
        recorder: Recorder,
        limits: Limits,
    ):
        self.models = models
        self.recorder = recorder
        self.limits = limits

    @staticmethod
    def bounded(task: TaskLadder, params: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
        """Each rung's call parameters, held to its ``max_output_tokens``: the worst case a
        reservation assumes.

        Raises:
            RequestError: the caller asks for more output than some rung allows; checked for
                every rung before anything is called.
        """
        return tuple(
            bound_output(
                {**rung.model.params, **task.params, **params},
                rung.model.max_output_tokens,
                rung.key,
            )
            for rung in task.rungs
        )

    def plan(
        self,
        task: TaskLadder,
        messages: tuple[Message, ...],
        params: dict[str, Any],
        run: Run,
        bounded: tuple[dict[str, Any], ...] | None = None,
    ) -> Plan:
        """The plan of one run: its ``CascadeResult``, or the error that ends it.

        ``bounded`` is ``Ladder.bounded(task, params)`` when the caller has it already.
        """
        climb = Climb(
            task, messages, params, run, run.cap,
            prompt_text(messages) if task.router is not None else "",
            bounded if bounded is not None else self.bounded(task, params),
        )
        last: _Last | None = None
        if task.hedge_after_ms is not None and len(task.rungs) > 1:
            winner, outcomes = yield Hedge(
                len(task.rungs),
                lambda i: self._rung(climb, i),
                lambda o: o[0] is not None,
                task.hedge_after_ms / 1000,
                lambda i: self._fits(climb, i),
            )
            if winner is not None:
                done: CascadeResult = outcomes[winner][0]
                # The rungs that lost were settled after the winner's result was built: a call
                # cancelled in flight costs its worst case, and the result says so.
                return replace(done, cost_usd=run.cost(),
                               steps=tuple(sorted(run.steps, key=lambda s: s.step)))
            # The highest rung that answered is the one returned when none is accepted.
            answered = [outcomes[i][1] for i in sorted(outcomes) if outcomes[i][1] is not None]
            last = answered[-1] if answered else None
        else:
            for i in range(len(task.rungs)):
                won, tried = yield from self._rung(climb, i)
                if won is not None:
                    return won
                last = tried or last
        if last is None:
            raise self._nothing_answered(climb)
        result = self.result(run, *last, accepted=False)
        if task.on_exhausted == "raise":
            raise CascadeExhausted(result)
        return result

    def cached(self, run: Run, model: str, text: str, parsed: Any) -> Plan:
        """A cache hit: one free step marked ``cache``, no provider call."""
        done = Completion(text=text, model=model, provider=self.models[model].provider)
        yield io(self.recorder.step, run, model, Outcome(done, None, 0, 0.0), "cache", (),
                 index=run.next_index())
        return replace(
            self.result(run, None, done, (), accepted=True), model=model, json=parsed, cached=True
        )

    def _rung(self, climb: Climb, i: int) -> _RungPlan:
        """Rung ``i``, repairs included: its accepted result, or the last answer it gave."""
        task, run = climb.task, climb.run
        rung = task.rungs[i]
        if task.router is not None and (skip := task.router.skip(rung.key, climb.prompt)):
            # Predicted to fail from the prompt alone: neither the call nor its checks are
            # paid for, and the step says why.
            p, threshold = skip
            verdict = Verdict(
                "router", False, p, f"predicted P(correct) = {p:.3f} < skip_below {threshold:g}"
            )
            yield io(self.recorder.step, run, rung.key, NOTHING, "skip", (verdict,),
                     index=run.next_index())
            return None, None
        convo, call_params = _prepared(climb, i)
        repairs = {s.name: int(getattr(s.evaluator, "repair_attempts", 0)) for s in rung.slots}
        last: _Last | None = None
        while True:
            if run.deadline is not None and time.monotonic() >= run.deadline:
                # Nothing is called, so nothing is reserved: a row of its own, cost 0.
                yield io(self.recorder.step, run, rung.key, NOTHING, "skip", (),
                         error="the run's deadline passed (deadline_s)", index=run.next_index())
                break
            index = run.next_index()
            gate = yield from self._gate(climb, rung, convo, call_params, index)
            if gate.skipped:
                climb.refused.append(gate)
                yield io(self.recorder.step, run, rung.key, NOTHING, "skip", (),
                         error=gate.reason, index=index)
                break
            try:
                step = yield from self._attempt(climb, rung, convo, call_params, repairs, index,
                                                gate)
            finally:
                # A step still held here never heard back from its call (cancelled): it is
                # settled as lost at its worst case, never silently dropped.
                self.recorder.lost(run, rung.key, gate, index)
            if step is None:
                break
            completion, verdicts, ok, fixer = step
            if ok:
                return self._accepted(climb, rung, completion, verdicts), None
            last = (rung, completion, verdicts)
            if fixer is None:
                # Later rungs compare with what this rung said, not its confidence line.
                climb.history.append(finalized(rung.slots, completion))
                break
            slot, verdict = fixer
            repairs[slot.name] -= 1
            convo = (
                *convo,
                {"role": "assistant", "content": completion.text},
                {"role": "user", "content": slot.hooks["repair_message"](verdict)},
            )
        return None, last

    def _gate(
        self,
        climb: Climb,
        rung: Rung,
        convo: tuple[Message, ...],
        call_params: dict[str, Any],
        index: int,
    ) -> Generator[Io, Any, Gate]:
        """Check the rung and write its pending row (or raise LedgerError); a go is held in
        flight against the run's cap until its step is recorded."""
        run = climb.run
        spent, estimate = run.committed(), None
        if climb.cap is not None:
            # Held before the check, which may wait for the ledger: a hedged rung started
            # meanwhile counts it.
            estimate = run.held[index] = self.limits.worst_case(rung.key, convo, call_params)
        try:
            gate: Gate = yield io(
                self.limits.check,
                climb.task.name, rung.model.provider, rung.key, convo, call_params, spent,
                climb.cap, run_id=run.run_id, step=index, estimate=estimate, tab=run,
                key=run.key,
            )
        except BaseException:
            run.held.pop(index, None)
            raise
        if gate.skipped:
            run.held.pop(index, None)
        else:
            run.held[index] = gate.reserved
        return gate

    def _fits(self, climb: Climb, i: int) -> bool:
        """Whether rung ``i`` may start as a hedge: its worst case fits the run's cap beside
        what the rungs in flight hold. (One that does not waits for them, and is checked
        again then, as without hedging.)"""
        if climb.cap is None:
            return True
        convo, call_params = _prepared(climb, i)
        estimate = self.limits.worst_case(climb.task.rungs[i].key, convo, call_params)
        return climb.run.committed() + estimate <= climb.cap

    def _attempt(
        self,
        climb: Climb,
        rung: Rung,
        convo: tuple[Message, ...],
        call_params: dict[str, Any],
        repairs: Mapping[str, int],
        index: int,
        gate: Gate,
    ) -> Generator[Call | Eval | Io, Any, _Attempt | None]:
        """Call one rung once, evaluate the answer and record the step; None if the call failed."""
        run = climb.run
        # The earlier answers as they stand when this call starts: a hedged rung started
        # alongside a lower one does not see that rung's answer (docs/reliability.md).
        history = tuple(climb.history)
        outcome = yield Call(rung.key, convo, call_params, run.query_id, run.deadline, gate)
        if outcome.unsent is not None:
            # Nothing was sent (a missing key, a body that cannot be built): the write-ahead
            # row is settled at its real cost, nothing, before the error goes up; a later rung
            # would fail the same way or hide a mistake the user must fix.
            yield io(self.recorder.step, run, rung.key, outcome, "error", (), index=index,
                     hold=gate.hold, error=f"not sent: {outcome.unsent}")
            raise outcome.unsent
        if outcome.completion is None:
            yield io(self.recorder.step, run, rung.key, outcome, "error", (), index=index,
                     hold=gate.hold)
            return None
        completion = outcome.completion.named(rung.key)
        # Evaluators that add to the answer (a confidence line) read it raw; the others judge
        # the text the user would get.
        clean = finalized(rung.slots, completion)
        # Held at its real cost from now on: a judge called during evaluation counts it.
        run.held[index] = bill((*outcome.billed, completion), rung.model.price) + outcome.lost_usd
        verdicts: list[Verdict] = []
        slots = judging(rung.slots, completion)
        try:
            if climb.task.escalate_on_truncation and completion.finish_reason == "length":
                # A cut-off answer is incomplete whatever its checks say; they are not run.
                slots = ()
                verdicts.append(TRUNCATED)
            if slots:
                request = climb.request(history)
            for slot in slots:
                verdict = yield Eval(slot, request, shown(slot, completion, clean))
                verdicts.append(verdict)
                if decided(rung.accept, verdict):
                    break
        except GeneratorExit:
            # Cancelled while its answer was being judged (a hedged rung that lost): the call
            # completed, so its step is settled with its real usage, not the reserved worst
            # case. The plan is being closed off the loop (``adrive``), so this may write.
            self.recorder.step(
                run, rung.key, outcome, "error", tuple(verdicts), completion=completion,
                index=index, error="cancelled: another rung answered first", hold=gate.hold,
            )
            raise
        except Exception as exc:
            # The answer was paid for: its step goes to the ledger before the error goes up.
            yield io(
                self.recorder.step, run, rung.key, outcome, "error", tuple(verdicts),
                completion=completion, index=index, error=f"evaluation failed: {exc}",
                hold=gate.hold,
            )
            raise
        if verdicts and verdicts[0] is TRUNCATED:
            ok, fixer = False, None
        else:
            weights = [s.weight for s in slots[: len(verdicts)]]
            ok = combine(rung.accept, verdicts, weights)
            fixer = None if ok else _repairer(slots, verdicts, repairs)
        decision: Decision = "accept" if ok else ("repair" if fixer else "escalate")
        yield io(
            self.recorder.step, run, rung.key, outcome, decision, tuple(verdicts),
            completion=completion, index=index, hold=gate.hold,
        )
        return completion, tuple(verdicts), ok, fixer

    def _accepted(
        self, climb: Climb, rung: Rung, completion: Completion, verdicts: tuple[Verdict, ...]
    ) -> CascadeResult:
        # The facade caches it (the async path without blocking the event loop).
        return self.result(climb.run, rung, completion, verdicts, accepted=True)

    def _nothing_answered(self, climb: Climb) -> BudgetExceeded | ProviderError:
        """The error of a run in which no rung produced an answer at all."""
        run, name = climb.run, climb.task.name
        result = self.result(run, None, None, (), accepted=False)
        budget = [g for g in climb.refused if g.kind == "budget"]
        if budget:
            cheapest = min(budget, key=lambda g: g.estimate)
            return BudgetExceeded(
                f"task {name!r}: no rung fits the budget ({cheapest.reason})",
                limit_usd=cheapest.limit_usd,
                estimate_usd=cheapest.estimate,
                result=result,
            )
        failures = "; ".join(f"{s.model}: {s.error}" for s in run.steps if s.error)
        return ProviderError(
            f"task {name!r}: no rung produced an answer ({failures})", result=result
        )

    def result(
        self,
        run: Run,
        rung: Rung | None,
        completion: Completion | None,
        verdicts: tuple[Verdict, ...],
        *,
        accepted: bool,
    ) -> CascadeResult:
        finalizers = [
            slot.hooks["finalize"]
            for slot in (rung.slots if rung else ())
            if "finalize" in slot.hooks
        ]
        return self.recorder.result(
            run,
            rung.key if rung else "",
            completion,
            verdicts,
            accepted=accepted,
            finalizers=finalizers,
        )


def _prepared(climb: Climb, i: int) -> tuple[tuple[Message, ...], dict[str, Any]]:
    """Rung ``i``'s conversation and call parameters, after its evaluators' ``prepare`` hooks.

    The parameters hold the output limit the worst case assumes, so the call is held to it.
    """
    convo, call_params = climb.messages, climb.bounded[i]
    for slot in climb.task.rungs[i].slots:
        if "prepare" in slot.hooks:
            convo, call_params = slot.hooks["prepare"](convo, call_params)
    return convo, call_params


def _repairer(
    slots: Sequence[Slot], verdicts: Sequence[Verdict], left: Mapping[str, int]
) -> tuple[Slot, Verdict] | None:
    """The first failing evaluator that can still ask the model to fix its answer."""
    # verdicts may stop short of the slots (short-circuit), hence strict=False
    for slot, verdict in zip(slots, verdicts, strict=False):
        if not verdict.passed and "repair_message" in slot.hooks and left.get(slot.name, 0) > 0:
            return slot, verdict
    return None
