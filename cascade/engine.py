"""The engine: call a rung -> price it -> evaluate -> log and record -> accept or escalate.

The ladder logic is written once, as a generator that yields the I/O it needs (a model call,
an evaluation, a ledger operation) and receives the outcome. ``complete`` drives it
synchronously and ``acomplete`` with ``await`` (``cascade.plan``), so both paths take exactly the
same decisions.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cascade.cache import ResponseCache, cache_key
from cascade.caller import Call, Caller, Outcome
from cascade.config import (
    CascadeConfig,
    MinScore,
    ModelConfig,
    TaskConfig,
    load_config,
    parse_config,
    resolve_path,
)
from cascade.errors import (
    BudgetExceeded,
    CascadeError,
    CascadeExhausted,
    ConfigError,
    ProviderError,
    RequestError,
)
from cascade.evaluation import (
    EvaluatorContext,
    Slot,
    build_evaluators,
    combine,
    decided,
    finalized,
    judging,
    shown,
)
from cascade.features import prompt_text
from cascade.feedback import FeedbackRecord, add_feedback
from cascade.ledger import Ledger, open_ledger
from cascade.limits import Gate, Limits
from cascade.logs import get_logger
from cascade.params import bound_output, check_call_params
from cascade.plan import Eval, Hedge, Io, Plan, adrive, drive, io
from cascade.plugins import PROVIDERS, load_plugin
from cascade.pricing import cost_usd
from cascade.providers.base import Provider
from cascade.recorder import Recorder, Run, current_run
from cascade.retry import RetryPolicy
from cascade.router import Router, load_router
from cascade.shadow import Shadows
from cascade.task_router import Choice, load_task_router, pick_task
from cascade.types import (
    CascadeResult,
    Completion,
    Decision,
    Message,
    Request,
    Verdict,
    as_messages,
)

__all__ = ["Cascade"]

log = get_logger()

# The verdict of an answer cut off at the output limit (task option escalate_on_truncation).
TRUNCATED = Verdict(
    "truncation", False, 0.0, "the answer was cut off at the output limit (finish_reason length)"
)


@dataclass(frozen=True, slots=True)
class Rung:
    key: str
    model: ModelConfig
    provider: Provider
    slots: tuple[Slot, ...]
    accept: str | MinScore


@dataclass(frozen=True, slots=True)
class _Task:
    name: str
    rungs: tuple[Rung, ...]
    on_exhausted: str
    params: Mapping[str, Any]
    router: Router | None = None
    escalate_on_truncation: bool = True
    hedge_after_ms: float | None = None


_Attempt = tuple[Completion, tuple[Verdict, ...], bool, "tuple[Slot, Verdict] | None"]
_Last = tuple[Rung, Completion, tuple[Verdict, ...]]


class Cascade:
    """A set of task ladders built from one config.

    Args:
        config: A validated ``CascadeConfig``.
        path: The file it came from, used in error messages and to resolve relative paths.
        providers: Provider instances to use instead of building them from the config,
            keyed by ``providers:`` name (tests, custom clients).
        ledger: A ``Ledger`` to record into; by default the config's ``ledger:`` section
            (a SQLite ``path`` or a PostgreSQL ``url_env``/``url``). Pass ``False`` to record
            nothing.
        sleep: The retry layer's sleep (inject a no-op in tests).
        asleep: The async retry layer's sleep.

    Raises:
        ConfigError: an evaluator's settings are invalid, or a plug-in is missing.
        LedgerError: the configured ledger cannot be opened.
    """

    def __init__(
        self,
        config: CascadeConfig,
        *,
        path: str | None = None,
        providers: Mapping[str, Provider] | None = None,
        ledger: Ledger | bool | None = None,
        sleep: Callable[[float], None] = time.sleep,
        asleep: Callable[[float], Awaitable[None]] | None = None,
    ):
        self.config = config
        self.path = path
        retry = RetryPolicy(config.retry, sleep=sleep, **({"asleep": asleep} if asleep else {}))
        try:
            self.providers: dict[str, Provider] = {
                name: self._build_provider(name, providers) for name in config.providers
            }
            self.tasks = {name: self._build_task(name) for name in config.tasks}
        except ConfigError as exc:
            if exc.path is None and path is not None:
                raise ConfigError(exc.message, path=path, location=exc.location) from exc
            raise
        if ledger is None or ledger is True:
            self.ledger = open_ledger(config.ledger, config_path=path)
        else:
            self.ledger = ledger or None
        try:
            self.limits = Limits(config, self.ledger)
        except ConfigError as exc:
            raise ConfigError(exc.message, path=path, location=exc.location) from exc
        cached_tasks = any(t.cache for t in config.tasks.values())
        self.cache = ResponseCache(resolve_path(config.cache.path, path)) if cached_tasks else None
        self._caller = Caller(config, self.providers, retry, self.limits)
        self._recorder = Recorder(config, self.ledger, self.limits.accounts)
        # Learning from production (docs/learning.md): shadow evaluation and task "auto".
        self.shadows = Shadows(self)
        self.task_router = load_task_router(config, config_path=path)

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy (tenacity); shared by engines built for one service."""
        return self._caller.retry

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        self._caller.retry = policy

    @classmethod
    def from_yaml(cls, path: str | Path, **kwargs: Any) -> Cascade:
        """Load, validate and build a config file. See ``Cascade`` for the keyword arguments.

        Raises:
            ConfigError: naming the file and key path of the first problem.
        """
        return cls(load_config(path), path=str(path), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **kwargs: Any) -> Cascade:
        """Build from a mapping shaped like the YAML file (configs made in code)."""
        return cls(parse_config(data), **kwargs)

    def __repr__(self) -> str:
        return f"Cascade(tasks={list(self.tasks)!r}, path={self.path!r})"

    def __enter__(self) -> Cascade:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the providers' sync clients, the ledger and the cache."""
        self.shadows.close()  # shadow calls still running finish first: they use the ledger
        for provider in self.providers.values():
            close = getattr(provider, "close", None)
            if close is not None:
                close()
        if self.ledger is not None:
            self.ledger.close()
        if self.cache is not None:
            self.cache.close()

    def with_tasks(self, tasks: Mapping[str, TaskConfig]) -> Cascade:
        """A view of this engine that runs other tasks and shares everything else.

        The providers (and their connections), the ledger, the limits (budgets, circuit
        breakers, concurrency slots), the retry policy and the cache stay this engine's; only
        the task table differs. Close this engine, not the view. The gateway runs a bare
        ``models:`` key as a one-rung task through such a view.

        Raises:
            ConfigError: a task's evaluators are invalid or a plug-in is missing.
        """
        view = copy.copy(self)
        view.config = self.config.model_copy(update={"tasks": dict(tasks)})
        view.tasks = {name: view._build_task(name) for name in tasks}
        return view

    async def aclose(self) -> None:
        """Close the async SDK clients of the running event loop (after its shadow calls)."""
        await self.shadows.drain()
        for provider in self.providers.values():
            aclose = getattr(provider, "aclose", None)
            if aclose is not None:
                await aclose()

    async def __aenter__(self) -> Cascade:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
        self.close()

    # -- building -------------------------------------------------------------------------------

    def _build_provider(self, name: str, given: Mapping[str, Provider] | None) -> Provider:
        if given and name in given:
            return given[name]
        settings = self.config.providers[name]
        if settings.dataset:  # a replay dataset, like every path in the file, is the file's
            settings = settings.model_copy(
                update={"dataset": resolve_path(settings.dataset, self.path)}
            )
        factory = load_plugin(PROVIDERS, settings.type, location=f"providers.{name}.type")
        provider: Provider = factory(name, settings)
        return provider

    def _build_task(self, name: str) -> _Task:
        task = self.config.tasks[name]
        rungs = []
        for i, rung in enumerate(task.ladder):
            model = self.config.models[rung.model]
            provider = self.providers[model.provider]
            own = rung.evaluators is not None
            specs = rung.evaluators if rung.evaluators is not None else task.evaluators
            location = f"tasks.{name}.ladder[{i}].evaluators" if own else f"tasks.{name}.evaluators"
            ctx = EvaluatorContext(
                location=location,
                task=name,
                model=rung.model,
                provider_type=self.config.providers[model.provider].type,
                supports_logprobs=bool(getattr(provider, "supports_logprobs", False)),
                services=self,
                config_dir=Path(self.path).parent if self.path else None,
            )
            rungs.append(
                Rung(
                    key=rung.model,
                    model=model,
                    provider=provider,
                    slots=build_evaluators(specs, ctx),
                    accept=rung.accept if rung.accept is not None else task.accept,
                )
            )
        router = None
        if task.router is not None:
            router = load_router(
                task.router.model,
                task.router.skip_below,
                [r.model for r in task.ladder],
                config_dir=Path(self.path).parent if self.path else None,
                path=self.path,
                location=f"tasks.{name}.router",
            )
        return _Task(
            name=name,
            rungs=tuple(rungs),
            on_exhausted=task.on_exhausted,
            params=task.params,
            router=router,
            escalate_on_truncation=task.escalate_on_truncation,
            hedge_after_ms=task.hedge_after_ms,
        )

    # -- public API -----------------------------------------------------------------------------

    def complete(
        self,
        task: str,
        prompt: str | Sequence[Message],
        *,
        query_id: str | None = None,
        max_cost_usd: float | None = None,
        log_content: bool | None = None,
        deadline_s: float | None = None,
        **params: Any,
    ) -> CascadeResult:
        """Run ``task``'s ladder on a prompt and return the first accepted answer.

        Args:
            task: A ``tasks:`` key.
            prompt: A prompt string or an OpenAI-style messages list.
            query_id: An external id for the query (the replay provider looks answers up by it).
            max_cost_usd: A cap on this call's total cost (overrides the task's ``max_cost_usd``).
            log_content: Put prompt and answer text in log events (default: the config's).
            deadline_s: End the run within this many seconds (it can only shorten the task's
                ``deadline_s``); rungs left when it passes are ``skip`` steps.
            **params: Provider parameters such as ``max_tokens`` or ``temperature``.

        Returns:
            The ``CascadeResult``, with every step taken.

        Raises:
            ConfigError: unknown task, or a provider's API key variable is unset.
            ProviderError: no rung produced an answer at all (``.result`` holds the steps).
            CascadeExhausted: no rung passed and the task says ``on_exhausted: raise``.
            EvaluatorError: an evaluator crashed.
            BudgetExceeded: no rung fits the cost cap or the period budgets.
            RequestError: a parameter is refused (a transport option, an ``extra_body`` that
                overrides a checked parameter, ``max_tokens`` above a rung's
                ``max_output_tokens``); nothing was called.
        """
        task, choice = self._pick(task, prompt)
        plan, run = self._start(
            task, prompt, query_id, max_cost_usd, log_content, deadline_s, params
        )
        run.task_probability = choice.probability if choice else None
        token = current_run.set(run)
        try:
            result = self._recorder.finish(drive(plan, self._caller.call), run)
        except CascadeError as exc:
            self._recorder.fail(exc, run)
            raise self._located(exc) from exc.__cause__
        finally:
            current_run.reset(token)
        self.shadows.submit(self.tasks[task], run, result, params)
        return result

    async def acomplete(
        self,
        task: str,
        prompt: str | Sequence[Message],
        *,
        query_id: str | None = None,
        max_cost_usd: float | None = None,
        log_content: bool | None = None,
        deadline_s: float | None = None,
        **params: Any,
    ) -> CascadeResult:
        """The async twin of ``complete``, with the same arguments, result and errors.

        The event loop never waits for the ledger: a write-ahead row, reservation or
        settlement runs in place only when the ledger can take it at once (SQLite, about
        0.1 ms), else on the ledger's thread (PostgreSQL: always).
        """
        task, choice = self._pick(task, prompt)
        plan, run = self._start(
            task, prompt, query_id, max_cost_usd, log_content, deadline_s, params
        )
        run.task_probability = choice.probability if choice else None
        token = current_run.set(run)
        try:
            done = await adrive(plan, self._caller.acall, self._ledger_io, self._off_loop)
            result: CascadeResult = await self._ledger_io(self._recorder.finish, done, run)
        except CascadeError as exc:
            await self._ledger_io(self._recorder.fail, exc, run)
            raise self._located(exc) from exc.__cause__
        finally:
            current_run.reset(token)
        self.shadows.asubmit(self.tasks[task], run, result, params)
        return result

    def feedback(self, run_id: str, score: float, comment: str | None = None) -> FeedbackRecord:
        """Store a user's score in [0, 1] for the answer of run ``run_id`` (``result.run_id``).

        Raises:
            FeedbackError: a score outside [0, 1], an unknown run id, or no ledger.
            LedgerError: the ledger cannot be written.
        """
        return add_feedback(self.ledger, run_id, score, comment)

    def _pick(self, task: str, prompt: str | Sequence[Message]) -> tuple[str, Choice | None]:
        return pick_task(task, prompt, self.task_router, self.tasks, self.path)

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run code that may wait for the ledger on the ledger's threads (inline without one)."""
        if self.ledger is None:
            return fn(*args)
        return await self.ledger.run(fn, *args)

    async def _ledger_io(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A ledger operation: on the loop if the ledger is free right now, else on its thread."""
        if self.ledger is None:
            return fn(*args, **kwargs)
        return await self.ledger.arun(fn, *args, **kwargs)

    # -- ModelServices, lent to evaluators that call a model (the judge) -----------------------

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
        op, run, gate, index = self._side_call(model, messages, params)
        try:
            return self._side_result(op, run, self._caller.call(op), gate, index)
        finally:
            self.limits.release(gate)

    async def acall_model(
        self, model: str, messages: Sequence[Message], params: Mapping[str, Any] | None = None
    ) -> Completion:
        """The async twin of ``call_model``."""
        op, run, gate, index = await self._off_loop(self._side_call, model, messages, params)
        try:
            outcome = await self._caller.acall(op)
            done: Completion = await self._off_loop(
                self._side_result, op, run, outcome, gate, index
            )
            return done
        finally:
            await self._off_loop(self.limits.release, gate)

    def _side_call(
        self, model: str, messages: Sequence[Message], params: Mapping[str, Any] | None
    ) -> tuple[Call, Run | None, Gate, int]:
        settings = self.config.models[model]
        run = current_run.get()
        query_id = run.query_id if run is not None else None
        merged = {**settings.params, **(params or {})}
        check_call_params(merged)
        op = Call(
            model,
            as_messages(messages),
            bound_output(merged, settings.max_output_tokens, model),
            query_id,
            run.deadline if run is not None else None,
        )
        if run is None:
            return op, None, Gate(), 0
        gate = self.limits.check(
            run.task,
            settings.provider,
            model,
            op.messages,
            op.params,
            run.cost() + run.pending,
            run.cap,
            run_id=run.run_id,
            step=(index := run.next_index()),
        )
        if gate.skipped:
            self._recorder.step(
                run, model, Outcome(None, None, 0, 0.0), "skip", (), error=gate.reason,
                index=index,
            )
            raise ProviderError(
                f"judge call refused: {gate.reason}",
                provider=settings.provider,
                model=settings.name,
            )
        return op, run, gate, index

    def _side_result(
        self, op: Call, run: Run | None, outcome: Outcome, gate: Gate, index: int
    ) -> Completion:
        if run is not None:
            self._recorder.step(run, op.model_key, outcome, "judge", (), index=index,
                                hold=gate.hold)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.completion is not None
        return outcome.completion

    # -- the ladder, written once ---------------------------------------------------------------

    def _start(
        self,
        task: str,
        prompt: str | Sequence[Message],
        query_id: str | None,
        max_cost_usd: float | None,
        log_content: bool | None,
        deadline_s: float | None,
        params: dict[str, Any],
    ) -> tuple[Plan, Run]:
        if task not in self.tasks:
            raise ConfigError(
                f"unknown task {task!r} (defined: {', '.join(self.tasks)})",
                path=self.path,
                location="tasks",
            )
        # Refused before anything is called: an output limit above any rung's would make the
        # reservation a fiction, and extra_body must not override what was checked.
        check_call_params(params)
        if deadline_s is not None and not deadline_s > 0:
            raise RequestError(
                f"must be a positive number of seconds (got {deadline_s!r})", param="deadline_s"
            )
        for rung in self.tasks[task].rungs:
            bound_output(
                {**rung.model.params, **self.tasks[task].params, **params},
                rung.model.max_output_tokens,
                rung.key,
            )
        content = self.config.logging.content if log_content is None else log_content
        run = Run(
            run_id=uuid.uuid4().hex, task=task, started=time.perf_counter(), log_content=content
        )
        messages = as_messages(prompt)
        run.messages = messages
        settings = self.config.tasks[task]
        cap = max_cost_usd if max_cost_usd is not None else settings.max_cost_usd
        run.cap = cap
        run.query_id = query_id
        limit = settings.deadline_s if deadline_s is None else min(deadline_s, settings.deadline_s)
        run.deadline = time.monotonic() + limit
        if settings.cache is not None and self.cache is not None:
            # Models and providers are part of the key: a changed model name, price or
            # parameter must not serve an answer cached under the old one.
            definition = {
                "task": settings.model_dump(mode="json"),
                "models": {k: m.model_dump(mode="json") for k, m in self.config.models.items()},
                "providers": {
                    k: p.model_dump(mode="json") for k, p in self.config.providers.items()
                },
            }
            key = cache_key(definition, messages, params)
            hit = self.cache.get(key)
            if hit is not None:
                return self._cached(run, *hit), run
            return self._plan(
                self.tasks[task],
                messages,
                params,
                run,
                query_id,
                cap,
                cache_as=(key, settings.cache.ttl_s),
            ), run
        return self._plan(self.tasks[task], messages, params, run, query_id, cap), run

    def _cached(self, run: Run, model: str, text: str, parsed: Any) -> Plan:
        """A cache hit: one free step marked ``cache``, no provider call."""
        done = Completion(text=text, model=model, provider=self.config.models[model].provider)
        yield io(self._recorder.step, run, model, Outcome(done, None, 0, 0.0), "cache", (),
                  index=run.next_index())
        return replace(
            self._result(run, None, done, (), accepted=True), model=model, json=parsed, cached=True
        )

    def _plan(
        self,
        task: _Task,
        messages: tuple[Message, ...],
        params: dict[str, Any],
        run: Run,
        query_id: str | None,
        cap: float | None = None,
        cache_as: tuple[str, float] | None = None,
    ) -> Plan:
        history: list[Completion] = []
        last: _Last | None = None
        refused: list[Gate] = []
        prompt = prompt_text(messages) if task.router is not None else ""

        def rung_plan(i: int) -> Plan:
            return self._rung_plan(
                task, task.rungs[i], messages, params, run, query_id, cap, cache_as,
                prompt, history, refused,
            )

        if task.hedge_after_ms is not None and len(task.rungs) > 1:
            winner, outcomes = yield Hedge(
                len(task.rungs), rung_plan, lambda o: o[0] is not None,
                task.hedge_after_ms / 1000,
            )
            if winner is not None:
                done: CascadeResult = outcomes[winner][0]
                return done
            # The highest rung that answered is the one returned when none is accepted.
            answered = [outcomes[i][1] for i in sorted(outcomes) if outcomes[i][1] is not None]
            last = answered[-1] if answered else None
        else:
            for i in range(len(task.rungs)):
                won, tried = yield from rung_plan(i)
                if won is not None:
                    return won
                last = tried or last
        if last is None:
            result = self._result(run, None, None, (), accepted=False)
            budget = [g for g in refused if g.kind == "budget"]
            if budget:
                cheapest = min(budget, key=lambda g: g.estimate)
                raise BudgetExceeded(
                    f"task {task.name!r}: no rung fits the budget ({cheapest.reason})",
                    limit_usd=cheapest.limit_usd,
                    estimate_usd=cheapest.estimate,
                    result=result,
                )
            failures = "; ".join(f"{s.model}: {s.error}" for s in run.steps if s.error)
            raise ProviderError(
                f"task {task.name!r}: no rung produced an answer ({failures})", result=result
            )
        result = self._result(run, *last, accepted=False)
        if task.on_exhausted == "raise":
            raise CascadeExhausted(result)
        return result

    def _rung_plan(
        self,
        task: _Task,
        rung: Rung,
        messages: tuple[Message, ...],
        params: dict[str, Any],
        run: Run,
        query_id: str | None,
        cap: float | None,
        cache_as: tuple[str, float] | None,
        prompt: str,
        history: list[Completion],
        refused: list[Gate],
    ) -> Generator[Call | Eval | Io | Hedge, Any, tuple[CascadeResult | None, _Last | None]]:
        """One rung, repairs included: its accepted result, or the last answer it gave."""
        last: _Last | None = None
        if task.router is not None and (skip := task.router.skip(rung.key, prompt)):
            # Predicted to fail from the prompt alone: neither the call nor its checks are
            # paid for, and the step says why.
            p, threshold = skip
            verdict = Verdict(
                "router", False, p, f"predicted P(correct) = {p:.3f} < skip_below {threshold:g}"
            )
            yield io(
                self._recorder.step,
                run, rung.key, Outcome(None, None, 0, 0.0), "skip", (verdict,),
                index=run.next_index(),
            )
            return None, None
        # The worst case assumes this many output tokens, so the call is held to it.
        call_params = bound_output(
            {**rung.model.params, **task.params, **params},
            rung.model.max_output_tokens,
            rung.key,
        )
        convo = messages
        for slot in rung.slots:
            if "prepare" in slot.hooks:
                convo, call_params = slot.hooks["prepare"](convo, call_params)
        repairs = {s.name: int(getattr(s.evaluator, "repair_attempts", 0)) for s in rung.slots}
        while True:
            if run.deadline is not None and time.monotonic() >= run.deadline:
                # Nothing is called, so nothing is reserved: a row of its own, cost 0.
                yield io(
                    self._recorder.step,
                    run, rung.key, Outcome(None, None, 0, 0.0), "skip", (),
                    error="the run's deadline passed (deadline_s)", index=run.next_index(),
                )
                break
            index = run.next_index()
            # Writes the step's pending row before the call, or raises LedgerError.
            gate: Gate = yield io(
                self.limits.check,
                task.name, rung.model.provider, rung.key, convo, call_params, run.cost(), cap,
                run_id=run.run_id, step=index,
            )
            if gate.skipped:
                refused.append(gate)
                yield io(
                    self._recorder.step,
                    run, rung.key, Outcome(None, None, 0, 0.0), "skip", (), error=gate.reason,
                    index=index,
                )
                break
            try:
                step = yield from self._attempt(
                    run,
                    task,
                    rung,
                    convo,
                    call_params,
                    Request(
                        task=task.name,
                        messages=messages,
                        params=params,
                        run_id=run.run_id,
                        history=tuple(history),
                        query_id=query_id,
                    ),
                    repairs,
                    index,
                    gate,
                )
            finally:
                # A hold still open here never heard back from its call (cancelled): it is
                # settled as lost at its worst case, never silently dropped.
                self.limits.release(gate)
            if step is None:
                break
            completion, verdicts, ok, fixer = step
            if ok:
                result = self._result(run, rung, completion, verdicts, accepted=True)
                # A tool call is a step of the caller's loop, not an answer to replay.
                if cache_as is not None and self.cache is not None and not result.tool_calls:
                    self.cache.put(
                        cache_as[0], task.name, rung.key, result.text, result.json, cache_as[1]
                    )
                return result, None
            last = (rung, completion, verdicts)
            if fixer is None:
                # Later rungs compare with what this rung said, not its confidence line.
                history.append(finalized(rung.slots, completion))
                break
            slot, verdict = fixer
            repairs[slot.name] -= 1
            convo = (
                *convo,
                {"role": "assistant", "content": completion.text},
                {"role": "user", "content": slot.hooks["repair_message"](verdict)},
            )
        return None, last

    def _attempt(
        self,
        run: Run,
        task: _Task,
        rung: Rung,
        convo: tuple[Message, ...],
        call_params: dict[str, Any],
        request: Request,
        repairs: Mapping[str, int],
        index: int,
        gate: Gate,
    ) -> Generator[Call | Eval | Io, Any, _Attempt | None]:
        """Call one rung once, evaluate the answer and record the step; None if the call failed."""
        outcome = yield Call(rung.key, convo, call_params, request.query_id, run.deadline)
        if outcome.completion is None:
            yield io(self._recorder.step, run, rung.key, outcome, "error", (), index=index,
                      hold=gate.hold)
            return None
        completion = replace(outcome.completion, model=rung.key)
        # Evaluators that add to the answer (a confidence line) read it raw; the others judge
        # the text the user would get.
        clean = finalized(rung.slots, completion)
        # A judge called during evaluation must count this answer's cost against the cap.
        run.pending = cost_usd(completion, rung.model.price)
        verdicts: list[Verdict] = []
        slots = judging(rung.slots, completion)
        try:
            if task.escalate_on_truncation and completion.finish_reason == "length":
                # A cut-off answer is incomplete whatever its checks say; they are not run.
                slots = ()
                verdicts.append(TRUNCATED)
            for slot in slots:
                verdict = yield Eval(slot, request, shown(slot, completion, clean))
                verdicts.append(verdict)
                if decided(rung.accept, verdict):
                    break
        except GeneratorExit:
            # Cancelled while its answer was being judged (a hedged rung that lost): the call
            # completed, so its step is settled with its real usage, not the reserved worst
            # case. The plan is being closed off the loop (``adrive``), so this may write.
            self._recorder.step(
                run, rung.key, outcome, "error", tuple(verdicts), completion=completion,
                index=index, error="cancelled: another rung answered first", hold=gate.hold,
            )
            raise
        except Exception as exc:
            # The answer was paid for: its step goes to the ledger before the error goes up.
            yield io(
                self._recorder.step,
                run,
                rung.key,
                outcome,
                "error",
                tuple(verdicts),
                completion=completion,
                index=index,
                error=f"evaluation failed: {exc}",
                hold=gate.hold,
            )
            raise
        finally:
            run.pending = 0.0
        if verdicts and verdicts[0] is TRUNCATED:
            ok, fixer = False, None
        else:
            weights = [s.weight for s in slots[: len(verdicts)]]
            ok = combine(rung.accept, verdicts, weights)
            fixer = None if ok else _repairer(slots, verdicts, repairs)
        decision: Decision = "accept" if ok else ("repair" if fixer else "escalate")
        yield io(
            self._recorder.step,
            run, rung.key, outcome, decision, tuple(verdicts), completion=completion, index=index,
            hold=gate.hold,
        )
        return completion, tuple(verdicts), ok, fixer

    # -- helpers ----------------------------------------------------------------------------------

    def _located(self, exc: CascadeError) -> CascadeError:
        """Name this engine's config file in a ConfigError raised deep inside (a missing key)."""
        if isinstance(exc, ConfigError) and exc.path is None and self.path is not None:
            return ConfigError(exc.message, path=self.path, location=exc.location)
        return exc

    def _result(
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
        return self._recorder.result(
            run,
            rung.key if rung else "",
            completion,
            verdicts,
            accepted=accepted,
            finalizers=finalizers,
        )


def _repairer(
    slots: Sequence[Slot], verdicts: Sequence[Verdict], left: Mapping[str, int]
) -> tuple[Slot, Verdict] | None:
    """The first failing evaluator that can still ask the model to fix its answer."""
    # verdicts may stop short of the slots (short-circuit), hence strict=False
    for slot, verdict in zip(slots, verdicts, strict=False):
        if not verdict.passed and "repair_message" in slot.hooks and left.get(slot.name, 0) > 0:
            return slot, verdict
    return None
