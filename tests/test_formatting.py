"""cascade.formatting: counts, dollars, JSON numbers and install hints as the commands show them."""

from __future__ import annotations

import json
import math

import pytest

from cascade.formatting import install_hint, plural, round_floats, to_json, usd


@pytest.mark.parametrize(
    ("count", "noun", "shown"),
    [(1, "task", "1 task"), (0, "task", "0 tasks"), (2, "query", "2 queries"),
     (1, "query", "1 query"), (3, "day", "3 days"), (2, "person", "2 persons")],
)
def test_plural(count: int, noun: str, shown: str) -> None:
    """One takes the singular; every other count the plural ("y" after a consonant -> "ies")."""
    assert plural(count, noun) == shown


def test_plural_takes_an_irregular_form() -> None:
    assert plural(2, "person", "people") == "2 people"
    assert plural(1, "person", "people") == "1 person"


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.005, "$0.005"), (2.0, "$2.00"), (0.25, "$0.25"), (10, "$10.00"),
     (0.000092, "$0.000092"), (3.6000000000000003e-06, "$0.0000036"), (1e-07, "$0.0000001"),
     (0.123456789, "$0.123457"), (1234.5, "$1,234.50"), (0.0, "$0.00"), (-0.005, "-$0.005")],
)
def test_usd_shows_the_decimals_the_amount_needs(value: float, shown: str) -> None:
    """At least two decimals, six when they carry digits, four significant digits below that."""
    assert usd(value) == shown


def test_to_json_rounds_floats_to_12_significant_digits() -> None:
    """3.6000000000000003e-06 is written 3.6e-06, inside dicts, lists and tuples alike."""
    text = to_json({"cost_usd": 3.6000000000000003e-06, "steps": [{"x": 0.1 + 0.2}], "t": (1.5,)})
    assert text == '{"cost_usd": 3.6e-06, "steps": [{"x": 0.3}], "t": [1.5]}'


def test_round_floats_keeps_what_is_not_a_finite_float() -> None:
    """Integers, booleans, strings, None, NaN and infinities pass through unchanged."""
    value = {"n": 3, "ok": True, "s": "x", "none": None, "inf": math.inf}
    assert round_floats(value) == value
    assert math.isnan(round_floats(math.nan))
    assert json.loads(to_json([123456789012345.67])) == [123456789012000.0]


def test_install_hint_is_the_clone_command() -> None:
    """cascade-ladder is not on PyPI: the hint installs the extra from a clone."""
    assert install_hint("server") == "pip install -e '.[server]' in a clone of cascade-ladder"
