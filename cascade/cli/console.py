"""What the CLI's commands share to talk to the terminal: progress on stderr, quieter logs
during replays, and the formatting of ratios."""

from __future__ import annotations

import sys

__all__ = ["fmt", "quiet", "ratio", "say"]


def say(message: str) -> None:
    print(message, file=sys.stderr)


def ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def quiet() -> None:
    """Replays log every step; a calibration run wants only its own report."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    library = logging.getLogger("cascade")
    library.setLevel(max(library.getEffectiveLevel(), logging.WARNING))
