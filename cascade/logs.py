"""The library's log events go to the standard-library logger ``cascade``, never to stdout.

Python's convention for libraries: the logger has a ``NullHandler``, so nothing is printed
until the application configures logging (``logging.basicConfig(level=logging.INFO)`` shows
every ``cascade.step``). Events are structlog events, rendered by the application's structlog
processors when it has configured structlog (so ``structlog.testing.capture_logs`` and a
``ProcessorFormatter`` set-up see them as key-value events), else as ``key=value`` text.
``cascade --log-level/--log-json`` is one such application (``configure_cli``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from cascade.formatting import to_json

__all__ = ["LOGGER_NAME", "configure_cli", "get_logger"]

LOGGER_NAME = "cascade"
_stdlib = logging.getLogger(LOGGER_NAME)
_stdlib.addHandler(logging.NullHandler())

# Used while the application has not configured structlog: a plain message for stdlib logging.
_OWN_PROCESSORS: list[Any] = [
    structlog.processors.TimeStamper(fmt="iso"),
    structlog.processors.KeyValueRenderer(key_order=["event"], drop_missing=True),
]
# A lazy proxy: it reads the application's structlog configuration at every call, so a later
# structlog.configure() (or capture_logs()) applies.
_APP = structlog.wrap_logger(_stdlib)
_OWN = structlog.wrap_logger(
    _stdlib, processors=_OWN_PROCESSORS, wrapper_class=structlog.stdlib.BoundLogger
)
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _Logger:
    """``log.info("cascade.step", **fields)`` and friends, routed through stdlib ``cascade``."""

    def enabled(self, level: str) -> bool:
        """Whether an event at ``level`` would be seen: the hot path builds no event for none.

        Once the application has configured structlog, its processors decide, so every event
        is handed to them.
        """
        return structlog.is_configured() or _stdlib.isEnabledFor(_LEVELS[level])

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        configured = structlog.is_configured()
        if not configured and not _stdlib.isEnabledFor(_LEVELS[level]):
            return  # nobody listens: skip the rendering (replays log thousands of steps)
        getattr(_APP if configured else _OWN, level)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)


def get_logger() -> _Logger:
    """The library's logger (one shared instance; it holds no state)."""
    return _LOG


_LOG = _Logger()


class _Stderr:
    """Whatever sys.stderr is at write time (tests and the CLI may swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_SAID_BY_THE_COMMAND = frozenset({"cascade.misconfigured"})


def _drop_said_by_the_command(_: Any, __: str, event: MutableMapping[str, Any]) -> Any:
    if event.get("event") in _SAID_BY_THE_COMMAND:
        raise structlog.DropEvent
    return event


def configure_cli(level: str, as_json: bool) -> None:
    """What the ``cascade`` command does: events at ``level`` and above as lines on stderr.

    Only the command calls this; the library never configures logging or structlog.
    """
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=to_json)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    threshold = _LEVELS[level.lower()]
    processors: list[Any] = []
    if not as_json and threshold >= logging.WARNING:
        # The command says these itself, as one `warning:` line each (cascade run).
        processors.append(_drop_said_by_the_command)
    structlog.configure(
        processors=[
            *processors,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        cache_logger_on_first_use=False,
    )
    for handler in list(_stdlib.handlers):
        if getattr(handler, "_cascade_cli", False):
            _stdlib.removeHandler(handler)
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._cascade_cli = True  # type: ignore[attr-defined]
    _stdlib.addHandler(handler)
    _stdlib.setLevel(threshold)
    _stdlib.propagate = False  # the command's lines, once, whatever the root logger does
