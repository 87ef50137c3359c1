"""The page's charts, as plotly figures over ``Aggregates`` (already aggregated rows).

Each function returns one figure; one with nothing to show says so inside an empty chart, so
every panel renders (and a test can tell a broken chart from an empty period).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

import plotly.graph_objects as go

from cascade.report.queries import QUANTILES, Aggregates

__all__ = ["FIGURES", "figures"]

_LAYOUT: dict[str, Any] = {
    "template": "plotly_white",
    "height": 340,
    "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
    "legend": {"orientation": "h", "y": -0.2},
    "font": {"size": 12},
}


_DATES = {"type": "date"}


def _time(bucket: int) -> datetime:
    return datetime.fromtimestamp(bucket, tz=timezone.utc)


def _figure(title: str, traces: list[Any], **layout: Any) -> go.Figure:
    fig = go.Figure(traces)
    fig.update_layout(title={"text": title, "x": 0.01}, **{**_LAYOUT, **layout})
    if not traces:
        fig.add_annotation(
            text="no data in this period",
            showarrow=False,
            x=0.5,
            y=0.5,
            xref="paper",
            yref="paper",
            font={"size": 16, "color": "#888"},
        )
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    return fig


def _stacked(
    rows: list[dict[str, Any]], by: str, value: str, bucket_s: int, scale: float = 1.0
) -> list[Any]:
    """A bar per time bucket (drawn across it, so one bucket is not a sliver) per ``by``."""
    series: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        series[str(row[by])][int(row["bucket"])] += float(row[value] or 0) * scale
    return [
        go.Bar(
            name=name,
            x=[_time(b + bucket_s / 2) for b in sorted(points)],
            y=[points[b] for b in sorted(points)],
            width=bucket_s * 1000 * 0.9,  # ms, on a date axis
        )
        for name, points in sorted(series.items())
    ]


def spend(agg: Aggregates, by: str) -> go.Figure:
    """The steps' cost per time bucket, stacked by ``by`` (``task`` or ``model``)."""
    return _figure(
        f"Spend over time by {by} (USD)",
        _stacked(agg.spend, by, "cost_nusd", agg.bucket_s, 1e-9),
        xaxis=_DATES,
        barmode="stack",
    )


def saved(agg: Aggregates) -> go.Figure:
    """Saved against always-top per bucket (bars, per task) and in all so far (a line)."""
    rows = [
        {**r, "saved_nusd": int(r["top_nusd"] or 0) - int(r["cost_nusd"] or 0)} for r in agg.saved
    ]
    traces = _stacked(rows, "task", "saved_nusd", agg.bucket_s, 1e-9)
    if rows:
        per_bucket: dict[int, int] = defaultdict(int)
        for row in rows:
            per_bucket[int(row["bucket"])] += row["saved_nusd"]
        total, line = 0, []
        for bucket in sorted(per_bucket):
            total += per_bucket[bucket]
            line.append(total / 1e9)
        traces.append(
            go.Scatter(
                name="saved so far",
                x=[_time(b + agg.bucket_s / 2) for b in sorted(per_bucket)],
                y=line,
                mode="lines+markers",
                yaxis="y2",
            )
        )
    return _figure(
        "Saved against always-top (USD; estimate, see docs/dashboard.md)",
        traces,
        xaxis=_DATES,
        barmode="relative",
        yaxis2={"overlaying": "y", "side": "right", "title": "so far"},
    )


def funnel(agg: Aggregates) -> go.Figure:
    """Per task, the runs that reached each rung and how many were accepted there."""
    traces = []
    for task in sorted({r["task"] for r in agg.funnel}):
        rows = [r for r in agg.funnel if r["task"] == task]
        traces.append(
            go.Funnel(
                name=task,
                y=[f"{task}: {r['model']}" for r in rows],
                x=[int(r["reached"]) for r in rows],
                text=[
                    f"{int(r['reached'])} reached, {int(r['accepted'])} accepted, "
                    f"{int(r['escalated'])} passed on"
                    for r in rows
                ],
                textinfo="text",
            )
        )
    return _figure("Escalation and acceptance per rung (runs reaching each rung)", traces)


def latency(agg: Aggregates, by: str) -> go.Figure:
    rows = [r for r in agg.latency if r["by"] == by]
    traces = (
        [
            go.Bar(name=f"p{q}", x=[r["name"] for r in rows], y=[r[f"p{q}"] for r in rows])
            for q in QUANTILES
        ]
        if rows
        else []
    )
    what = "per model (each call)" if by == "model" else "per task (each run)"
    return _figure(f"Latency {what}, ms", traces, barmode="group")


def model_use(agg: Aggregates) -> go.Figure:
    traces = (
        [
            go.Pie(
                labels=[r["model"] for r in agg.models],
                values=[int(r["runs"]) for r in agg.models],
                hole=0.4,
                textinfo="label+percent",
            )
        ]
        if agg.models
        else []
    )
    return _figure("Which model answered the runs", traces)


def errors(agg: Aggregates) -> go.Figure:
    traces = []
    for kind in ("errors", "lost"):
        traces += [
            go.Bar(name=f"{t.name} {kind}", x=t.x, y=t.y, width=t.width)
            for t in _stacked(agg.errors, "model", kind, agg.bucket_s)
            if any(t.y)
        ]
    return _figure(
        "Errors and lost steps over time (per model)", traces, xaxis=_DATES, barmode="stack"
    )


def drift(agg: Aggregates) -> go.Figure:
    """Accepted quality per rung and week (feedback), against each task's target."""
    traces: list[Any] = []
    series: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in agg.drift:
        if row["accepted_score"] is not None:
            series[row["task"], row["rung"]].append(row)
    for (task, rung), rows in sorted(series.items()):
        traces.append(
            go.Scatter(
                name=f"{task}: {rung}",
                x=[r["week"] for r in rows],
                y=[r["accepted_score"] for r in rows],
                mode="lines+markers",
            )
        )
    targets = {r["task"]: r["target"] for r in agg.drift if r["target"] is not None}
    weeks = sorted({r["week"] for r in agg.drift})
    for task, target in sorted(targets.items()):
        traces.append(
            go.Scatter(
                name=f"{task} target",
                x=weeks,
                y=[target] * len(weeks),
                mode="lines",
                line={"dash": "dash"},
            )
        )
    return _figure("Drift: accepted quality per rung per week", traces, yaxis={"range": [0, 1.05]})


def feedback(agg: Aggregates) -> go.Figure:
    weeks = sorted({r["week"] for r in agg.drift})
    traces = []
    for kind, label in (("evidence_user", "user scores"), ("evidence_shadow", "shadow labels")):
        counts = {w: sum(r[kind] for r in agg.drift if r["week"] == w) for w in weeks}
        if any(counts.values()):
            traces.append(go.Bar(name=label, x=weeks, y=[counts[w] for w in weeks]))
    return _figure("Feedback per week (scores of accepted answers)", traces, barmode="stack")


def budgets(agg: Aggregates) -> go.Figure:
    rows = agg.budgets
    names = [f"{b['period']} {'global' if b['scope'] == 'global' else b['scope']}" for b in rows]
    traces = (
        [
            go.Bar(
                name="used",
                orientation="h",
                y=names,
                x=[
                    100 * b["spent_usd"] / b["limit_usd"] if b["limit_usd"] else 100.0 for b in rows
                ],
                text=[f"${b['spent_usd']:.4g} of ${b['limit_usd']:.4g}" for b in rows],
            )
        ]
        if rows
        else []
    )
    fig = _figure("Budgets used against their limits (%)", traces)
    if rows:
        fig.add_vline(x=100, line_dash="dash", line_color="red")
    return fig


# (id, title of the panel's section, the figure): the page's order.
FIGURES: tuple[tuple[str, Any], ...] = (
    ("spend-task", lambda agg: spend(agg, "task")),
    ("spend-model", lambda agg: spend(agg, "model")),
    ("saved", saved),
    ("funnel", funnel),
    ("latency-model", lambda agg: latency(agg, "model")),
    ("latency-task", lambda agg: latency(agg, "task")),
    ("model-use", model_use),
    ("errors", errors),
    ("drift", drift),
    ("feedback", feedback),
    ("budgets", budgets),
)


def figures(agg: Aggregates) -> list[tuple[str, go.Figure]]:
    return [(name, build(agg)) for name, build in FIGURES]
