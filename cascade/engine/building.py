"""Wiring: turn a validated config into providers and built task ladders.

Everything here runs once, when a ``Cascade`` is made (or a gateway view of one); nothing is
called on the request path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cascade.config import CascadeConfig, resolve_path
from cascade.config.messages import joined_errors
from cascade.config.plugins import PROVIDERS, load_plugin
from cascade.engine.ladder import Rung, TaskLadder
from cascade.errors import ConfigError
from cascade.evaluation import EvaluatorContext, ModelServices, build_evaluators
from cascade.models.router import load_router
from cascade.providers.base import Provider

__all__ = ["build_provider", "build_task"]


def build_provider(
    config: CascadeConfig,
    name: str,
    path: str | None,
    given: Mapping[str, Provider] | None = None,
) -> Provider:
    """The ``providers:`` entry ``name``: a given instance, or one made by its type's plug-in.

    Raises:
        ConfigError: the type names no installed provider plug-in.
    """
    if given and name in given:
        return given[name]
    settings = config.providers[name]
    if settings.dataset:  # a replay dataset, like every path in the file, is the file's
        settings = settings.model_copy(update={"dataset": resolve_path(settings.dataset, path)})
    factory = load_plugin(PROVIDERS, settings.type, location=f"providers.{name}.type")
    provider: Provider = factory(name, settings)
    return provider


def build_task(
    config: CascadeConfig,
    name: str,
    providers: Mapping[str, Provider],
    services: ModelServices,
    path: str | None,
) -> TaskLadder:
    """Task ``name``'s ladder with every rung's evaluators (and its router) built.

    Raises:
        ConfigError: an evaluator's settings are invalid, a plug-in is missing, or the router
            model cannot be loaded; naming every such mistake of the task, located at the first.
    """
    task = config.tasks[name]
    config_dir = Path(path).parent if path else None
    rungs: list[Rung] = []
    errors: list[ConfigError] = []
    for i, rung in enumerate(task.ladder):
        model = config.models[rung.model]
        provider = providers[model.provider]
        own = rung.evaluators is not None
        specs = rung.evaluators if rung.evaluators is not None else task.evaluators
        location = f"tasks.{name}.ladder[{i}].evaluators" if own else f"tasks.{name}.evaluators"
        ctx = EvaluatorContext(
            location=location,
            task=name,
            model=rung.model,
            provider_type=config.providers[model.provider].type,
            supports_logprobs=bool(getattr(provider, "supports_logprobs", False)),
            services=services,
            config_dir=config_dir,
        )
        try:
            slots = build_evaluators(specs, ctx)
        except ConfigError as exc:  # the other rungs' mistakes are named too
            errors.append(exc)
            continue
        rungs.append(
            Rung(
                key=rung.model,
                model=model,
                provider=provider,
                slots=slots,
                accept=rung.accept if rung.accept is not None else task.accept,
            )
        )
    router = None
    if task.router is not None:
        try:
            router = load_router(
                task.router.model,
                task.router.skip_below,
                [r.model for r in task.ladder],
                config_dir=config_dir,
                path=path,
                location=f"tasks.{name}.router",
            )
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        # Rungs that share the task's evaluators share their mistakes: each is named once.
        raise joined_errors(errors)
    return TaskLadder(
        name=name,
        rungs=tuple(rungs),
        on_exhausted=task.on_exhausted,
        params=task.params,
        router=router,
        escalate_on_truncation=task.escalate_on_truncation,
        hedge_after_ms=task.hedge_after_ms,
    )
