"""The engine's facade: ``Cascade.from_yaml(path).complete(task, prompt)``.

``Cascade`` wires the parts a config describes and hands each run to them:

- ``cascade.engine.building``: providers and task ladders (evaluators, routers) from the config;
- ``cascade.engine.ladder``: the ladder as a plan (call -> price -> evaluate -> record -> accept or
  escalate), written once;
- ``cascade.engine.plan``: the two drivers, ``drive`` for ``complete`` and ``adrive`` for
  ``acomplete``, which carry out a plan's calls, evaluations and ledger operations;
- ``engine.caller`` (retries, breakers, deadlines), ``engine.limits`` (caps, budgets and
  the write-ahead rows), ``cascade.engine.recorder`` (steps, logs, the ledger's rows);
- ``cascade.engine.services``: the model calls lent to evaluators (the judge).
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascade.config import CascadeConfig, TaskConfig, load_config, parse_config
from cascade.config.messages import joined_errors
from cascade.config.params import check_call_params
from cascade.engine.building import build_provider, build_task
from cascade.engine.cache import Hit, open_cache, task_cache_key
from cascade.engine.caller import Caller
from cascade.engine.ladder import Ladder, TaskLadder
from cascade.engine.limits import Limits
from cascade.engine.plan import Plan, adrive, drive
from cascade.engine.recorder import Recorder, Run, current_run
from cascade.engine.retry import RetryPolicy
from cascade.engine.services import Services
from cascade.engine.shadow import Shadows
from cascade.errors import CascadeError, ConfigError, RequestError, TaskNotAllowed
from cascade.ledger import Ledger, open_ledger
from cascade.ledger.feedback import FeedbackRecord, add_feedback
from cascade.ledger.keys import KeyScope
from cascade.models.task_router import Choice, load_task_router, pick_task
from cascade.providers.base import Provider
from cascade.types import CascadeResult, Message, as_messages

__all__ = ["Cascade"]


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
        self.providers: dict[str, Provider] = {}
        failed: list[ConfigError] = []
        for name in config.providers:
            try:
                self.providers[name] = build_provider(config, name, path, providers)
            except ConfigError as exc:  # every provider's mistake is named, not the first
                failed.append(exc)
        if failed:
            error = joined_errors(failed)
            raise self._located(error) from error
        if ledger is None or ledger is True:
            self.ledger = open_ledger(config.ledger, config_path=path)
        else:
            self.ledger = ledger or None
        try:
            self.limits = Limits(config, self.ledger)
            self.cache = open_cache(config, path)
            self._caller = Caller(config, self.providers, retry, self.limits)
            self._recorder = Recorder(config, self.ledger, self.limits.accounts)
            self.services = Services(
                config, self._caller, self.limits, self._recorder, self._off_loop
            )
            self._ladder = Ladder(config.models, self._recorder, self.limits)
            self.tasks = self._build_tasks(config.tasks)
        except BaseException as exc:
            # No engine is returned to close: release the ledger it opened (its owner row).
            if self.ledger is not None and (ledger is None or ledger is True):
                self.ledger.close()
            if getattr(self, "cache", None) is not None:
                self.cache.close()
            if isinstance(exc, ConfigError):
                raise self._located(exc) from exc
            raise
        # Learning from production (docs/learning.md): shadow evaluation and task "auto".
        self.shadows = Shadows(
            config, self._caller, self.limits, self._recorder, self.ledger, self._ledger_io,
            self._off_loop,
        )
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
            ConfigError: naming the file and the key path of every problem a check found.
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
        view.tasks = view._build_tasks(tasks)
        return view

    async def aclose(self) -> None:
        """Close the async clients of the running event loop (after its shadow calls): the
        SDKs' and the cache's."""
        await self.shadows.drain()
        for provider in self.providers.values():
            aclose = getattr(provider, "aclose", None)
            if aclose is not None:
                await aclose()
        if self.cache is not None:
            await self.cache.aclose()

    async def __aenter__(self) -> Cascade:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
        self.close()

    def _build_tasks(self, tasks: Mapping[str, TaskConfig]) -> dict[str, TaskLadder]:
        built: dict[str, TaskLadder] = {}
        failed: list[ConfigError] = []
        for name in tasks:
            try:
                built[name] = build_task(
                    self.config, name, self.providers, self.services, self.path
                )
            except ConfigError as exc:  # every task's mistakes are named, not the first task's
                failed.append(exc)
        if failed:
            raise joined_errors(failed)
        return built

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
        key_id: str | None = None,
        key: KeyScope | None = None,
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
            key_id: An opaque id of the caller's credential, stored on the run's ledger row
                (the gateway passes its bearer key's id, so a key scores only its own runs).
            key: The named gateway key making the call (``cascade.ledger.keys``): the task,
                once chosen (``auto`` included), must be one of its tasks; its budgets are
                reserved with the others; every row of the run carries its name; its cached
                answers are kept per name unless ``cache.shared_across_keys``.
            **params: Provider parameters such as ``max_tokens`` or ``temperature``.

        Returns:
            The ``CascadeResult``, with every step taken.

        Raises:
            ConfigError: unknown task, or a provider's API key variable is unset.
            ProviderError: no rung produced an answer at all (``.result`` holds the steps).
            CascadeExhausted: no rung passed and the task says ``on_exhausted: raise``.
            EvaluatorError: an evaluator crashed.
            BudgetExceeded: no rung fits the cost cap or the period budgets (the key's
                included).
            TaskNotAllowed: ``key`` may not run the task; nothing was called or recorded.
            RequestError: a parameter is refused (a transport option, an ``extra_body`` that
                overrides a checked parameter, ``max_tokens`` above a rung's
                ``max_output_tokens``, ``n`` other than 1, a price-changing parameter such as
                ``service_tier`` that ``server.allow_params`` does not list); nothing was called.
        """
        task, choice = self._pick(task, prompt, key)
        start = self._start(
            task, prompt, query_id, max_cost_usd, log_content, deadline_s, params,
            key.name if key is not None else None,
        )
        run = start.run
        run.task_probability = choice.probability if choice else None
        run.key_id, run.key = key_id, key
        hit = self.cache.get(start.cache_key) if self.cache and start.cache_key else None
        token = current_run.set(run)
        try:
            result = self._recorder.finish(drive(self._plan(start, hit), self._caller.call), run)
        except CascadeError as exc:
            self._recorder.fail(exc, run)
            raise self._located(exc) from exc.__cause__
        finally:
            current_run.reset(token)
        if self.cache is not None and (put := start.to_cache(result)) is not None:
            self.cache.put(*put)
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
        key_id: str | None = None,
        key: KeyScope | None = None,
        **params: Any,
    ) -> CascadeResult:
        """The async twin of ``complete``, with the same arguments, result and errors.

        The event loop never waits for the ledger: a write-ahead row, reservation or
        settlement runs in place only when the ledger can take it at once (SQLite, about
        0.1 ms), else on the ledger's thread (PostgreSQL: always).
        """
        task, choice = self._pick(task, prompt, key)
        start = self._start(
            task, prompt, query_id, max_cost_usd, log_content, deadline_s, params,
            key.name if key is not None else None,
        )
        run = start.run
        run.task_probability = choice.probability if choice else None
        run.key_id, run.key = key_id, key
        hit = await self.cache.aget(start.cache_key) if self.cache and start.cache_key else None
        token = current_run.set(run)
        try:
            ledger_io = self._ledger_io if self.ledger is not None else None
            plan = self._plan(start, hit)
            done = await adrive(plan, self._caller.acall, ledger_io, self._off_loop)
            result: CascadeResult = await self._ledger_io(self._recorder.finish, done, run)
        except CascadeError as exc:
            await self._ledger_io(self._recorder.fail, exc, run)
            raise self._located(exc) from exc.__cause__
        finally:
            current_run.reset(token)
        if self.cache is not None and (put := start.to_cache(result)) is not None:
            await self.cache.aput(*put)
        self.shadows.asubmit(self.tasks[task], run, result, params)
        return result

    def feedback(self, run_id: str, score: float, comment: str | None = None) -> FeedbackRecord:
        """Store a user's score in [0, 1] for the answer of run ``run_id`` (``result.run_id``).

        Raises:
            FeedbackError: a score outside [0, 1], an unknown run id, or no ledger.
            LedgerError: the ledger cannot be written.
        """
        return add_feedback(self.ledger, run_id, score, comment)

    def _pick(
        self, task: str, prompt: str | Sequence[Message], key: KeyScope | None
    ) -> tuple[str, Choice | None]:
        """The task to run, checked against the key's tasks once chosen: ``auto`` may pick
        one the key may not use, and that is refused before any model is called."""
        picked, choice = pick_task(task, prompt, self.task_router, self.tasks, self.path)
        if key is not None and key.tasks is not None and picked not in key.tasks:
            raise TaskNotAllowed(key.name, picked, key.tasks)
        return picked, choice

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

    # -- a run's start ---------------------------------------------------------------------------

    def _start(
        self,
        task: str,
        prompt: str | Sequence[Message],
        query_id: str | None,
        max_cost_usd: float | None,
        log_content: bool | None,
        deadline_s: float | None,
        params: dict[str, Any],
        key_name: str | None = None,
    ) -> _Start:
        """Check the request and open its ``Run``; the plan that answers it comes from
        ``_plan`` once the cache (if the task uses it) was asked.

        Raises:
            ConfigError: unknown task.
            RequestError: a refused parameter; nothing was called or recorded.
        """
        ladder = self.tasks.get(task)
        if ladder is None:
            raise ConfigError(
                f"unknown task {task!r} (defined: {', '.join(self.tasks)})",
                path=self.path,
                location="tasks",
            )
        # Refused before anything is called: an output limit above any rung's would make the
        # reservation a fiction, extra_body must not override what was checked, n > 1 is paid
        # n times, and a price-changing parameter needs the operator's server.allow_params.
        check_call_params(params, self.config.server.allow_params)
        if deadline_s is not None and not deadline_s > 0:
            raise RequestError(
                f"must be a positive number of seconds (got {deadline_s!r})", param="deadline_s"
            )
        bounded = self._ladder.bounded(ladder, params)
        settings = self.config.tasks[task]
        limit = settings.deadline_s if deadline_s is None else min(deadline_s, settings.deadline_s)
        run = Run(
            run_id=secrets.token_hex(16),
            task=task,
            started=time.perf_counter(),
            log_content=self.config.logging.content if log_content is None else log_content,
            cap=max_cost_usd if max_cost_usd is not None else settings.max_cost_usd,
            query_id=query_id,
            deadline=time.monotonic() + limit,
            messages=as_messages(prompt),
        )
        if settings.cache is None or self.cache is None:
            return _Start(run, ladder, params, bounded)
        key = task_cache_key(self.config, task, run.messages, params, key_name)
        return _Start(run, ladder, params, bounded, key, settings.cache.ttl_s)

    def _plan(self, start: _Start, hit: Hit | None) -> Plan:
        if hit is not None:
            return self._ladder.cached(start.run, *hit)
        return self._ladder.plan(
            start.ladder, start.run.messages, start.params, start.run, start.bounded
        )

    # -- helpers ----------------------------------------------------------------------------------

    def _located(self, exc: CascadeError) -> CascadeError:
        """Name this engine's config file in a ConfigError raised deep inside (a missing key)."""
        if isinstance(exc, ConfigError) and exc.path is None and self.path is not None:
            return ConfigError(exc.message, path=self.path, location=exc.location)
        return exc



@dataclass(frozen=True, slots=True)
class _Start:
    """A checked request: its run, and the cache key its answer is looked up and kept under
    (None when the task does not cache)."""

    run: Run
    ladder: TaskLadder
    params: dict[str, Any]
    bounded: tuple[dict[str, Any], ...]
    cache_key: str | None = None
    ttl_s: float = 0.0

    def to_cache(self, result: CascadeResult) -> tuple[str, str, str, str, Any, float] | None:
        """What to put in the cache for ``result``: an accepted answer that was not a hit. A
        tool call is a step of the caller's loop, not an answer to replay."""
        if self.cache_key is None or not result.accepted or result.cached or result.tool_calls:
            return None
        return (self.cache_key, result.task, result.model, result.text, result.json, self.ttl_s)
