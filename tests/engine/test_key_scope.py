"""Issue 20 (keys), in the engine: a key's tasks are checked after routing, its name is on
every ledger row of its runs, and its budgets are reserved with the others."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cascade import Cascade
from cascade.errors import BudgetExceeded, TaskNotAllowed
from cascade.ledger.keys import KeyScope
from cascade.testing import FakeProvider
from tests.models.test_task_router import CODE, MATH, fitted


def _engine(path: Path) -> tuple[Cascade, FakeProvider]:
    provider = FakeProvider("p", {"m": ["an answer"]})
    return Cascade.from_yaml(path, providers={"p": provider}), provider


def test_auto_choosing_a_task_the_key_may_not_use_is_refused(tmp_path: Path) -> None:
    """``auto`` picks ``math``; a key limited to ``code`` is refused before any model call,
    and the refusal leaves no ledger row."""
    engine, provider = _engine(fitted(tmp_path))
    with engine:
        coder = KeyScope("coder", frozenset({"code"}))
        with pytest.raises(TaskNotAllowed) as info:
            engine.complete("auto", MATH[16], key=coder)
        assert (info.value.key, info.value.task) == ("coder", "math")
        assert "may not use task 'math' (its tasks: code)" in str(info.value)
        with pytest.raises(TaskNotAllowed):
            asyncio.run(engine.acomplete("math", MATH[16], key=coder))
        assert provider.calls == []
        assert engine.ledger is not None
        assert engine.ledger.query("SELECT COUNT(*) AS n FROM runs")[0]["n"] == 0
        assert engine.ledger.query("SELECT COUNT(*) AS n FROM steps")[0]["n"] == 0
        result = engine.complete("auto", CODE[16], key=coder)
        assert result.task == "code"
        assert len(provider.calls) == 1


def test_every_row_of_a_keys_run_carries_its_name(tmp_path: Path) -> None:
    """Steps (the write-ahead row and its settlement), the run and a shadow's feedback name
    the key; a run without a key names none."""
    engine, _ = _engine(fitted(tmp_path))
    with engine:
        assert engine.ledger is not None
        team = KeyScope("team-a")
        keyed = engine.complete("chat", "hello", key=team)
        plain = engine.complete("chat", "hello")
        engine.feedback(keyed.run_id, 1.0)
        rows = engine.ledger.query("SELECT run_id, key_name, status FROM steps")
        assert {(r["run_id"], r["key_name"], r["status"]) for r in rows} == {
            (keyed.run_id, "team-a", "settled"),
            (plain.run_id, None, "settled"),
        }
        runs = engine.ledger.query("SELECT run_id, key_name FROM runs")
        assert {(r["run_id"], r["key_name"]) for r in runs} == {
            (keyed.run_id, "team-a"),
            (plain.run_id, None),
        }


def test_the_pending_row_names_the_key(tmp_path: Path) -> None:
    """The write-ahead row is written with the key's name before the call is made."""
    seen: list[object] = []
    engines: list[Cascade] = []

    class Peek(FakeProvider):
        def complete(self, *args: Any, **kwargs: Any) -> Any:
            ledger = engines[0].ledger
            assert ledger is not None
            seen.extend(
                r["key_name"]
                for r in ledger.backend.read("SELECT key_name FROM steps WHERE status = 'pending'")
            )
            return super().complete(*args, **kwargs)

    engine = Cascade.from_yaml(fitted(tmp_path), providers={"p": Peek("p", {"m": ["a"]})})
    engines.append(engine)
    with engine:
        engine.complete("chat", "hello", key=KeyScope("team-a"))
    assert seen == ["team-a"]


def test_a_keys_daily_budget_refuses_the_run(tmp_path: Path) -> None:
    """A run whose worst case does not fit the key's daily budget is refused with 'key ...
    daily budget' in the message; the same run without the key goes."""
    engine, provider = _engine(fitted(tmp_path))
    with engine:
        poor = KeyScope("poor", daily_usd=0.000001)
        with pytest.raises(BudgetExceeded, match=r"key 'poor' daily budget \$0\.00"):
            engine.complete("chat", "hello", key=poor)
        assert provider.calls == []
        assert engine.ledger is not None  # the skipped step's row (no write-ahead) names it too
        skipped = engine.ledger.query("SELECT decision, key_name FROM steps")
        assert [(r["decision"], r["key_name"]) for r in skipped] == [("skip", "poor")]
        engine.complete("chat", "hello")
        assert len(provider.calls) == 1
