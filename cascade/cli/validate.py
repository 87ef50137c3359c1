"""``cascade validate CONFIG [--probe]``: check a config before traffic arrives.

Without ``--probe`` nothing is called: the config is loaded and built, unset API key variables
are named, a ``task_router:`` without a fitted model fails, and a rung whose worst case can never
fit its task's ``max_cost_usd`` or a budget is named, as is a price-changing parameter the config
sets or allows (its cost goes unpriced). ``--probe`` then sends one minimal request
per model (``max_tokens`` 1), costed and recorded in the config's ledger like any call, so that a
mistyped model name or a refused key shows before the first user does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cascade.errors import CascadeError, ConfigError, ProviderError
from cascade.formatting import plural, usd

if TYPE_CHECKING:
    from cascade.config import CascadeConfig
    from cascade.engine import Cascade

__all__ = [
    "ProbeResult",
    "cmd_validate",
    "direct_never_runs",
    "never_runs",
    "probe",
    "register",
    "unpriced_params",
]

# The smallest prompt a call can carry: a rung whose worst case exceeds a limit even for it can
# never run, whatever the prompt.
_SMALLEST: tuple[dict[str, str], ...] = ({"role": "user", "content": "?"},)
PROBE_PROMPT = "Reply with OK."
PROBE_TASK = "__probe__"


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def never_runs(engine: Cascade) -> Iterator[str]:
    """One warning per rung whose worst case, for the smallest prompt, exceeds its task's
    ``max_cost_usd`` or a budget: the engine would skip it on every run."""
    from cascade.config.params import bound_output
    from cascade.ledger.money import worst_case_cost

    config = engine.config
    for name, task in engine.tasks.items():
        settings = config.tasks[name]
        for rung in task.rungs:
            params = bound_output(
                {**rung.model.params, **task.params}, rung.model.max_output_tokens, rung.key
            )
            worst = worst_case_cost(_SMALLEST, params, rung.model.price)
            out = rung.model.max_output_tokens
            limits: list[tuple[str, float]] = []
            if settings.max_cost_usd is not None:
                limits.append((f"tasks.{name}.max_cost_usd", settings.max_cost_usd))
            guard = engine.limits.accounts
            limits += [
                (f"budgets: {lim.describe()}", lim.limit_usd) for lim in guard.applicable(name)
            ]
            for where, limit in limits:
                if worst > limit:
                    yield (
                        f"warning: tasks.{name}: rung {rung.key} can never run: its worst case "
                        f"${worst:.4g} ({out} output tokens at ${rung.model.price.output:g}/1M) "
                        f"> {where} ${limit:g}; lower models.{rung.key}.max_output_tokens or "
                        "raise the limit"
                    )
                    break


def unpriced_params(config: CascadeConfig) -> Iterator[str]:
    """One warning per price-changing parameter the config sets or lets clients set: its cost
    is neither in the worst case a call reserves nor in the bill."""
    from cascade.config.params import PRICE_CHANGING_PARAMS

    unpriced = "changes what a call costs and is not priced (neither the worst case reserved "
    unpriced += "nor the bill includes that cost)"
    for where, params in [
        *((f"models.{key}.params", m.params) for key, m in config.models.items()),
        *((f"tasks.{name}.params", t.params) for name, t in config.tasks.items()),
    ]:
        for name in sorted(PRICE_CHANGING_PARAMS & params.keys()):
            yield f"warning: {where}.{name} {unpriced}"
    for name in sorted(PRICE_CHANGING_PARAMS & set(config.server.allow_params)):
        yield f"warning: server.allow_params: {name} {unpriced}; callers may set it"


def direct_never_runs(config: CascadeConfig) -> Iterator[str]:
    """One warning per model that ``server.direct_models`` allows but whose worst case, for the
    smallest prompt, exceeds ``server.direct_max_cost_usd``: every direct call would be refused."""
    from cascade.config.params import bound_output
    from cascade.ledger.money import worst_case_cost

    cap = config.server.direct_max_cost_usd
    for key in config.server.direct_keys(config.models):
        model = config.models[key]
        params = bound_output(model.params, model.max_output_tokens, key)
        worst = worst_case_cost(_SMALLEST, params, model.price)
        if cap is not None and worst > cap:
            yield (
                f"warning: server.direct_models: model {key} can never be called directly: its "
                f"worst case ${worst:.4g} > server.direct_max_cost_usd ${cap:g}"
            )


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one model's probe found: whether it answered, and what it cost."""

    model: str
    ok: bool
    detail: str
    cost_usd: float = 0.0


def probe(engine: Cascade) -> list[ProbeResult]:
    """Call every model once with ``max_tokens`` 1, as a one-rung task of its own.

    The calls go through the engine: retries, budgets and the ledger apply, and each is a run
    of task ``__probe__<model>``.
    """
    from cascade.config import RungConfig, TaskConfig

    tasks = {
        f"{PROBE_TASK}{key}": TaskConfig(ladder=[RungConfig(model=key)])
        for key in engine.config.models
    }
    view = engine.with_tasks(tasks)
    results = []
    for key, model in engine.config.models.items():
        try:
            result = view.complete(f"{PROBE_TASK}{key}", PROBE_PROMPT, max_tokens=1)
        except (ConfigError, ProviderError, CascadeError) as exc:
            cost = getattr(getattr(exc, "result", None), "cost_usd", 0.0)
            results.append(ProbeResult(key, False, str(exc), cost))
            continue
        step = result.steps[-1] if result.steps else None
        if result.model == key and step is not None and step.error is None:
            detail = f"answers ({model.provider} {model.name}, {step.latency_ms:.0f} ms)"
            results.append(ProbeResult(key, True, detail, result.cost_usd))
        else:
            why = step.error if step is not None and step.error else "no answer"
            results.append(ProbeResult(key, False, why, result.cost_usd))
    return results


def _check_router(config: CascadeConfig, path: str) -> None:
    router = config.task_router
    if router is not None and router.model is None:
        raise ConfigError(
            "task_router has no fitted model, so task auto would fail at its first run; run "
            f"`cascade router fit {path}`, or remove task_router",
            path=path,
            location="task_router.model",
        )


def cmd_validate(args: argparse.Namespace) -> int:
    from cascade.cli.serve import unset_key_warnings
    from cascade.config import load_config
    from cascade.engine import Cascade
    from cascade.engine.redis_client import redis_url
    from cascade.ledger import Ledger, check_ledger_config

    config = load_config(args.config)
    check_ledger_config(config.ledger, config_path=args.config)
    if config.limits is not None and config.limits.redis is not None:
        redis_url(config.limits.redis, "limits.redis", args.config)  # an unset variable
    _check_router(config, args.config)
    if args.probe:
        # The probes are real calls: costed and recorded in the config's own ledger.
        engine = Cascade(config, path=args.config)
    else:
        # An in-memory ledger: validating must not create the real one, but budgets need one.
        engine = Cascade(config, path=args.config, ledger=Ledger(":memory:"))
    with engine:
        warnings = unset_key_warnings(config)
        for name in sorted(set(config.tasks) & set(config.models)):
            warnings.append(f"warning: {name!r} is both a task and a model key")
        warnings += list(never_runs(engine))
        warnings += list(direct_never_runs(config))
        warnings += list(unpriced_params(config))
        warnings += per_process_limits(config)
        for line in warnings:
            _say(line)
        for key, model in config.models.items():
            p = model.price
            cached = "" if p.cached_input is None else f", cached input {usd(p.cached_input)}"
            print(
                f"  model {key} ({model.name}): {usd(p.input)} input, {usd(p.output)} output"
                f"{cached} per 1M tokens; price from {config.price_source(key)}"
            )
        for line in _limits(config):
            print(f"  {line}")
        rungs = sum(len(t.rungs) for t in engine.tasks.values())
        print(
            f"{args.config}: OK ({plural(len(config.tasks), 'task')}, {plural(rungs, 'rung')}, "
            f"{plural(len(config.models), 'model')}, {plural(len(config.providers), 'provider')})"
        )
        if not args.probe:
            return 0
        results = probe(engine)
    failed = [r for r in results if not r.ok]
    for r in results:
        status = "ok" if r.ok else "FAILED"
        print(f"  probe {r.model}: {status}: {r.detail} (cost {usd(r.cost_usd)})")
    total = sum(r.cost_usd for r in results)
    print(
        f"probe: {len(results) - len(failed)} of {plural(len(results), 'model')} answered "
        f"(cost {usd(total)}, recorded in the ledger)"
    )
    return 1 if failed else 0


def per_process_limits(config: CascadeConfig) -> list[str]:
    """The warning that rate limits hold per process when no Redis shares them."""
    if config.limits is None or config.limits.redis is not None:
        return []
    return [
        "warning: limits: rate limits are per process (no limits.redis): each gateway process "
        "and replica allows the full rpm/tpm; set limits.redis to share them"
    ]


def _limits(config: CascadeConfig) -> list[str]:
    """The spending limits a config sets, as validate lists them."""
    lines = []
    scopes = [("global", config.budgets)]
    scopes += [(f"task {name}", task.budgets) for name, task in config.tasks.items()]
    for scope, budgets in scopes:
        for period in ("daily", "monthly"):
            limit = getattr(budgets, f"{period}_usd", None) if budgets else None
            if limit is not None:
                lines.append(f"{period} budget ({scope}): {usd(limit)}")
    for name, task in config.tasks.items():
        if task.max_cost_usd is not None:
            lines.append(f"task {name}: max_cost_usd {usd(task.max_cost_usd)} per request")
    if config.limits is not None:
        shared = "shared through Redis" if config.limits.redis else "per process"
        for name, rate in config.limits.tasks.items():
            for unit in ("rpm", "tpm"):
                value = getattr(rate, unit)
                if value is not None:
                    lines.append(f"rate limit (task {name}): {value} {unit}, {shared}")
    return lines


def register(sub: Any) -> None:
    """Add ``validate`` to the ``cascade`` command's subparsers."""
    validate = sub.add_parser(
        "validate",
        help="check a config file (without calling any model, unless --probe)",
        description="Load and build the config; warn about unset API key variables, rungs "
        "that can never run under their cost cap or budgets, and price-changing parameters "
        "(service_tier...) that go unpriced. Exit 2 on any config error. "
        "With --probe, call each model once (max_tokens 1, costed and recorded in the "
        "ledger) and exit 1 if any does not answer.",
    )
    validate.add_argument("config", help="YAML config file")
    validate.add_argument(
        "--probe",
        action="store_true",
        help="send one minimal request per model to check that it exists and answers",
    )
    validate.set_defaults(handler=cmd_validate)
