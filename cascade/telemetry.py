"""OpenTelemetry spans and metrics, following the GenAI semantic conventions (``[otel]`` extra).

One span per run (``cascade <task>``) and one child span per step (``chat <model name>``), plus
the metrics ``gen_ai.client.token.usage`` and ``gen_ai.client.operation.duration`` for every
model call. The library only uses the OpenTelemetry API: nothing is exported until the
application installs an SDK tracer or meter provider (see docs/observability.md). Without the
``opentelemetry-api`` package, everything here is a no-op.

Spans are written when a step is recorded, with the step's own start and end time, so the
engine's hot path is untouched when no SDK is installed (the API's no-op tracer).
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Mapping
from typing import Any

from cascade.types import CascadeResult, StepRecord

__all__ = ["Telemetry"]

try:  # the [otel] extra
    from opentelemetry import metrics, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - exercised by installs without the extra
    trace = None  # type: ignore[assignment]
    metrics = None  # type: ignore[assignment]

# gen_ai.provider.name values of the semantic conventions, by provider type.
_PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic"}
# The semantic conventions' advised buckets for the two GenAI client histograms.
# How often the engine asks again whether an OpenTelemetry SDK has been installed.
RECHECK_S = 1.0

_TOKEN_BUCKETS = [
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
]
_DURATION_BUCKETS = [
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
]
_NS = 1_000_000_000


def _version() -> str:
    # From the installed distribution, not ``cascade.__version__``: the core never imports the
    # package facade above it (which imports the engine, which imports this module).
    try:
        return importlib.metadata.version("cascade-ladder")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Telemetry:
    """Turns the records of a run into spans and metric points.

    Args:
        provider_types: ``providers:`` key -> its ``type``, for ``gen_ai.provider.name``.
        model_names: ``models:`` key -> the provider's model name.
    """

    def __init__(self, provider_types: Mapping[str, str], model_names: Mapping[str, str]):
        self.enabled = trace is not None
        self._tracing = False
        self._metering = False
        self._tracing_next = self._metering_next = 0.0
        self._providers = dict(provider_types)
        self._names = dict(model_names)
        if not self.enabled:
            return
        self._tracer = trace.get_tracer("cascade", _version())
        meter = metrics.get_meter("cascade", _version())
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )

    def tracing(self) -> bool:
        """An SDK tracer provider is installed (the API's default proxy records nothing).

        Checked per run (at most once a second while there is none), so a provider installed
        after the engine was built is used from the next run a second later at most; until
        then the engine's hot path pays for no no-op spans (about 13% of replay throughput).
        """
        # A global provider is set once and for all: a True answer never changes. A False one
        # is asked again at most every RECHECK_S (the API reads the environment each time).
        if not self._tracing and time.monotonic() >= self._tracing_next:
            self._tracing = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
            self._tracing_next = time.monotonic() + RECHECK_S
        return self._tracing

    def metering(self) -> bool:
        if not self._metering and time.monotonic() >= self._metering_next:
            self._metering = type(metrics.get_meter_provider()).__name__ != "_ProxyMeterProvider"
            self._metering_next = time.monotonic() + RECHECK_S
        return self._metering

    def _provider_name(self, provider_key: str) -> str:
        kind = self._providers.get(provider_key, provider_key)
        return _PROVIDER_NAMES.get(kind, kind)

    def start_run(self, task: str, started_ns: int, key_name: str | None = None) -> Any:
        """The run's span, begun at ``started_ns`` in the caller's current context;
        ``key_name``: the named gateway key that made the run (``cascade.key.name``)."""
        if not self.enabled or not self.tracing():
            return None
        span = self._tracer.start_span(
            f"cascade {task}", kind=SpanKind.INTERNAL, start_time=started_ns
        )
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.request.model", task)
        span.set_attribute("cascade.task", task)
        if key_name is not None:
            span.set_attribute("cascade.key.name", key_name)
        return span

    def step(
        self, run_span: Any, step: StepRecord, error_type: str | None, *, metered: bool
    ) -> None:
        """A child span of the run for one step, and metric points when a model was called."""
        if not self.enabled:
            return
        # A skip, a cache hit, or a shadow call its budget gate refused called no model: a
        # span says so, but no duration or token points (they describe provider calls).
        called = step.decision not in ("skip", "cache") and step.attempts > 0
        name = self._names.get(step.model, step.model)
        provider = self._provider_name(step.provider)
        base = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": name,
        }
        if run_span is not None:
            self._step_span(run_span, step, name, base, error_type, called)
        if not called or not metered:
            return
        points = {**base, **({"gen_ai.response.model": name} if error_type is None else {})}
        self._duration.record(
            step.latency_ms / 1000,
            {**points, **({"error.type": error_type} if error_type else {})},
        )
        if step.attempts and (step.input_tokens or step.output_tokens):
            self._tokens.record(step.input_tokens, {**points, "gen_ai.token.type": "input"})
            self._tokens.record(step.output_tokens, {**points, "gen_ai.token.type": "output"})

    def _step_span(
        self,
        run_span: Any,
        step: StepRecord,
        name: str,
        base: Mapping[str, Any],
        error_type: str | None,
        called: bool,
    ) -> None:
        end_ns = int(step.ts * _NS) if step.ts else time.time_ns()
        start_ns = end_ns - int(step.latency_ms * 1_000_000)
        context = trace.set_span_in_context(run_span)
        span = self._tracer.start_span(
            f"chat {name}", context=context, kind=SpanKind.CLIENT, start_time=start_ns
        )
        attributes: dict[str, Any] = {
            **base,
            "cascade.run_id": step.run_id,
            "cascade.task": step.task,
            "cascade.step": step.step,
            "cascade.model": step.model,
            "cascade.decision": step.decision,
            "cascade.attempts": step.attempts,
            "cascade.cost_usd": step.cost_usd,
            "cascade.usage_estimated": step.usage_estimated,
            "cascade.verdicts": [
                f"{v.evaluator}={'pass' if v.passed else 'fail'}" for v in step.verdicts
            ],
        }
        if called:
            attributes["gen_ai.usage.input_tokens"] = step.input_tokens
            attributes["gen_ai.usage.output_tokens"] = step.output_tokens
        if error_type is None and step.text is not None:
            attributes["gen_ai.response.model"] = name
        if error_type is not None:
            attributes["error.type"] = error_type
        span.set_attributes(attributes)
        if error_type is not None:
            span.set_status(Status(StatusCode.ERROR, step.error or error_type))
        span.end(end_time=end_ns)

    def end_run(
        self, run_span: Any, result: CascadeResult, status: str, error_type: str | None
    ) -> None:
        if not self.enabled or run_span is None:
            return
        attributes: dict[str, Any] = {
            "cascade.run_id": result.run_id,
            "cascade.status": status,
            "cascade.accepted": result.accepted,
            "cascade.cost_usd": result.cost_usd,
            "cascade.steps": len(result.steps),
            "gen_ai.usage.input_tokens": result.input_tokens,
            "gen_ai.usage.output_tokens": result.output_tokens,
        }
        if result.model:
            attributes["cascade.model"] = result.model
            attributes["gen_ai.response.model"] = self._names.get(result.model, result.model)
            answering = next((s for s in result.steps if s.model == result.model), None)
            if answering is not None:
                attributes["gen_ai.provider.name"] = self._provider_name(answering.provider)
        if result.task_probability is not None:  # task "auto" chose result.task
            attributes["cascade.task_probability"] = result.task_probability
        if result.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = [result.finish_reason]
        run_span.set_attributes(attributes)
        if error_type is not None:  # raised to the caller; a return_last answer is not
            run_span.set_attribute("error.type", error_type)
            run_span.set_status(Status(StatusCode.ERROR, status))
        run_span.end()
