"""What the CLI's commands share to talk to the terminal: progress on stderr, quieter logs
during replays, and the formatting of ratios."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["fmt", "print_wide", "quiet", "ratio", "say"]


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


def print_wide(table: Any) -> None:
    """Print a rich table never narrower than it needs, whatever width the terminal (or a
    pipe's default 80) offers: a line too long for the screen beats a cell folded mid-number."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console()
    wide = Measurement.get(console, console.options.update_width(10_000), table).maximum
    console.width = max(console.width, wide)
    console.print(table)
