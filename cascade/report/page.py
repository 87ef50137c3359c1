"""One self-contained HTML page of a ledger: ``cascade report --html`` writes it, the gateway's
``GET /dashboard`` serves it.

plotly.js is inlined once (compressed, see ``_DRAW``; no CDN: the file opens offline). The
headline figures carry their exact values in ``data-value`` attributes, rounded as ``cascade
report --json`` rounds them, so a reader (or a test) can check one against the other.
"""

from __future__ import annotations

import base64
import functools
import gzip
import html
from datetime import datetime, timezone
from typing import Any

from cascade.formatting import install_hint, round_floats, usd
from cascade.ledger import Ledger
from cascade.report.period import Period
from cascade.report.queries import Aggregates, aggregate
from cascade.report.savings import shadowed

__all__ = ["PlotlyMissing", "render", "report_page", "require_plotly"]


class PlotlyMissing(ImportError):
    """plotly (the ``[report]`` extra) is not installed; the message says how to install it."""


def report_page(
    ledger: Ledger,
    period: Period,
    *,
    refresh_s: float | None = None,
    where: str | None = None,
    **extra: Any,
) -> str:
    """The page of ``period`` (``extra``: budgets, targets and rungs, see ``aggregate``;
    ``where``: what to call the ledger, its file or database by default).

    Raises:
        PlotlyMissing: plotly is not installed.
    """
    require_plotly()
    agg = aggregate(ledger, period, **extra)
    return render(
        agg, where=where or ledger.where, shadow=shadowed(ledger, period), refresh_s=refresh_s
    )


def require_plotly() -> None:
    """Raises PlotlyMissing (one line saying how to install it) without plotly."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise PlotlyMissing(
            f"the HTML report needs plotly (the [report] extra): {install_hint('report')}"
        ) from None


def _value(value: Any) -> str:
    """A value as ``--json`` prints it (``round_floats``), for a data attribute."""
    return html.escape("null" if value is None else repr(round_floats(value)))


def _cell(metric: str, task: str, value: Any, text: str) -> str:
    return (
        f'<td data-metric="{metric}" data-task="{html.escape(task)}"'
        f' data-value="{_value(value)}">{html.escape(text)}</td>'
    )


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _headline(head: dict[str, Any]) -> str:
    rows = []
    for name, t in [
        ("(all)", {**head, "cost_usd": head["total_cost_usd"], "escalation_rate": None}),
        *head["tasks"].items(),
    ]:
        escalation = t["escalation_rate"]
        rows.append(
            f"<tr><th>{html.escape(name)}</th><td>{t['runs']}</td>"
            + _cell("cost_usd", name, t["cost_usd"], usd(t["cost_usd"]))
            + _cell("saved_usd", name, t["saved_usd"], usd(t["saved_usd"]))
            + _cell("saved_share", name, t["saved_share"], _share(t["saved_share"]))
            + (
                _cell("escalation_rate", name, escalation, _share(escalation))
                if escalation is not None
                else "<td></td>"
            )
            + "</tr>"
        )
    return (
        '<table id="headline"><tr><th>task</th><th>runs</th><th>spend</th>'
        "<th>saved vs always-top</th><th>saved share</th><th>escalation</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _shadowed(shadow: dict[str, dict[str, Any]]) -> str:
    if not shadow:
        return (
            "<p>No shadow calls of a top rung in this period: the savings above are "
            "estimates only (see docs/dashboard.md).</p>"
        )
    rows = "".join(
        f"<tr><th>{html.escape(task)}</th><td>{s['runs']}</td>"
        f"<td>{html.escape(usd(s['saved_usd']))}</td>"
        f"<td>{html.escape(usd(s['estimated_saved_usd']))}</td></tr>"
        for task, s in sorted(shadow.items())
    )
    return (
        "<p>On the runs a shadow call of the top rung measured, the exact saving beside "
        "the estimate recorded for them:</p><table id='shadowed'><tr><th>task</th>"
        "<th>shadowed runs</th><th>saved (exact)</th><th>saved (estimate)</th></tr>"
        f"{rows}</table>"
    )


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin-bottom:.2em} .meta{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.5em 0 1em}
th,td{border:1px solid #ddd;padding:.3em .7em;text-align:right} th{background:#f0f0f0}
tr th:first-child{text-align:left}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}
.panel{background:#fff;border:1px solid #e4e4e4;border-radius:6px;padding:4px}
"""


def render(
    agg: Aggregates,
    *,
    where: str,
    shadow: dict[str, dict[str, Any]],
    refresh_s: float | None = None,
    plotly_src: str | None = None,
) -> str:
    """The page's HTML (see the module). ``plotly_src``: load plotly.js from this URL (the live
    dashboard's, which a browser keeps) instead of inlining it (a file that opens offline)."""
    from cascade.report.figures import figures

    panels, specs = [], []
    for name, fig in figures(agg):
        panels.append(
            f'<div class="panel" data-chart="{name}"><div id="chart-{name}"'
            ' class="chart"></div></div>'
        )
        specs.append(f'["chart-{name}", {fig.to_json()}]')
    refresh = f'<meta http-equiv="refresh" content="{refresh_s:g}">' if refresh_s else ""
    made = datetime.now(tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    bucket = f"{agg.bucket_s // 60} min" if agg.bucket_s < 86400 else f"{agg.bucket_s // 86400} day"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{refresh}'
        '<link rel="icon" href="data:,">'  # no favicon request (a 404 in the console)
        "<title>cascade-ladder: spend, savings, escalation, latency</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>cascade-ladder: what the cascade spent and saved</h1>"
        f'<p class="meta">{html.escape(where)}; {html.escape(agg.period.describe())}; '
        f"charts in buckets of {bucket}; made {made}"
        + (f"; refreshes every {refresh_s:g} s" if refresh_s else "")
        + "</p>"
        + _headline(agg.headline)
        + _shadowed(shadow)
        + f'<div class="grid">{"".join(panels)}</div>'
        + (
            f'<script src="{html.escape(plotly_src)}"></script>'
            if plotly_src
            else f'<script id="plotly-gz" type="application/gzip">{plotly_bundle()}</script>'
        )
        + f"<script>{_DRAW.replace('SPECS', '[' + ','.join(specs) + ']')}</script>"
        + "</body></html>"
    )


# plotly.js (4.8 MB, nearly the whole 5 MB a page may weigh) is inlined gzipped and base64'd
# (1.9 MB) and unpacked by the browser's own DecompressionStream: still one file, no CDN, and
# it opens offline. (The live dashboard loads it from GET /dashboard/plotly.js instead, which a
# browser keeps between refreshes.) Then each chart is drawn from its figure's JSON.
_DRAW = """
(async () => {
  const packed = document.getElementById("plotly-gz");
  if (packed) {
    const bytes = Uint8Array.from(atob(packed.textContent.trim()), (c) => c.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    const script = document.createElement("script");
    script.textContent = await new Response(stream).text();
    document.head.appendChild(script);
  }
  const drawn = [];
  for (const [id, fig] of SPECS) {
    drawn.push(Plotly.newPlot(id, fig.data, fig.layout, {displaylogo: false, responsive: true}));
  }
  await Promise.all(drawn);
  document.body.dataset.charts = "drawn";
})();
"""


@functools.cache
def plotly_bundle() -> str:
    """plotly.js as shipped with the plotly package, gzipped and base64'd (made once)."""
    from plotly.offline import get_plotlyjs

    return base64.b64encode(gzip.compress(get_plotlyjs().encode(), mtime=0)).decode()
