"""The page's headline (SQL over the period's rows) equals ``cascade report --json`` (the
rollup) on a ledger of real engine runs, exactly: the same nano-dollar sums, the same counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade.report import Period, ledger_report
from cascade.report.queries import aggregate, headline
from cascade.testing import MockLLMServer
from tests.report.seeded import seed

pytestmark = pytest.mark.usefixtures("keys")


def test_headline_equals_the_report(server: MockLLMServer, tmp_path: Path) -> None:
    engine = seed(server, tmp_path / "ledger.sqlite")
    try:
        ledger = engine.ledger
        assert ledger is not None
        report, head = ledger_report(ledger), headline(ledger, Period())
        assert head["total_cost_usd"] == report["total_cost_usd"]
        assert (head["saved_usd"], head["saved_share"]) == (report["saved_usd"],
                                                            report["saved_share"])
        assert head["tasks"].keys() == report["tasks"].keys()
        for name, task in report["tasks"].items():
            for field in ("runs", "cost_usd", "saved_usd", "saved_share", "escalation_rate"):
                assert head["tasks"][name][field] == task[field], (name, field)
        assert report["tasks"]["code"]["top_exact_runs"] == 1  # sonnet answered: its bill
        # a period holding none of the rows: nothing, and every panel still has its rows
        empty = Period(since=0.0, until=1.0)
        assert headline(ledger, empty)["runs"] == 0
        agg = aggregate(ledger, Period(), rungs={"faq": ["mini", "mid", "sonnet"]})
        assert [r["model"] for r in agg.funnel if r["task"] == "faq"] == ["mini", "mid"]
        faq = {r["model"]: r for r in agg.funnel if r["task"] == "faq"}
        assert (faq["mini"]["reached"], faq["mini"]["accepted"]) == (6, 3)
        assert (faq["mini"]["escalated"], faq["mid"]["accepted"]) == (3, 3)  # one the 500
        assert {r["model"]: r["errors"] for r in agg.errors} == {"mini": 1}
        assert sum(r["runs"] for r in agg.models) == report["runs"]
    finally:
        engine.close()
