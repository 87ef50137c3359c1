"""OpenTelemetry: a span per run and per step with GenAI attributes, and the GenAI metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from cascade import Cascade, ProviderError
from cascade.testing import MockLLMServer, Reply
from tests.conftest import live_config

_EXPORTER = InMemorySpanExporter()
# Delta: each test reads only the points it recorded.
_READER = InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA})
_installed = False


@pytest.fixture
def otel() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    """The SDK's in-memory exporter and reader, installed once (OTel's globals are set-once)."""
    global _installed
    if not _installed:
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))
        _installed = True
    _READER.get_metrics_data()  # drain what earlier tests recorded
    _EXPORTER.clear()
    yield _EXPORTER, _READER


def _points(data: Any, name: str) -> list[Any]:
    found = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


@pytest.mark.usefixtures("keys")
def test_run_and_step_spans(server: MockLLMServer, otel: Any) -> None:
    exporter, reader = otel
    server.script("gpt-4o-mini", [Reply("no", input_tokens=11, output_tokens=1)])
    server.script("claude-sonnet-4-6", [Reply("we open at nine", input_tokens=12,
                                              output_tokens=4)])
    tracer = trace.get_tracer("app")
    with Cascade.from_dict(live_config(server), ledger=False) as engine, \
            tracer.start_as_current_span("request"):
        result = engine.complete("faq", "When do you open?")
    spans: list[ReadableSpan] = list(exporter.get_finished_spans())
    by_name = {s.name: s for s in spans}
    run = by_name["cascade faq"]
    mini, sonnet = by_name["chat gpt-4o-mini"], by_name["chat claude-sonnet-4-6"]
    # The run is a child of the application's span; the steps are children of the run.
    assert run.parent is not None
    assert run.parent.span_id == by_name["request"].context.span_id
    assert mini.parent is not None and mini.parent.span_id == run.context.span_id
    assert sonnet.parent is not None and sonnet.parent.span_id == run.context.span_id
    assert dict(mini.attributes or {}) | {} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 1,
        "cascade.run_id": result.run_id,
        "cascade.task": "faq",
        "cascade.step": 1,
        "cascade.model": "mini",
        "cascade.decision": "escalate",
        "cascade.attempts": 1,
        "cascade.cost_usd": result.steps[0].cost_usd,
        "cascade.usage_estimated": False,
        "cascade.verdicts": ("length=fail",),
    }
    assert (sonnet.attributes or {})["gen_ai.provider.name"] == "anthropic"
    assert (sonnet.attributes or {})["cascade.decision"] == "accept"
    attrs = run.attributes or {}
    assert attrs["gen_ai.response.model"] == "claude-sonnet-4-6"
    assert attrs["gen_ai.usage.input_tokens"] == 23
    assert attrs["gen_ai.usage.output_tokens"] == 5
    assert attrs["cascade.cost_usd"] == pytest.approx(result.cost_usd)
    assert attrs["cascade.accepted"] is True
    assert run.status.status_code is StatusCode.UNSET
    assert run.start_time is not None and mini.start_time is not None
    assert run.start_time <= mini.start_time

    data = reader.get_metrics_data()  # delta: read once
    tokens = _points(data, "gen_ai.client.token.usage")
    sums = {(p.attributes["gen_ai.request.model"], p.attributes["gen_ai.token.type"]): p.sum
            for p in tokens}
    assert sums == {("gpt-4o-mini", "input"): 11, ("gpt-4o-mini", "output"): 1,
                    ("claude-sonnet-4-6", "input"): 12, ("claude-sonnet-4-6", "output"): 4}
    durations = _points(data, "gen_ai.client.operation.duration")
    assert sorted(p.attributes["gen_ai.request.model"] for p in durations) == [
        "claude-sonnet-4-6", "gpt-4o-mini"]
    assert all(p.count == 1 and p.sum > 0 for p in durations)


@pytest.mark.usefixtures("keys")
def test_failed_call_has_error_type(server: MockLLMServer, otel: Any) -> None:
    exporter, reader = otel
    server.script("gpt-4o-mini", [Reply(status=400, message="bad request")])
    server.script("claude-sonnet-4-6", [Reply(status=400, message="bad request")])
    with Cascade.from_dict(live_config(server), ledger=False) as engine, \
            pytest.raises(ProviderError):
        engine.complete("faq", "q")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    step = spans["chat gpt-4o-mini"]
    assert (step.attributes or {})["error.type"] == "400"
    assert step.status.status_code is StatusCode.ERROR
    assert "gen_ai.response.model" not in (step.attributes or {})
    run = spans["cascade faq"]
    assert (run.attributes or {})["error.type"] == "ProviderError"
    assert run.status.status_code is StatusCode.ERROR
    durations = _points(reader.get_metrics_data(), "gen_ai.client.operation.duration")
    assert {p.attributes.get("error.type") for p in durations} == {"400"}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_router_skip_step_is_a_span_without_metrics(tmp_path: Any, otel: Any, mode: str) -> None:
    """With the write-ahead ledger: a rung the router skips is a step span at cost 0 with no
    metric points (nothing was called); the called rung is settled in the ledger first, then
    traced and metered once."""
    import asyncio

    from cascade.testing import FakeProvider, make_completion
    from tests.engine.test_engine import config

    exporter, reader = otel
    router = {"rungs": {"small": {"dense": ["prompt.words"], "weights": [-4.0], "mean": [2.0],
                                  "scale": [1.0], "bias": 0.0}}}
    data = config(ladder=["small", "medium"],
                  router={"model": router, "skip_below": {"small": 0.5}})
    data["ledger"] = {"path": str(tmp_path / "l.sqlite")}
    data["budgets"] = {"daily_usd": 10.0}
    fake = FakeProvider("p", {"medium": [make_completion("a fine long answer", input_tokens=10,
                                                         output_tokens=4)]})
    prompt = " ".join(["long"] * 40)
    with Cascade.from_dict(data, providers={"p": fake}) as engine:
        if mode == "sync":
            result = engine.complete("t", prompt)
        else:
            result = asyncio.run(engine.acomplete("t", prompt))
        assert engine.ledger is not None
        rows = engine.ledger.query("SELECT decision, status, cost_usd FROM steps ORDER BY step")
    assert [(r["decision"], r["status"], r["cost_usd"]) for r in rows] == [
        ("skip", "settled", 0.0), ("accept", "settled", pytest.approx(result.cost_usd))]
    steps = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    assert [(s.attributes or {})["cascade.decision"] for s in steps] == ["skip", "accept"]
    assert (steps[0].attributes or {})["cascade.cost_usd"] == 0.0
    assert "error.type" not in (steps[0].attributes or {})
    run = next(s for s in exporter.get_finished_spans() if s.name == "cascade t")
    assert (run.attributes or {})["cascade.cost_usd"] == pytest.approx(result.cost_usd)
    data_points = reader.get_metrics_data()
    durations = _points(data_points, "gen_ai.client.operation.duration")
    assert [p.count for p in durations] == [1]  # the called rung only
    tokens = _points(data_points, "gen_ai.client.token.usage")
    assert sorted(p.sum for p in tokens) == [4, 10]


def _shadow_engine(tmp_path: Any, script: dict[str, list[Any]], **task: Any) -> Any:
    from cascade.testing import FakeProvider

    fake = FakeProvider("p", script)
    data = {
        "providers": {"p": {"type": "openai"}},
        "models": {
            "small": {"provider": "p", "name": "small-1", "price": {"input": 1, "output": 2}},
            "large": {"provider": "p", "name": "large-1", "price": {"input": 10, "output": 20}},
        },
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
        "tasks": {"t": {"ladder": ["small", "large"],
                        "evaluators": [{"type": "length", "min_words": 2}],
                        "shadow_rate": 1.0, **task}},
    }
    return Cascade.from_dict(data, providers={"p": fake}, sleep=lambda s: None)


def test_shadow_calls_are_step_spans_of_the_run_with_metric_points(
    tmp_path: Any, otel: Any
) -> None:
    exporter, reader = otel
    engine = _shadow_engine(tmp_path, {"small-1": ["it is four"], "large-1": ["it is 4"]})
    with engine:
        result = engine.complete("t", "what is 2+2?")
        engine.shadows.wait()
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    run, shadow = by_name["cascade t"], by_name["chat large-1"]
    # The shadow call runs after the answer was returned: a child of the run's span.
    assert shadow.parent is not None and shadow.parent.span_id == run.context.span_id
    attributes = dict(shadow.attributes or {})
    assert attributes["cascade.decision"] == "shadow"
    assert attributes["cascade.run_id"] == result.run_id
    assert attributes["cascade.attempts"] == 1
    assert shadow.status.status_code != StatusCode.ERROR
    # The run span describes the caller's run only: one step, its own cost.
    assert dict(run.attributes or {})["cascade.steps"] == 1
    durations = _points(reader.get_metrics_data(), "gen_ai.client.operation.duration")
    models = sorted(p.attributes["gen_ai.request.model"] for p in durations)
    assert models == ["large-1", "small-1"]


def test_refused_shadow_call_is_a_span_without_metric_points(tmp_path: Any, otel: Any) -> None:
    exporter, reader = otel
    engine = _shadow_engine(tmp_path, {"small-1": ["it is four"], "large-1": ["it is 4"]},
                            budgets={"daily_usd": 0.00004})
    with engine:
        engine.complete("t", "q", max_tokens=10)
        engine.shadows.wait()
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    attributes = dict(by_name["chat large-1"].attributes or {})
    assert attributes["cascade.decision"] == "shadow"
    assert attributes["cascade.attempts"] == 0 and attributes["cascade.cost_usd"] == 0.0
    assert "gen_ai.usage.input_tokens" not in attributes
    durations = _points(reader.get_metrics_data(), "gen_ai.client.operation.duration")
    assert [p.attributes["gen_ai.request.model"] for p in durations] == ["small-1"]


def test_auto_task_names_the_run_span_with_its_probability(tmp_path: Any, otel: Any) -> None:
    from tests.models.test_task_router import MATH, engine_for, fitted

    exporter, _ = otel
    with engine_for(fitted(tmp_path)) as engine:
        result = engine.complete("auto", MATH[17])
    assert result.task == "math" and result.task_probability is not None
    run = next(s for s in exporter.get_finished_spans() if s.name.startswith("cascade "))
    assert run.name == "cascade math"
    attributes = dict(run.attributes or {})
    assert attributes["cascade.task"] == "math"
    assert attributes["cascade.task_probability"] == pytest.approx(result.task_probability)


def test_a_named_keys_run_span_carries_its_name(tmp_path: Any, otel: Any) -> None:
    """``cascade.key.name`` is the key's name on the run span; a run without a key has none."""
    from cascade.ledger.keys import KeyScope
    from tests.models.test_task_router import engine_for, fitted

    exporter, _ = otel
    with engine_for(fitted(tmp_path)) as engine:
        engine.complete("chat", "hello", key=KeyScope("team-a"))
        engine.complete("chat", "hello")
    runs = [s for s in exporter.get_finished_spans() if s.name.startswith("cascade ")]
    assert [dict(s.attributes or {}).get("cascade.key.name") for s in runs] == ["team-a", None]
