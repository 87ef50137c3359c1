"""``cascade report --html``: filters, and one clear line for every refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade.cli import main
from cascade.testing import MockLLMServer
from tests.report.seeded import seed

pytestmark = pytest.mark.usefixtures("keys")


def test_html_filters_and_refusals(server: MockLLMServer, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    ledger = tmp_path / "ledger.sqlite"
    seed(server, ledger).close()
    capsys.readouterr()
    page = tmp_path / "code.html"
    assert main(["report", "--ledger", str(ledger), "--html", str(page), "--task", "code"]) == 0
    assert f"report: wrote {page} (2.0 MB; from the start, until now, task code)" in (
        capsys.readouterr().out)
    text = page.read_text()
    assert 'data-task="code"' in text
    assert 'data-task="faq"' not in text
    # a period holding none of the runs: a page all the same, each panel saying so
    empty = tmp_path / "empty.html"
    assert main(["report", "--ledger", str(ledger), "--html", str(empty), "--since",
                 "2001-01-01", "--until", "2001-01-02"]) == 0
    assert empty.read_text().count("no data in this period") == 11
    # refusals: one line, no traceback
    assert main(["report", "--ledger", str(ledger), "--since", "2026-01-01"]) == 2
    assert capsys.readouterr().err == (
        "cascade report: --since select what --html FILE shows; add --html FILE\n")
    assert main(["report", "--ledger", str(ledger), "--html", str(page), "--since", "May"]) != 0
    assert "--since" in capsys.readouterr().err
    assert main(["report", "--ledger", str(ledger), "--html",
                 str(tmp_path / "none" / "x.html")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cascade report: cannot write ")
    assert err.count("\n") == 1
