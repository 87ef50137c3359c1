"""How numbers, counts and commands are worded for the people and scripts that read them.

One helper per kind, so every command prints money, counts and JSON the same way:
``plural`` ("1 task", "2 tasks"), ``usd`` ("$0.005", not "$0.01"), ``to_json`` (floats at 12
significant digits, so a cost prints as ``3.6e-06``, not ``3.6000000000000003e-06``) and
``install_hint`` (how to add an optional extra) and ``utc_minute`` (a Unix time as
``2026-11-30 14:05 UTC``).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "FIRST_TS",
    "JSON_DIGITS",
    "TIME_RANGE",
    "UNTIL_TS",
    "install_hint",
    "plural",
    "round_floats",
    "to_json",
    "usd",
    "utc_minute",
]

# Enough for any price or latency; few enough to hide binary rounding (0.1 * 3 * 1e-6 and kin).
JSON_DIGITS = 12
# The times a command accepts (``--since``, ``--until``, ``--expires``): FIRST_TS <= t <
# UNTIL_TS, 1970-01-01 .. 9998-12-31 UTC. datetime words years 1..9999 only, and the last day of
# 9999 in a zone west of UTC is already year 10000; no ledger row predates the Unix epoch.
FIRST_TS = 0.0
UNTIL_TS = 253_370_764_800.0  # 9999-01-01 00:00 UTC
TIME_RANGE = "1970-01-01 .. 9998-12-31 UTC"


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """A count with its noun in the right number.

    Args:
        count: How many.
        noun: The singular noun (``"task"``, ``"query"``).
        plural_noun: The plural, when adding "s" (or "y" -> "ies") is wrong.

    Returns:
        ``"1 task"``, ``"0 tasks"``, ``"2 queries"``.
    """
    if count == 1:
        return f"{count} {noun}"
    if plural_noun is None:
        consonant_y = noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u")
        plural_noun = noun[:-1] + "ies" if consonant_y else noun + "s"
    return f"{count} {plural_noun}"


def usd(value: float) -> str:
    """US dollars with the decimals the amount needs to be read.

    At least two decimals and up to six, and four significant digits for amounts below a
    hundredth of a cent, trailing zeros beyond the second decimal dropped: ``$2.00``,
    ``$0.005``, ``$0.000092``, ``$0.0000036``. A budget of half a cent is never shown as $0.01.

    Args:
        value: The amount in USD.

    Returns:
        The amount with a ``$`` sign, thousands separated by commas.
    """
    if value == 0 or not math.isfinite(value):
        return f"${value:.2f}"
    decimals = max(6, 3 - math.floor(math.log10(abs(value))))
    whole, _, fraction = f"{abs(value):,.{decimals}f}".partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{'-' if value < 0 else ''}${whole}.{fraction}"


def utc_minute(ts: float) -> str:
    """A Unix time as ``2026-11-30 14:05 UTC``; a time no date can word (a bad row written
    before ``TIME_RANGE`` was checked) as its raw number, so that printing never fails."""
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (ValueError, OverflowError, OSError):
        return f"{ts!r} (Unix time)"


def round_floats(value: Any, digits: int = JSON_DIGITS) -> Any:
    """``value`` with every float in it (through dicts, lists and tuples) at ``digits``
    significant digits; NaN, infinities and everything else are left as they are."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [round_floats(v, digits) for v in value]
    return value


def to_json(value: Any, **dumps: Any) -> str:
    """``json.dumps`` of ``value`` with its floats rounded by ``round_floats``.

    Args:
        value: What to serialise.
        **dumps: Passed to ``json.dumps`` (``indent=2``, a ``default=`` fallback).

    Returns:
        The JSON text.
    """
    return json.dumps(round_floats(value), **dumps)


def install_hint(extra: str) -> str:
    """How to install an optional extra of cascade-ladder.

    The package is not on PyPI yet, so the command is the one that works from a clone; once it
    is published, this (and the docs' install lines) can name the package instead.
    """
    return f"pip install -e '.[{extra}]' in a clone of cascade-ladder"
