"""Issue 20 (keys): ``cascade keys`` and ``cascade report --by key``, on both ledger backends."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cascade.cli import main
from cascade.ledger.keys import KeyScope, split_token
from cascade.ledger.money import Accounts
from tests.ledger.ledger_db import Db


def _where(db: Db, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    if db.backend == "sqlite":
        return ["--ledger", str(db.path)]
    monkeypatch.setenv("CASCADE_TEST_LEDGER_URL", db.url or "")
    return ["--url-env", "CASCADE_TEST_LEDGER_URL"]


def test_create_prints_the_key_once_and_list_never_shows_it(
    db: Db, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """create prints the key on stdout and says it is not shown again; the ledger and every
    later command print only the name and limits."""
    where = _where(db, monkeypatch)
    assert (
        main(
            [
                "keys",
                "create",
                "team-a",
                "--tasks",
                "faq,code",
                "--daily-usd",
                "5",
                "--rpm",
                "60",
                "--expires",
                "2099-01-01",
                *where,
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    key = out.strip()
    assert split_token(key) is not None
    assert "shown only now and cannot be shown again" in err
    assert main(["keys", "list", "--json", *where]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(k["name"], k["tasks"], k["daily_usd"], k["rpm"], k["state"]) for k in listed] == [
        ("team-a", ["code", "faq"], 5.0, 60, "active")
    ]
    assert main(["keys", "show", "team-a", *where]) == 0
    shown = capsys.readouterr().out
    assert "team-a (active): tasks code,faq, daily $5.00, 60 rpm, expires 2099-01-01" in shown
    secret = split_token(key)[1]  # type: ignore[index]
    assert secret not in repr(db.rows("SELECT * FROM keys")) + json.dumps(listed) + shown


def test_update_clears_and_revoke_marks(
    db: Db, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """update changes the limits given and --clear removes one; revoke marks the key."""
    where = _where(db, monkeypatch)
    assert main(["keys", "create", "team-a", "--tasks", "faq", "--daily-usd", "5", *where]) == 0
    assert (
        main(
            [
                "keys",
                "update",
                "team-a",
                "--clear",
                "tasks",
                "--monthly-usd",
                "50",
                "--json",
                *where,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["keys", "show", "team-a", "--json", *where]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["tasks"], shown["daily_usd"], shown["monthly_usd"]) == (None, 5.0, 50.0)
    assert main(["keys", "revoke", "team-a", *where]) == 0
    assert "revoked key 'team-a'" in capsys.readouterr().out
    assert main(["keys", "show", "team-a", "--json", *where]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "revoked"


_USD = "must be a number > 0 and <= 1,000,000,000 USD"
_RATE = "must be a whole number from 1 to 9007199254740992 (2**53)"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["create", "team-a"], "error: name: a key named 'team-a' exists already"),
        (["create", "b", "--daily-usd", "-1"], f"error: daily_usd: {_USD}, got -1.0"),
        (["create", "b", "--daily-usd", "1e300"], f"error: daily_usd: {_USD}, got 1e+300"),
        (["create", "b", "--monthly-usd", "inf"], f"error: monthly_usd: {_USD}, got inf"),
        (["update", "team-a", "--daily-usd", "1e10"], f"error: daily_usd: {_USD}"),
        (["create", "b", "--rpm", "99999999999999999999"], f"error: rpm: {_RATE}"),
        (["update", "team-a", "--tpm", str(2**53 + 1)], f"error: tpm: {_RATE}"),
        (["create", "b", "--expires", "2026-13-01"], "error: expires: not a date"),
        (
            ["create", "b", "--expires", "9999-12-31T23:59:59-05:00"],
            "error: expires: '9999-12-31T23:59:59-05:00' is outside 1970-01-01 .. 9998-12-31 UTC",
        ),
        (
            ["create", "b", "--expires", "0001-01-01"],
            "error: expires: '0001-01-01' is outside 1970-01-01 .. 9998-12-31 UTC",
        ),
        (["create", "b", "--expires", "2001-01-01"], "error: expires: '2001-01-01' has already"),
        (["update", "team-a", "--expires", "2001-01-01"], "error: expires: '2001-01-01' has"),
        (["create", "b c"], "error: name: 'b c' is not a key name"),
        (["update", "nope", "--rpm", "3"], "error: name: no key named 'nope'"),
        (["update", "team-a"], "error: update: nothing to change"),
        (["revoke", "nope"], "error: name: no key named 'nope'"),
        (["show", "nope"], "error: name: no key named 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Each mistake is one clear line on stderr, exit 2, no traceback; nothing is written."""
    where = ["--ledger", str(tmp_path / "l.sqlite")]
    assert main(["keys", "create", "team-a", *where]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--json", *where]) == 0
    before = capsys.readouterr().out
    assert main(["keys", *argv, *where]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert main(["keys", "list", "--json", *where]) == 0
    assert capsys.readouterr().out == before


@pytest.mark.parametrize(
    "argv",
    [
        ["create", "b c"],
        ["create", "b", "--rpm", "0"],
        ["create", "b", "--daily-usd", "1e300"],
        ["create", "b", "--expires", "9999-12-31T23:59:59-05:00"],
    ],
)
def test_a_refused_create_makes_no_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """A create refused for its name or limits leaves no ledger file behind."""
    ledger = tmp_path / "new.sqlite"
    assert main(["keys", *argv, "--ledger", str(ledger)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_limits_at_the_bounds_are_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The largest budget and rate and the last day of 9998 make a key that shows."""
    where = ["--ledger", str(tmp_path / "l.sqlite")]
    argv = ["--daily-usd", "1e9", "--rpm", str(2**53), "--expires", "9998-12-31T23:59"]
    assert main(["keys", "create", "big", *argv, *where]) == 0
    capsys.readouterr()
    assert main(["keys", "show", "big", *where]) == 0
    shown = capsys.readouterr().out
    assert "daily $1,000,000,000.00, 9007199254740992 rpm, expires 9998-12-31 23:59 UTC" in shown


def test_a_bad_stored_time_prints_as_its_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A time no date can word, stored before the bounds were checked, prints as its raw
    number: show and list of the whole ledger still work."""
    ledger = tmp_path / "l.sqlite"
    where = ["--ledger", str(ledger)]
    assert main(["keys", "create", "old", *where]) == 0
    with sqlite3.connect(ledger) as conn:
        conn.execute("UPDATE keys SET expires = 1e300, created = -1e20")
    conn.close()
    capsys.readouterr()
    assert main(["keys", "show", "old", *where]) == 0
    shown = capsys.readouterr().out
    assert "expires 1e+300 (Unix time); created -1e+20 (Unix time)" in shown
    assert main(["keys", "list", *where]) == 0
    assert "old" in capsys.readouterr().out


def test_report_by_key(
    db: Db, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spend and calls per key name; unnamed rows under ''."""
    ledger = db.open()
    try:
        accounts = Accounts(ledger, [])
        for run_id, key in (("r1", KeyScope("team-a")), ("r2", KeyScope("team-a")), ("r3", None)):
            accounts.reserve(
                run_id=run_id,
                task="t",
                step=1,
                model_key="m",
                provider="p",
                estimate=0.25,
                spent=0.0,
                cap=None,
                key=key,
            )
    finally:
        ledger.close()
    where = _where(db, monkeypatch)
    assert main(["report", "--by", "key", "--json", *where]) == 0
    keys = json.loads(capsys.readouterr().out)["keys"]
    assert {name: (k["calls"], k["cost_usd"], k["unfinished"]) for name, k in keys.items()} == {
        "": (1, 0.25, 1),
        "team-a": (2, 0.5, 2),
    }
    assert main(["report", "--by", "key", *where]) == 0
    out = capsys.readouterr().out
    assert "2 keys, $0.75 total" in out
    assert "team-a" in out
    assert "(unnamed)" in out
