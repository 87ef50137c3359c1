"""The HTML report and ``GET /dashboard`` in a real browser (Debian's chromium, driven by
Playwright; never Playwright's own browser download).

The ledger is seeded by real engine runs (``tests/report/seeded.py``). Each page must draw
every chart (a plotly SVG with content, one per panel) without a console error, and show
headline figures equal to ``cascade report --json``'s, exactly.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import yaml

from cascade.cli.entry import main
from cascade.formatting import usd
from cascade.gateway.app import create_app, running
from cascade.report.figures import FIGURES
from cascade.testing import MockLLMServer
from tests.report.seeded import seed, seeded_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ADMIN, CLIENT = "admin-SECRET-dashboard-key", "client-SECRET-dashboard-key"

pytestmark = pytest.mark.usefixtures("keys")


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("chromium not installed: apt-get install chromium (.ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    with sync_api.sync_playwright() as play:
        chromium = play.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def report_json(ledger: Path) -> dict[str, Any]:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["report", "--ledger", str(ledger), "--json"]) == 0
    return json.loads(out.getvalue())


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def check_page(page: Any, report: dict[str, Any], shot: Path) -> None:
    """Every chart drawn, no console error, the headline equal to ``report``."""
    page.wait_for_function("document.body.dataset.charts === 'drawn'", timeout=60_000)
    for name, _ in FIGURES:
        drawn = page.evaluate(
            "(id) => { const el = document.getElementById(id);"
            " const svg = el && el.querySelector('svg.main-svg');"
            " return svg ? {children: svg.querySelectorAll('*').length,"
            " width: svg.getBoundingClientRect().width} : null; }", f"chart-{name}")
        assert drawn is not None, name
        assert drawn["children"] > 10, (name, drawn)
        assert drawn["width"] > 100, (name, drawn)
    # the panels with data in this ledger drew traces, not the "no data" note
    for name in ("spend-task", "spend-model", "saved", "funnel", "latency-model",
                 "latency-task", "model-use", "drift", "feedback", "budgets"):
        traces = page.evaluate("(id) => document.getElementById(id).data.length",
                               f"chart-{name}")
        assert traces > 0, name

    def cell(metric: str, task: str) -> tuple[str, str]:
        loc = page.locator(f'#headline td[data-metric="{metric}"][data-task="{task}"]')
        return loc.get_attribute("data-value"), loc.inner_text()

    assert cell("cost_usd", "(all)") == (repr(report["total_cost_usd"]),
                                         usd(report["total_cost_usd"]))
    assert cell("saved_usd", "(all)") == (repr(report["saved_usd"]), usd(report["saved_usd"]))
    for task, t in report["tasks"].items():
        assert cell("cost_usd", task) == (repr(t["cost_usd"]), usd(t["cost_usd"])), task
        assert cell("saved_usd", task) == (repr(t["saved_usd"]), usd(t["saved_usd"])), task
        assert cell("saved_share", task) == (repr(t["saved_share"]), _share(t["saved_share"]))
        assert cell("escalation_rate", task) == (repr(t["escalation_rate"]),
                                                 _share(t["escalation_rate"])), task
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def watch(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def test_html_report_and_dashboard_in_chromium(
    browser: Any, server: MockLLMServer, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.sqlite"
    engine = seed(server, ledger)
    try:
        report = report_json(ledger)
        assert report["tasks"]["faq"]["shadowed"]["runs"] > 0  # the seed has all it needs
        assert report["tasks"]["faq"]["escalation_rate"] > 0
        html = tmp_path / "report.html"
        config = tmp_path / "cascade.yaml"  # budgets, quality targets and ladders
        config.write_text(yaml.safe_dump(seeded_config(server, ledger)))
        assert main(["report", "--config", str(config), "--html", str(html)]) == 0
        assert html.stat().st_size < 5_000_000
        assert "<script src" not in html.read_text()  # nothing to fetch: opens offline

        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = watch(page)
        page.route("http*://**", lambda route: route.abort())  # offline: nothing fetched
        page.goto(html.as_uri())
        check_page(page, report, tmp_path / "report.png")
        assert errors == []
        page.close()

        app = create_app(engine, api_keys=[CLIENT], admin_keys=[ADMIN])
        with running(app) as url:
            for auth in ({}, {"authorization": f"Bearer {CLIENT}"},
                         {"authorization": "Basic " + base64.b64encode(
                             f"me:{CLIENT}".encode()).decode()}):
                answer = httpx.get(f"{url}/dashboard", headers=auth)
                assert answer.status_code == 401, auth.keys()
                assert answer.headers["www-authenticate"].startswith("Basic")
                assert CLIENT not in answer.text
            # a browser's password prompt: HTTP Basic auth with the admin key as password
            context = browser.new_context(http_credentials={"username": "admin",
                                                            "password": ADMIN},
                                          viewport={"width": 1280, "height": 900})
            page = context.new_page()
            errors = watch(page)
            answer = page.goto(f"{url}/dashboard?refresh=60")
            assert answer is not None
            assert answer.status == 200
            assert page.locator('meta[http-equiv="refresh"]').get_attribute("content") == "60"
            check_page(page, report, tmp_path / "dashboard.png")
            assert errors == []
            context.close()
    finally:
        engine.close()
