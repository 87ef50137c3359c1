"""Entry-point lookup. Built-ins are found exactly the way third-party plug-ins are.

Groups:
    ``cascade.evaluators``: name -> evaluator class (or plain function)
    ``cascade.providers``:  name -> provider class
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from functools import cache
from importlib import import_module, invalidate_caches
from importlib.metadata import entry_points
from pathlib import Path
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


def load_object(
    spec: str, *, location: str | None = None, search: Sequence[str | os.PathLike[str]] = ()
) -> Any:
    """Import ``"package.module:attribute"``, looking in ``search``'s folders first.

    The folders are searched only while this import runs: they go to the front of ``sys.path``
    under a lock and come off again, so one config's folder never decides what another config's
    path imports. (What is imported stays in ``sys.modules`` under its name, as any import does.)

    Args:
        spec: ``"package.module:attribute"`` (the attribute may be dotted).
        location: The key path of the spec, for errors.
        search: Folders to import from before ``sys.path`` (the config's folder, the working
            directory), as if they were on ``PYTHONPATH``.

    Raises:
        ConfigError: the spec is malformed, the module is missing (the message names the
            folders searched), fails to import, or lacks the attribute.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"expected 'package.module:function', got {spec!r}", location=location)
    folders = list(dict.fromkeys(str(Path(folder).resolve()) for folder in search))
    try:
        obj: Any = _import(module_name, folders)
    except ModuleNotFoundError as exc:
        if exc.name is None or not f"{module_name}.".startswith(f"{exc.name}."):
            raise _broken(module_name, exc, location) from exc
        where = f"in {', '.join(folders)} or on sys.path" if folders else "on sys.path"
        raise ConfigError(
            f"cannot import module {module_name!r}: no module named {exc.name!r} {where}",
            location=location,
        ) from exc
    except Exception as exc:  # a module that is there but broken must not look missing
        raise _broken(module_name, exc, location) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(f"module {module_name!r} has no {attr!r}", location=location) from exc
    return obj


# Serialises the sys.path changes of concurrent loads (gateway workers build engines in threads).
_SEARCH_LOCK = threading.Lock()


def _import(name: str, folders: list[str]) -> Any:
    if not folders:
        return import_module(name)
    with _SEARCH_LOCK:
        sys.path[:0] = folders
        # A module written since the folder's listing was cached must still be found.
        invalidate_caches()
        try:
            return import_module(name)
        finally:
            for folder in folders:
                if folder in sys.path:  # the imported code may have edited sys.path itself
                    sys.path.remove(folder)  # the first match: the one put at the front above


def _broken(module_name: str, exc: BaseException, location: str | None) -> ConfigError:
    return ConfigError(
        f"module {module_name!r} failed to import: {type(exc).__name__}: {exc}", location=location
    )
