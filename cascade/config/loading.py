"""Loading a config: YAML text -> validated ``CascadeConfig``, with every failure a ``ConfigError``.

Loading is ``yaml.safe_load`` -> ``CascadeConfig.model_validate`` -> cross-reference checks. It is
pure: no environment, no network. Every failure names the file and the key path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from cascade.config.paths import read_capped
from cascade.config.pricing import fill_prices
from cascade.config.schema import CascadeConfig
from cascade.errors import ConfigError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "format_location",
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


def format_location(loc: tuple[int | str, ...]) -> str:
    """``("tasks", "faq", "ladder", 1)`` -> ``tasks.faq.ladder[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    value = error.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return f"{error['msg'][0].lower()}{error['msg'][1:]} (got {shown})"


def _from_validation(
    exc: ValidationError, path: str | None, hints: Mapping[tuple[Any, ...], str] | None = None
) -> ConfigError:
    errors = exc.errors()
    # In a union the deepest error is the member the user was aiming at: one error per place.
    chosen: dict[tuple[Any, ...], Any] = {}
    for error in errors:
        group = error["loc"][:3]
        if group not in chosen or len(error["loc"]) > len(chosen[group]["loc"]):
            chosen[group] = error
    ordered = sorted(chosen.values(), key=lambda e: -len(e["loc"]))
    first, rest = ordered[0], ordered[1:]

    def describe(error: Mapping[str, Any]) -> str:
        hint = (hints or {}).get(tuple(error["loc"]))
        return hint if hint and error["type"] == "missing" else _describe(error)

    # Every problem is named: fixing one at a time and reloading wastes the user's time.
    also = "".join(f"; {format_location(_clean(e['loc']))}: {describe(e)}" for e in rest)
    return ConfigError(
        describe(first) + also, path=path, location=format_location(_clean(first["loc"]))
    )


def _clean(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """Union members and tagged choices add their own names to the location; drop them."""
    kept = tuple(p for p in loc if not (isinstance(p, str) and p[:1].isupper()))
    return tuple(p for p in kept if p not in ("literal['all','any']", "literal['all', 'any']"))


def _check_references(config: CascadeConfig, path: str | None) -> None:
    for key, model in config.models.items():
        for name in ("max_tokens", "max_completion_tokens"):
            value = model.params.get(name)
            if isinstance(value, int) and value > model.max_output_tokens:
                raise ConfigError(
                    f"{value} is above max_output_tokens {model.max_output_tokens}",
                    path=path,
                    location=f"models.{key}.params.{name}",
                )
        if model.provider not in config.providers:
            raise ConfigError(
                f"unknown provider {model.provider!r} (defined: {', '.join(config.providers)})",
                path=path,
                location=f"models.{key}.provider",
            )
    router = config.task_router
    if (router is not None and router.default_task is not None
            and router.default_task not in config.tasks):
        raise ConfigError(
            f"unknown task {router.default_task!r} (defined: {', '.join(config.tasks)})",
            path=path,
            location="task_router.default_task",
        )
    for name, task in config.tasks.items():
        for i, rung in enumerate(task.ladder):
            if rung.model not in config.models:
                raise ConfigError(
                    f"unknown model {rung.model!r} (defined: {', '.join(config.models)})",
                    path=path,
                    location=f"tasks.{name}.ladder[{i}]",
                )


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
    try:
        config = CascadeConfig.model_validate(data)
    except ValidationError as exc:
        raise _from_validation(exc, path, unknown) from exc
    _check_references(config, path)
    config._price_sources = sources
    return config


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
