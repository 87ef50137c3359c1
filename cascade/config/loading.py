"""Loading a config: YAML text -> validated ``CascadeConfig``, with every failure a ``ConfigError``.

Loading is ``yaml.safe_load`` -> ``CascadeConfig.model_validate`` plus cross-reference checks,
whose mistakes are named together in one error. It is pure: no environment, no network. Every
failure names the file and the key path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from cascade.config.messages import format_location, joined, validation_problems
from cascade.config.params import PRICE_CHANGING_PARAMS, check_call_params
from cascade.config.paths import read_capped
from cascade.config.pricing import fill_prices
from cascade.config.schema import DEFAULT_MAX_OUTPUT_TOKENS, CascadeConfig
from cascade.errors import ConfigError, RequestError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "load_config",
    "parse_config",
    "safe_load_bounded",
]

# A config file is a few hundred nodes; aliases may repeat parts of it, but a file whose aliases
# expand past this many nodes is an alias bomb (740 bytes can stand for gigabytes).
MAX_YAML_NODES = 100_000
# A config nests a dozen levels (an inline JSON schema a few more); PyYAML composes nodes by
# recursion, and a document nested about 1,000 deep ends in a RecursionError.
MAX_YAML_DEPTH = 100
# Far above any config (an inline task router included); /dev/zero must not be read for ever.
MAX_CONFIG_BYTES = 64 * 1024 * 1024


def _reference_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Names one section uses that another does not define, and limits a model's params break.

    Read from the mapping rather than the validated config, so that a file with a schema mistake
    has its references checked all the same and one error names every mistake.
    """

    def section(name: str) -> Mapping[str, Any]:
        value = data.get(name)
        return value if isinstance(value, Mapping) else {}

    providers, models, tasks = section("providers"), section("models"), section("tasks")
    found: list[tuple[str, str]] = []
    for key, model in models.items():
        if not isinstance(model, Mapping):
            continue
        limit = model.get("max_output_tokens", DEFAULT_MAX_OUTPUT_TOKENS)
        params = model.get("params")
        for name in ("max_tokens", "max_completion_tokens"):
            value = params.get(name) if isinstance(params, Mapping) else None
            if _whole(value) and _whole(limit) and value > limit:
                found.append(
                    (f"models.{key}.params.{name}", f"{value} is above max_output_tokens {limit}")
                )
        provider = model.get("provider")
        if isinstance(provider, str) and provider not in providers:
            found.append((
                f"models.{key}.provider",
                f"unknown provider {provider!r} (defined: {_listed(providers)})",
            ))
    router = data.get("task_router")
    default = router.get("default_task") if isinstance(router, Mapping) else None
    if isinstance(default, str) and default not in tasks:
        found.append((
            "task_router.default_task",
            f"unknown task {default!r} (defined: {_listed(tasks)})",
        ))
    for name, task in tasks.items():
        ladder = task.get("ladder") if isinstance(task, Mapping) else None
        for i, rung in enumerate(ladder if isinstance(ladder, list) else []):
            model = rung.get("model") if isinstance(rung, Mapping) else rung
            if isinstance(model, str) and model not in models:
                found.append((
                    f"tasks.{name}.ladder[{i}]",
                    f"unknown model {model!r} (defined: {_listed(models)})",
                ))
    return found


def _listed(section: Mapping[Any, Any]) -> str:
    # Unvalidated: a YAML key may be a number, which the schema error names on its own.
    return ", ".join(map(str, section))


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_config(data: Any, *, path: str | None = None) -> CascadeConfig:
    """Validate an already-parsed mapping (what ``Cascade.from_dict`` uses).

    Raises:
        ConfigError: naming ``path`` and the failing key path.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            "the top level must be a mapping with providers/models/tasks, "
            f"got {type(data).__name__}",
            path=path,
        )
    data, sources, unknown = fill_prices(data)
    references = _reference_problems(data)
    try:
        config = CascadeConfig.model_validate(data)
    except ValidationError as exc:
        found = validation_problems(exc, CascadeConfig, data, hints=unknown)
        schema = [(format_location(where), message) for where, message in found]
        raise joined(schema + references, path=path) from exc
    problems = references + _validated_problems(config)
    if problems:
        raise joined(problems, path=path)
    config._price_sources = sources
    return config


def _validated_problems(config: CascadeConfig) -> list[tuple[str, str]]:
    """What only the validated config can tell: direct model keys, rate-limited tasks, and the
    params a model or task sets (the operator's own: price-changing ones are allowed, and
    ``cascade validate`` warns that they go unpriced; ``n`` other than 1 and the rest of the
    call check are not)."""
    found: list[tuple[str, str]] = []
    direct = config.server.direct_models
    for i, key in enumerate(direct if isinstance(direct, list) else ()):
        if key not in config.models:
            found.append((f"server.direct_models[{i}]",
                          f"unknown model {key!r} (defined: {_listed(config.models)})"))
    limited = config.limits.tasks if config.limits is not None else {}
    for name in limited:
        if name not in config.tasks:
            found.append((f"limits.tasks.{name}",
                          f"unknown task {name!r} (defined: {_listed(config.tasks)})"))
    for where, params in [
        *((f"models.{key}.params", m.params) for key, m in config.models.items()),
        *((f"tasks.{name}.params", t.params) for name, t in config.tasks.items()),
    ]:
        try:
            check_call_params(params, PRICE_CHANGING_PARAMS)
        except RequestError as exc:
            found.append((f"{where}.{exc.param}", exc.message))
    return found


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses documents whose aliases expand past ``MAX_YAML_NODES``.

    PyYAML shares an aliased node instead of copying it, so loading an alias bomb is cheap; the
    copies happen later (validation, hashing a cache key, the first request) and take gigabytes.
    The expanded size is counted on the composed node graph, once per distinct node.
    """

    _depth = 0

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            _expanded_size(node, {}, set())
        return node

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


def _expanded_size(node: yaml.Node, sizes: dict[int, int], active: set[int]) -> int:
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in active:
        raise yaml.YAMLError("recursive alias")
    active.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, active) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, sizes, active) + _expanded_size(v, sizes, active)
    active.discard(key)
    if size > MAX_YAML_NODES:
        raise yaml.YAMLError(
            f"aliases expand to more than {MAX_YAML_NODES:,} nodes (an alias bomb?)"
        )
    sizes[key] = size
    return size


def safe_load_bounded(text: str) -> Any:
    """``yaml.safe_load`` with alias expansion bounded by ``MAX_YAML_NODES`` and nesting by
    ``MAX_YAML_DEPTH``.

    Raises:
        yaml.YAMLError: invalid YAML, a recursive alias, or a document past either bound.
    """
    return yaml.load(text, Loader=_BoundedLoader)


def load_config(path: str | os.PathLike[str]) -> CascadeConfig:
    """Read and validate a YAML config file.

    Raises:
        ConfigError: the file is missing or unreadable, is not valid YAML, or fails validation.
    """
    shown = str(path)
    try:
        # Not only regular files: `cascade validate <(...)` reads a pipe.
        text = read_capped(path, MAX_CONFIG_BYTES, regular=False).decode("utf-8")
    except ConfigError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            raise ConfigError("config file not found", path=shown) from exc
        raise ConfigError(f"cannot read config file: {exc}", path=shown) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read config file: {exc}", path=shown) from exc
    try:
        data = safe_load_bounded(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"invalid YAML: {problem}", path=shown, location=where) from exc
    return parse_config(data, path=shown)
