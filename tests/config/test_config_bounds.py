"""The config's budgets and rate limits are bounded: 1e300 USD or 10**20 rpm is refused when
the config loads, naming the key path and the bound, instead of failing every request."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from cascade.config import load_config
from cascade.config.schema import MAX_PER_MINUTE, MAX_USD
from tests.config.test_config import BASE, error_for, write


def _budgets(where: str, value: float) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        if where == "budgets":
            data["budgets"] = {"daily_usd": value}
        else:
            data["tasks"]["faq"]["budgets"] = {"monthly_usd": value}

    return mutate


def _rate(field: str, value: int) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        data["limits"] = {"tasks": {"faq": {field: value}}}

    return mutate


@pytest.mark.parametrize(
    ("mutate", "location"),
    [
        (_budgets("budgets", 1e300), "budgets.daily_usd"),
        (_budgets("budgets", MAX_USD * 1.01), "budgets.daily_usd"),
        (_budgets("task", 1e300), "tasks.faq.budgets.monthly_usd"),
        (_rate("rpm", 10**20), "limits.tasks.faq.rpm"),
        (_rate("tpm", MAX_PER_MINUTE + 1), "limits.tasks.faq.tpm"),
    ],
)
def test_out_of_bound_budgets_and_rates_are_refused(
    tmp_path: Path, mutate: Any, location: str
) -> None:
    """A budget above 1e9 USD or a rate above 2**53 is a ConfigError naming the key path."""
    message = error_for(tmp_path, mutate)
    assert location in message
    bound = "1000000000" if "usd" in location else str(MAX_PER_MINUTE)
    assert f"less than or equal to {bound}" in message


def test_budgets_and_rates_at_the_bound_load(tmp_path: Path) -> None:
    """The largest budget and rate still load."""
    data = copy.deepcopy(BASE)
    data["budgets"] = {"daily_usd": MAX_USD, "monthly_usd": MAX_USD}
    data["limits"] = {"tasks": {"faq": {"rpm": MAX_PER_MINUTE, "tpm": MAX_PER_MINUTE}}}
    config = load_config(write(tmp_path, data))
    assert config.budgets is not None
    assert config.budgets.daily_usd == MAX_USD
    assert config.limits is not None
    assert config.limits.tasks["faq"].rpm == MAX_PER_MINUTE
