"""Shadow evaluation: labels for accepted answers, without asking users.

With a task's ``shadow_rate: 0.05``, that share of accepted runs (answered below the top rung)
also calls every rung above the one that answered, after the run has returned, so the caller
never waits for it: on a thread of the engine's for ``complete``, in an asyncio task for
``acomplete`` and the gateway. Each shadow call is a step of the same run with decision
``shadow``: it reserves its worst case and is settled like any step, the period budgets apply
(a refused one is a ``shadow`` step with cost 0 and the reason), and its cost is reported apart
from the run's (the run's ``cost_usd`` and the result never include it).

At most ``shadow_max_in_flight`` (a top-level setting, default 4) shadow evaluations wait or run
at once per engine, all tasks together: a burst of accepted runs would otherwise send as many
calls to the top rung at once, with no bound, as there are clients. One that does not fit is
skipped, never queued: counted per task in ``Shadows.skipped`` (the gateway's
``cascade_shadow_skipped_total``) and logged as ``cascade.shadow_skipped``.

The label: the accepted answer's agreement with the top rung's answer (1.0 or 0.0), stored as
feedback with ``source = 'shadow:agreement'``. Two answers agree when their final numbers are
equal, or, without numbers, when their texts are equal once case, spacing and closing punctuation
are ignored (``evaluators.agreement.normalize``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Generator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from cascade.config.params import bound_output
from cascade.engine.caller import NOTHING, Call, Caller
from cascade.engine.plan import adrive, drive, io
from cascade.engine.recorder import Recorder, Run
from cascade.ledger.feedback import add_feedback
from cascade.logs import get_logger
from cascade.types import CascadeResult, Completion

if TYPE_CHECKING:
    from cascade.config import CascadeConfig
    from cascade.engine.ladder import TaskLadder as _Task
    from cascade.engine.limits import Limits
    from cascade.ledger import Ledger

__all__ = ["SOURCE", "Shadows", "agreement_label"]

log = get_logger()

# How the engine runs a ledger operation, or ledger-bound code, from async code.
AsyncIO = Callable[..., Awaitable[Any]]

SOURCE = "shadow:agreement"
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def _final(text: str) -> Any:
    from evaluators.agreement import normalize

    numbers = [n.replace(",", "").rstrip(".") for n in _NUMBER.findall(text)]
    if numbers:
        return normalize(numbers[-1])
    return normalize(text, numeric=False)


def agreement_label(answer: str, reference: str) -> float:
    """1.0 when ``answer`` agrees with the top rung's ``reference``, else 0.0."""
    return 1.0 if _final(answer) == _final(reference) else 0.0


class Shadows:
    """Decides which runs get a shadow evaluation and runs them off the request path.

    The engine hands in the parts the shadow calls share with its own runs, so this module
    never imports the engine.

    Args:
        config: The engine's config (each task's ``shadow_rate`` and ``deadline_s``,
            ``shadow_max_in_flight``).
        caller: The engine's caller: the same providers, retries and breakers.
        limits: The engine's limits: period budgets hold for shadow calls too.
        recorder: Writes each shadow step to the ledger.
        ledger: The engine's ledger, or None.
        ledger_io: Runs a ledger operation from async code (the engine's).
        off_loop: Runs code that may wait for the ledger off the event loop (the engine's).
        rng: The sampler (seed it, or pass one, for reproducible tests).
    """

    def __init__(
        self,
        config: CascadeConfig,
        caller: Caller,
        limits: Limits,
        recorder: Recorder,
        ledger: Ledger | None,
        ledger_io: AsyncIO,
        off_loop: AsyncIO,
        rng: random.Random | None = None,
    ):
        self.config = config
        self.caller = caller
        self.limits = limits
        self.recorder = recorder
        self.ledger = ledger
        self.ledger_io = ledger_io
        self.off_loop = off_loop
        self.rng = rng or random.Random()
        self.max_in_flight = config.shadow_max_in_flight
        # Held by each shadow evaluation from its submission to its end, sync and async alike.
        self._slots = threading.BoundedSemaphore(self.max_in_flight)
        self._lock = threading.Lock()
        self.skipped: Counter[str] = Counter()  # per task: due, but over max_in_flight
        self._executor: ThreadPoolExecutor | None = None
        self._futures: set[Future[Any]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def due(self, task: _Task, result: CascadeResult) -> bool:
        rate = self.config.tasks[task.name].shadow_rate if (
            task.name in self.config.tasks) else 0.0
        if rate <= 0 or not result.accepted or result.cached:
            return False
        keys = [r.key for r in task.rungs]
        if result.model not in keys or keys.index(result.model) == len(keys) - 1:
            return False  # the top rung answered: nothing above it to compare with
        return self.rng.random() < rate

    def submit(self, task: _Task, run: Run, result: CascadeResult, params: Mapping[str, Any]
               ) -> None:
        """From ``complete``: run the shadow calls on the engine's shadow threads."""
        if not self.due(task, result) or not self._admit(task, result):
            return
        try:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.max_in_flight, thread_name_prefix="cascade-shadow"
                )
            future = self._executor.submit(
                drive, self._plan(task, run, result, dict(params)), self.caller.call
            )
        except BaseException:
            self._slots.release()
            raise
        self._futures.add(future)
        future.add_done_callback(self._finished)

    def asubmit(self, task: _Task, run: Run, result: CascadeResult, params: Mapping[str, Any]
                ) -> None:
        """From ``acomplete``: run the shadow calls in an asyncio task of their own."""
        if not self.due(task, result) or not self._admit(task, result):
            return
        try:
            job = asyncio.ensure_future(adrive(
                self._plan(task, run, result, dict(params)), self.caller.acall, self.ledger_io,
                self.off_loop,
            ))
        except BaseException:
            self._slots.release()
            raise
        self._tasks.add(job)
        job.add_done_callback(self._finished)

    def _admit(self, task: _Task, result: CascadeResult) -> bool:
        """Take a slot for a shadow evaluation, or count it as skipped: never a queue."""
        if self._slots.acquire(blocking=False):
            return True
        with self._lock:
            self.skipped[task.name] += 1
        log.info("cascade.shadow_skipped", run_id=result.run_id, task=task.name,
                 max_in_flight=self.max_in_flight)
        return False

    def _finished(self, job: Any) -> None:
        self._slots.release()
        self._futures.discard(job)
        self._tasks.discard(job)
        if not job.cancelled() and job.exception() is not None:
            log.warning("cascade.shadow_failed", error=str(job.exception()))

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the shadow evaluations started by ``complete``."""
        for future in list(self._futures):
            with contextlib.suppress(Exception):  # failures are logged by _finished
                future.result(timeout)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for the shadow evaluations started by ``acomplete`` (the gateway's shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _plan(
        self, task: _Task, run: Run, result: CascadeResult, params: dict[str, Any]
    ) -> Generator[Any, Any, CascadeResult]:
        keys = [r.key for r in task.rungs]
        settings = self.config.tasks[task.name]
        run.deadline = time.monotonic() + settings.deadline_s
        messages = run.messages
        answers: dict[str, Completion] = {}
        for rung in task.rungs[keys.index(result.model) + 1:]:
            call_params = bound_output(
                {**rung.model.params, **task.params, **params},
                rung.model.max_output_tokens,
                rung.key,
            )
            index = run.next_index()
            # Period budgets hold for shadow calls too; the request's own cap does not (the
            # caller has had its answer).
            gate = yield io(
                self.limits.check, task.name, rung.model.provider, rung.key, messages,
                call_params, 0.0, None, run_id=run.run_id, step=index, key=run.key,
            )
            if gate.skipped:
                yield io(self.recorder.step, run, rung.key, NOTHING,
                          "shadow", (), error=gate.reason, index=index)
                break
            try:
                outcome = yield Call(rung.key, messages, call_params, None, run.deadline, gate)
                done = outcome.completion
                unsent = None if outcome.unsent is None else f"not sent: {outcome.unsent}"
                step = yield io(
                    self.recorder.step, run, rung.key, outcome, "shadow", (),
                    completion=None if done is None else done, index=index, hold=gate.hold,
                    error=unsent,
                )
            finally:
                self.limits.release(gate)
            if done is not None:
                answers[rung.key] = done
                if self.ledger is not None:
                    rows = self.recorder.content(run, [step], prompt=False)
                    if rows:
                        # queued for the ledger's writer thread
                        yield io(self.ledger.record_content, run.run_id, rows)
        top = keys[-1]
        if top in answers and self.ledger is not None:
            label = agreement_label(result.text, answers[top].text)
            yield io(add_feedback, self.ledger, run.run_id, label,
                      f"agreement of {result.model} with {top}", source=SOURCE,
                      key_name=run.key.name if run.key is not None else None)
        return result
