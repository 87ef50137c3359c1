"""Prometheus metrics of the gateway, in a registry of their own per app.

A registry per app (not prometheus-client's global default) lets several gateways, or several
tests, live in one process without counting into each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from cascade.types import CascadeResult, StepRecord

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics"]

# LLM calls take from tens of milliseconds to minutes; prometheus-client's default buckets
# stop at 10 s.
_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# The gateway's own time per run is well under a millisecond when all is well.
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5)
# Steps that pass a rung over, counted as escalations the same way ``cascade report`` does.
_ESCALATING = frozenset({"escalate", "error"})


# The drift gauges: key in ``drift_report``'s rows -> (metric name, help).
_DRIFT_GAUGES = {
    "acceptance_rate": ("cascade_drift_acceptance_rate", "Share of the rung's answers accepted."),
    "accepted_score": ("cascade_drift_accepted_score",
                       "Mean feedback or shadow score of accepted answers."),
    "evidence": ("cascade_drift_evidence", "Scores behind cascade_drift_accepted_score."),
    "cost_per_run": ("cascade_drift_cost_per_run_usd", "Mean cost of the runs the rung answered."),
    "shadow_cost_usd": ("cascade_drift_shadow_cost_usd", "Cost of the rung's shadow calls."),
    "flagged": ("cascade_drift_flagged",
                "1 when the week's accepted quality is below the target."),
}

class GatewayMetrics:
    """The counters and the latency histogram behind ``GET /metrics``.

    Labels: ``task`` is the engine task that ran (a direct model call runs the one-rung task
    ``__model__<key>``), ``model`` and ``rung`` are ``models:`` keys, ``status`` is one of
    ``accepted``, ``not_accepted``, ``budget_exceeded``, ``exhausted``, ``no_answer``,
    ``error``, ``task_not_allowed``, and ``class`` is the exception class or the gateway's
    refusal (``InvalidRequest``, ``Unauthorized``, ``UnknownModel``).

    With ``key_labels``, ``cascade_requests_total`` and ``cascade_cost_usd_total`` also carry
    ``key``: the named gateway key's name (``""`` for unnamed keys). The gateway turns it on
    only below ``MAX_KEY_LABELS`` keys, so the series stay bounded.
    """

    def __init__(self, key_labels: bool = False) -> None:
        self.key_labels = key_labels
        keyed = ["key"] if key_labels else []
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cascade_requests",
            "Cascade runs served, by outcome.",
            ["task", "status", *keyed],
            registry=self.registry,
        )
        self.escalations = Counter(
            "cascade_escalations",
            "Rungs passed over: answer rejected or call failed.",
            ["task", "rung"],
            registry=self.registry,
        )
        self.cost = Counter(
            "cascade_cost_usd",
            "Spend in USD, every step included.",
            ["task", "model", *keyed],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cascade_request_latency_seconds",
            "Wall time of a cascade run.",
            ["task"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.overhead = Histogram(
            "cascade_gateway_overhead_seconds",
            "Wall time of a cascade run minus the time its provider calls took (retries "
            "included): the engine, evaluators, ledger and metrics. Runs with hedged rungs "
            "whose calls overlapped count 0 at the least.",
            ["task"],
            buckets=_OVERHEAD_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "cascade_errors", "Failed requests, by error class.", ["class"], registry=self.registry
        )
        self.misconfigured = Counter(
            "cascade_misconfigured",
            "Rungs failed over because the config is wrong: the provider does not know the "
            "model (404) or refused the API key (401/403).",
            ["model"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "cascade_feedback", "Feedback rows stored, by source.", ["source"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "cascade_rate_limited",
            "Requests refused with 429 by a rate limit, by the limit that refused: key_rpm, "
            "key_tpm, task_rpm, task_tpm.",
            ["limit"],
            registry=self.registry,
        )
        self.limiter_errors = Counter(
            "cascade_rate_limiter_errors",
            "Rate limiter calls that failed (Redis down or slow), by what followed: refused "
            "(on_error closed, 503), served (on_error open, unlimited), settle (a token "
            "correction lost).",
            ["outcome"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "cascade_config_reloads",
            "Config reloads (SIGHUP, POST /admin/reload), by outcome: reloaded or refused.",
            ["outcome"],
            registry=self.registry,
        )
        # The savings against always-top: saved = always_top - priced_cost (docs/dashboard.md).
        self.always_top = Counter(
            "cascade_always_top_cost_usd",
            "What the runs would have cost at their task's top rung alone (the top rung's bill "
            "where it ran, else an estimate; runs with nothing to price are left out).",
            ["task"],
            registry=self.registry,
        )
        self.priced_cost = Counter(
            "cascade_priced_cost_usd",
            "Spend of the runs counted in cascade_always_top_cost_usd (every step included).",
            ["task"],
            registry=self.registry,
        )
        # Spend against each period budget (global, per task), refreshed with the drift gauges.
        self.budget_spent = Gauge(
            "cascade_budget_spent_usd",
            "Spend in the budget's current period (reservations of calls in flight included).",
            ["scope", "period"],
            registry=self.registry,
        )
        self.budget_limit = Gauge(
            "cascade_budget_limit_usd",
            "The budget's limit for its period.",
            ["scope", "period"],
            registry=self.registry,
        )
        # The numbers of `cascade report --drift`, per task, rung and ISO week, refreshed from
        # the ledger's rollup in the background (cascade.gateway.drift), never by a scrape.
        self.drift_gauges = {
            key: Gauge(name, help_text, ["task", "rung", "week"], registry=self.registry)
            for key, (name, help_text) in _DRIFT_GAUGES.items()
        }

    def run(
        self,
        task: str,
        status: str,
        seconds: float,
        steps: Iterable[StepRecord] = (),
        key: str = "",
    ) -> None:
        """Count one finished run (with whatever steps it took, even if it then failed);
        ``key``: the named key's name, a label only with ``key_labels``."""
        keyed = (key,) if self.key_labels else ()
        self.requests.labels(task, status, *keyed).inc()
        self.latency.labels(task).observe(seconds)
        steps = tuple(steps)
        calls = sum(step.latency_ms for step in steps) / 1000
        self.overhead.labels(task).observe(max(seconds - calls, 0.0))
        for step in steps:
            self.cost.labels(task, step.model, *keyed).inc(step.cost_usd)
            if step.decision in _ESCALATING:
                self.escalations.labels(task, step.model).inc()

    def result(
        self,
        result: CascadeResult,
        seconds: float,
        key: str = "",
        top: tuple[float, bool] | None = None,
    ) -> None:
        """Count a run that returned; ``top``: what always-top would have cost it
        (``cascade.engine.savings.always_top``; None when there is nothing to price)."""
        self.run(
            result.task, "accepted" if result.accepted else "not_accepted", seconds,
            result.steps, key,
        )
        if top is not None:
            self.always_top.labels(result.task).inc(top[0])
            self.priced_cost.labels(result.task).inc(result.cost_usd)
        for warning in result.warnings:
            self.misconfigured.labels(warning.model).inc()

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def drift(self, rows: Iterable[Any]) -> None:
        """Replace the drift gauges with these ``cascade.ledger.drift.DriftRow``s."""
        for gauge in self.drift_gauges.values():
            gauge.clear()
        for row in rows:
            labels = (row.task, row.rung, row.week)
            for name, gauge in self.drift_gauges.items():
                value = getattr(row, name)
                if value is not None:
                    gauge.labels(*labels).set(float(value))

    def budgets(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the budget gauges with ``Accounts.status()`` rows."""
        self.budget_spent.clear()
        self.budget_limit.clear()
        for row in rows:
            labels = (row["scope"], row["period"])
            self.budget_spent.labels(*labels).set(float(row["spent_usd"]))
            self.budget_limit.labels(*labels).set(float(row["limit_usd"]))

    def count_breakers(self, open_for: Callable[[], Mapping[str, float | None]]) -> None:
        """Expose ``cascade_breaker_open{provider}`` (1 while the provider's circuit breaker is
        open) from the engine's breakers, read at each scrape: in memory, no ledger read."""
        self.registry.register(_Breakers(open_for))

    def count_shadow_skips(self, skipped: Callable[[], Mapping[str, int]]) -> None:
        """Expose ``cascade_shadow_skipped_total{task}`` from the engine's own count
        (``Shadows.skipped``), read at each scrape."""
        self.registry.register(_ShadowSkips(skipped))

    def count_cache_errors(self, errors: Callable[[], int]) -> None:
        """Expose ``cascade_cache_errors_total`` from the response cache's own count of failed
        lookups and puts (each served as a miss), read at each scrape."""
        self.registry.register(_Read("cascade_cache_errors", _CACHE_ERRORS, errors))

    def render(self) -> bytes:
        return generate_latest(self.registry)


_CACHE_ERRORS = (
    "Response cache lookups and puts that failed (its Redis down, slow or unreadable); each "
    "was a miss, never an error."
)


class _Read(Collector):
    """A counter kept elsewhere (an engine part that knows no Prometheus), read at scrape."""

    def __init__(self, name: str, help_text: str, read: Callable[[], int]):
        self._name, self._help, self._read = name, help_text, read

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._help)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._help, value=self._read())


class _ShadowSkips(Collector):
    """Shadow evaluations the engine skipped because ``shadow_max_in_flight`` were running."""

    def __init__(self, skipped: Callable[[], Mapping[str, int]]):
        self._skipped = skipped

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for task, count in sorted(self._skipped().items()):
            family.add_metric([task], count)
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "cascade_shadow_skipped",
            "Shadow evaluations skipped, not queued: shadow_max_in_flight were already running.",
            labels=["task"],
        )


class _Breakers(Collector):
    """Circuit breaker state per provider: 1 while open (calls skipped), else 0."""

    def __init__(self, open_for: Callable[[], Mapping[str, float | None]]):
        self._open_for = open_for

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for provider, left in sorted(self._open_for().items()):
            family.add_metric([provider], 0.0 if left is None else 1.0)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "cascade_breaker_open",
            "1 while the provider's circuit breaker is open (its rungs are skipped), else 0.",
            labels=["provider"],
        )
