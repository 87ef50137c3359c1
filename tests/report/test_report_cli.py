"""``cascade report --html``: filters, and one clear line for every refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade.cli import main
from cascade.ledger import Ledger
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


_RANGE = "is outside 1970-01-01 .. 9998-12-31 UTC"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "9999-12-31T23:59:59-05:00"],
         f"error: --since: '9999-12-31T23:59:59-05:00' {_RANGE}\n"),
        (["--until", "0001-01-01T00:00:00+05:00"],
         f"error: --until: '0001-01-01T00:00:00+05:00' {_RANGE}\n"),
        (["--since", "1969-12-31"], f"error: --since: '1969-12-31' {_RANGE}\n"),
        (["--since", "2026-02-01", "--until", "2026-01-01"],
         "cascade report: --since 2026-02-01 is not before --until 2026-01-01: the period is "
         "empty\n"),
        (["--since", "2026-01-01", "--until", "2026-01-01"],
         "cascade report: --since 2026-01-01 is not before --until 2026-01-01: the period is "
         "empty\n"),
        (["--drift"], "cascade report: --drift prints its table in the terminal; the --html page "
                      "has its own drift panel: give one or the other\n"),
        (["--json"], "cascade report: --json selects the terminal report; --html writes the "
                     "page (its --key narrows it to one key): give one or the other\n"),
        (["--by", "key", "--json"], "cascade report: --json and --by key select the terminal "
                                    "report; --html writes the page (its --key narrows it to one "
                                    "key): give one or the other\n"),
    ],
)
def test_html_refusals_are_one_line_and_write_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    """A period outside the dates a page can word, an empty one, or --drift (which the page
    ignored): one line, exit 2, no page."""
    ledger = tmp_path / "ledger.sqlite"
    Ledger(ledger).close()
    page = tmp_path / "page.html"
    assert main(["report", "--ledger", str(ledger), "--html", str(page), *argv]) == 2
    assert capsys.readouterr().err == message
    assert not page.exists()


def test_html_at_the_ends_of_the_range(server: MockLLMServer, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The first and the last minute a page can word make a page, drift panel included."""
    ledger = tmp_path / "ledger.sqlite"
    seed(server, ledger).close()
    for since, until in (("1970-01-01", "1970-01-01T00:01"),
                         ("9998-12-31T23:58", "9998-12-31T23:59:59")):
        page = tmp_path / "page.html"
        assert main(["report", "--ledger", str(ledger), "--html", str(page), "--since", since,
                     "--until", until]) == 0
        assert f"from {since.replace('T', ' ')[:16]}" in capsys.readouterr().out
        assert page.read_text().count("no data in this period") == 11
