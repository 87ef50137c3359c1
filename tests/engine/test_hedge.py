"""Hedged rungs (task option hedge_after_ms): rung i+1 starts when rung i is slow.

The providers below wait on events the test sets, so no test depends on real latency: the
only real wait is the hedge delay itself (1 ms).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from cascade import Cascade
from cascade.ledger.writer import flush_all
from cascade.testing import make_completion
from cascade.types import Completion, Message

ANSWERS = {"small": "small says a long enough answer", "large": "large says a long enough answer"}


class Gated:
    """Answers each model once its event is set (no event: at once); records start order."""

    name = "p"
    supports_logprobs = False

    def __init__(self, texts: Mapping[str, str] = ANSWERS) -> None:
        self.texts = dict(texts)
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.finished: list[str] = []

    def complete(self, messages: Sequence[Message], *, model: str, params: Mapping[str, Any],
                 query_id: str | None = None) -> Completion:
        self.started.append(model)
        self.finished.append(model)
        return make_completion(self.texts[model], input_tokens=10, output_tokens=5)

    async def acomplete(self, messages: Sequence[Message], *, model: str,
                        params: Mapping[str, Any], query_id: str | None = None) -> Completion:
        self.started.append(model)
        gate = self.gates.get(model)
        if gate is not None:
            await gate.wait()
        self.finished.append(model)
        return make_completion(self.texts[model], input_tokens=10, output_tokens=5)


def build(tmp_path: Path, provider: Gated, **task: Any) -> Cascade:
    data = {
        "providers": {"p": {"type": "openai"}},
        "models": {"small": {"provider": "p", "name": "small", "price": {"input": 1, "output": 2}},
                   "large": {"provider": "p", "name": "large",
                             "price": {"input": 10, "output": 30}}},
        "ledger": {"path": str(tmp_path / "ledger.db")},
        "tasks": {"t": {"ladder": ["small", "large"], "hedge_after_ms": 1,
                        "evaluators": [{"type": "length", "min_words": 3}], **task}},
    }
    return Cascade.from_dict(data, providers={"p": provider}, sleep=lambda s: None)


def rows(tmp_path: Path) -> list[tuple[Any, ...]]:
    flush_all()  # rows the ledger's writer thread has queued
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        return db.execute(
            "SELECT model, status, decision, cost_usd, reserved_usd FROM steps ORDER BY step"
        ).fetchall()


async def until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0)


def test_slow_first_rung_hedged_and_cancelled_loser_settled_lost(tmp_path: Path) -> None:
    """small never answers: large starts after the delay, wins, small's row is lost."""
    provider = Gated()
    provider.gates["small"] = asyncio.Event()  # never set
    engine = build(tmp_path, provider)

    async def go() -> Any:
        async with engine:
            return await engine.acomplete("t", "q", max_tokens=100)

    with engine:
        result = asyncio.run(go())
    assert (result.model, result.accepted) == ("large", True)
    assert provider.started == ["small", "large"]
    by_model = {r[0]: r for r in rows(tmp_path)}
    _, status, _, cost, reserved = by_model["small"]
    assert status == "lost" and cost == reserved > 0  # billed at its reserved worst case
    assert by_model["large"][1:3] == ("settled", "accept")
    assert not [r for r in rows(tmp_path) if r[1] == "pending"]


def test_fast_first_rung_never_hedges(tmp_path: Path) -> None:
    provider = Gated()
    engine = build(tmp_path, provider, hedge_after_ms=60_000)

    async def go() -> Any:
        async with engine:
            return await engine.acomplete("t", "q")

    with engine:
        result = asyncio.run(go())
    assert result.model == "small"
    assert provider.started == ["small"]


def test_lower_rung_accepted_first_wins_over_the_hedge(tmp_path: Path) -> None:
    """Both rungs in flight; small's accepted answer arrives first, so small is returned."""
    provider = Gated()
    provider.gates["small"] = asyncio.Event()
    provider.gates["large"] = asyncio.Event()
    engine = build(tmp_path, provider)

    async def go() -> Any:
        async with engine:
            run = asyncio.ensure_future(engine.acomplete("t", "q", max_tokens=100))
            await until(lambda: provider.started == ["small", "large"])
            provider.gates["small"].set()
            return await run

    with engine:
        result = asyncio.run(go())
    assert result.model == "small"
    assert provider.finished == ["small"]  # large was cancelled in flight
    statuses = {r[0]: r[1] for r in rows(tmp_path)}
    assert statuses == {"small": "settled", "large": "lost"}


def test_rejected_lower_rung_lets_the_hedge_win(tmp_path: Path) -> None:
    """small answers first but is rejected: large's answer, still in flight, is awaited."""
    provider = Gated({"small": "no", "large": ANSWERS["large"]})
    provider.gates["small"] = asyncio.Event()
    provider.gates["large"] = asyncio.Event()
    engine = build(tmp_path, provider)

    async def go() -> Any:
        async with engine:
            run = asyncio.ensure_future(engine.acomplete("t", "q", max_tokens=100))
            await until(lambda: provider.started == ["small", "large"])
            provider.gates["small"].set()
            await until(lambda: provider.finished == ["small"])
            provider.gates["large"].set()
            return await run

    with engine:
        result = asyncio.run(go())
    assert (result.model, result.accepted) == ("large", True)
    assert [s.decision for s in result.steps] == ["escalate", "accept"]
    assert result.cost_usd == pytest.approx((10 * 1 + 5 * 2 + 10 * 10 + 5 * 30) / 1e6)


def test_a_hedged_rung_does_not_see_the_answer_of_the_rung_it_hedged(tmp_path: Path) -> None:
    """large starts while small is in flight; small then answers and is rejected. large's
    request.history is what stood when large started (nothing), as documented: the agreement
    check has no earlier answer to compare with."""
    provider = Gated({"small": "the answer is 42", "large": "the answer is 42"})
    provider.gates["small"] = asyncio.Event()
    provider.gates["large"] = asyncio.Event()
    engine = build(tmp_path, provider, evaluators=[{"type": "agreement",
                                                    "recipe": "final_number"}])

    async def go() -> Any:
        async with engine:
            run = asyncio.ensure_future(engine.acomplete("t", "q", max_tokens=100))
            await until(lambda: provider.started == ["small", "large"])
            provider.gates["small"].set()
            await until(lambda: provider.finished == ["small"])
            await asyncio.sleep(0.05)  # small judged and recorded before large answers
            provider.gates["large"].set()
            return await run

    with engine:
        result = asyncio.run(go())
    reasons = [(s.model, [v.reason for v in s.verdicts]) for s in result.steps]
    assert reasons == [("small", ["no earlier answer to compare with"]),
                       ("large", ["no earlier answer to compare with"])]
    assert result.accepted is False


def test_none_accepted_returns_the_highest_answer(tmp_path: Path) -> None:
    provider = Gated({"small": "no", "large": "nope"})
    provider.gates["small"] = asyncio.Event()
    engine = build(tmp_path, provider)

    async def go() -> Any:
        async with engine:
            run = asyncio.ensure_future(engine.acomplete("t", "q", max_tokens=100))
            await until(lambda: "large" in provider.finished)
            provider.gates["small"].set()
            return await run

    with engine:
        result = asyncio.run(go())
    assert (result.text, result.accepted) == ("nope", False)


def test_sync_path_does_not_hedge(tmp_path: Path) -> None:
    """complete() runs the rungs one after another whatever hedge_after_ms says."""
    provider = Gated({"small": "no", "large": ANSWERS["large"]})
    with build(tmp_path, provider) as engine:
        result = engine.complete("t", "q")
    assert result.model == "large"
    assert [s.decision for s in result.steps] == ["escalate", "accept"]


def test_hedge_after_ms_must_be_positive() -> None:
    from cascade.errors import ConfigError

    with pytest.raises(ConfigError, match="hedge_after_ms"):
        Cascade.from_dict({"providers": {"p": {"type": "openai"}},
                           "models": {"m": {"provider": "p", "name": "m"}},
                           "tasks": {"t": {"ladder": ["m"], "hedge_after_ms": 0}}}, ledger=False)


def test_loser_cancelled_after_its_answer_is_billed_real_usage(tmp_path: Path) -> None:
    """small answered but is still being judged when large wins: its step keeps real usage."""
    from dataclasses import replace

    from cascade.evaluation import Slot

    provider = Gated()
    provider.gates["large"] = asyncio.Event()
    engine = build(tmp_path, provider)
    judging = asyncio.Event()

    async def slow_check(request: Any, completion: Any) -> bool:
        judging.set()
        await asyncio.Event().wait()  # never decides
        return True

    task = engine.tasks["t"]
    small = replace(task.rungs[0], slots=(Slot("slow", lambda r, c: True,
                                                hooks={"acall": slow_check}),))
    engine.tasks["t"] = replace(task, rungs=(small, *task.rungs[1:]))

    async def go() -> Any:
        async with engine:
            run = asyncio.ensure_future(engine.acomplete("t", "q", max_tokens=100))
            await until(judging.is_set)
            await until(lambda: provider.started == ["small", "large"])
            provider.gates["large"].set()
            return await run

    with engine:
        result = asyncio.run(go())
    assert result.model == "large"
    by_model = {r[0]: r for r in rows(tmp_path)}
    assert by_model["small"][1:4] == ("settled", "error", pytest.approx((10 * 1 + 5 * 2) / 1e6))


def test_gateway_request_is_hedged(tmp_path: Path) -> None:
    """The gateway runs acomplete, so a slow first rung is hedged there too."""
    import httpx2

    from cascade.gateway.app import create_app

    provider = Gated()
    provider.gates["small"] = asyncio.Event()  # never set
    engine = build(tmp_path, provider)

    async def go() -> Any:
        app = create_app(engine)
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gw") as client:
            reply = await client.post("/v1/chat/completions", json={
                "model": "t", "messages": [{"role": "user", "content": "q"}]})
        await engine.aclose()
        return reply

    with engine:
        reply = asyncio.run(go())
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == ANSWERS["large"]
    assert provider.started == ["small", "large"]
    assert {r[0]: r[1] for r in rows(tmp_path)} == {"small": "lost", "large": "settled"}
