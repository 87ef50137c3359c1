"""Entry-point lookup. Built-ins are found exactly the way third-party plug-ins are.

Groups:
    ``cascade.evaluators``: name -> evaluator class (or plain function)
    ``cascade.providers``:  name -> provider class
"""

from __future__ import annotations

from functools import cache
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from cascade.errors import ConfigError, PluginNotFound

__all__ = ["EVALUATORS", "PROVIDERS", "available", "load_object", "load_plugin"]

EVALUATORS = "cascade.evaluators"
PROVIDERS = "cascade.providers"


@cache
def _entry_points(group: str) -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=group)}


def available(group: str) -> list[str]:
    """Names registered under ``group`` by every installed distribution."""
    return sorted(_entry_points(group))


@cache
def load_plugin(group: str, name: str, location: str | None = None) -> Any:
    """Import the object registered as ``name`` in ``group``.

    Raises:
        PluginNotFound: nothing is registered under that name.
        ConfigError: the plug-in is registered but fails to import.
    """
    found = _entry_points(group).get(name)
    if found is None:
        raise PluginNotFound(group, name, available=available(group), location=location)
    try:
        return found.load()
    except Exception as exc:  # a broken plug-in must not look like a missing one
        raise ConfigError(f"plug-in {name!r} failed to import: {exc}", location=location) from exc


def load_object(spec: str, *, location: str | None = None) -> Any:
    """Import ``"package.module:attribute"``.

    Raises:
        ConfigError: the spec is malformed, the module is missing or lacks the attribute.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"expected 'package.module:function', got {spec!r}", location=location)
    try:
        obj: Any = import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import module {module_name!r}: {exc}", location=location
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(f"module {module_name!r} has no {attr!r}", location=location) from exc
    return obj
