"""``configs/grafana/cascade-dashboard.json``: every PromQL expression parses and names only
series the gateway exports, and the gauges its breaker and budget panels read carry real values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import promql_parser as promql
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cascade import Cascade
from cascade.gateway.app import create_app, running
from cascade.testing import MockLLMServer
from tests.conftest import live_config

DASHBOARD = Path(__file__).resolve().parents[2] / "configs" / "grafana" / "cascade-dashboard.json"
KEY = "grafana-test-key"
# The samples a family of each type exports (prometheus-client's text format).
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created")}


# Grafana replaces its interval variables with a duration before it sends a query.
GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "6h"}


def expressions() -> list[tuple[str, str]]:
    """(panel title, query) for every query, as Grafana sends it."""
    board = json.loads(DASHBOARD.read_text())
    found = [(panel["title"], _substitute(target["expr"]))
             for panel in board["panels"] for target in panel.get("targets", ())]
    assert found, "the dashboard has no queries"
    return found


def _substitute(expr: str) -> str:
    for variable, duration in GRAFANA_INTERVALS.items():
        expr = expr.replace(variable, duration)
    assert "$" not in expr, f"a dashboard variable this test does not know: {expr}"
    return expr


def selectors(node: Any) -> set[str]:
    """The metric names an expression's vector selectors read, walking the parsed tree."""
    if isinstance(node, promql.VectorSelector):
        return {node.name} if node.name else set()
    if isinstance(node, promql.MatrixSelector):
        return selectors(node.vector_selector)
    if isinstance(node, promql.Call):
        return set().union(*(selectors(arg) for arg in node.args))
    if isinstance(node, promql.BinaryExpr):
        return selectors(node.lhs) | selectors(node.rhs)
    if isinstance(node, promql.AggregateExpr):
        return selectors(node.expr) | (selectors(node.param) if node.param is not None else set())
    if isinstance(node, (promql.ParenExpr, promql.UnaryExpr, promql.SubqueryExpr)):
        return selectors(node.expr)
    return set()  # number and string literals


def exported(text: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def test_selectors_walks_every_node_kind() -> None:
    expr = promql.parse(
        "histogram_quantile(0.9, sum by (le) (rate(a_bucket[5m]))) - on() (-b) "
        "+ max_over_time(c[1h:1m]) + topk(2, d)"
    )
    assert selectors(expr) == {"a_bucket", "b", "c", "d"}


@pytest.mark.usefixtures("keys")
def test_every_expression_parses_and_names_an_exported_metric(
    tmp_path: Path, server: MockLLMServer
) -> None:
    server.script("gpt-4o-mini", ["a short reply from the mini rung"])
    config = live_config(server, ledger=str(tmp_path / "ledger.sqlite"))
    config["providers"]["openai"]["circuit_breaker"] = {"failures": 3, "cooldown_s": 30}
    config["budgets"] = {"daily_usd": 5.0}
    engine = Cascade.from_dict(config)
    with engine, running(create_app(engine, api_keys=[KEY])) as url:
        headers = {"authorization": f"Bearer {KEY}"}
        reply = httpx2.post(f"{url}/v1/chat/completions", headers=headers, json={
            "model": "faq", "messages": [{"role": "user", "content": "hello"}]})
        assert reply.status_code == 200, reply.text
        text = httpx2.get(f"{url}/metrics", headers=headers).text
        for _ in range(3):  # the breaker's threshold: it opens
            engine.limits.breakers["openai"].failure()
        tripped = httpx2.get(f"{url}/metrics", headers=headers).text
    names = exported(text)
    missing = {}
    for title, expr in expressions():
        try:
            tree = promql.parse(expr)
        except ValueError as exc:
            pytest.fail(f"panel {title!r}: {expr!r} does not parse: {exc}")
        unknown = selectors(tree) - names
        if unknown:
            missing[title] = sorted(unknown)
        assert selectors(tree), f"panel {title!r} reads no metric"
    assert not missing, f"panels read series the gateway does not export: {missing}"
    # The gauges behind the breaker and budget panels carry values, not just a declaration.
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("cascade_breaker_open", (("provider", "openai"),))] == 0.0
    assert 'cascade_breaker_open{provider="openai"} 1.0' in tripped
    limit = ("cascade_budget_limit_usd", (("period", "daily"), ("scope", "global")))
    assert samples[limit] == 5.0
    spent = samples[("cascade_budget_spent_usd", (("period", "daily"), ("scope", "global")))]
    assert spent >= 0.0


def test_a_missing_metric_is_reported() -> None:
    tree = promql.parse("rate(cascade_not_a_metric_total[5m])")
    assert selectors(tree) - exported("# TYPE cascade_cost_usd counter\n") == {
        "cascade_not_a_metric_total"}
