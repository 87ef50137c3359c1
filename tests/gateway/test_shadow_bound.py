"""Shadow calls are bounded (issue 22, item 7): many concurrent runs with ``shadow_rate: 1.0``
against a top rung that does not answer yet send at most ``shadow_max_in_flight`` shadow calls to
it; the others are skipped and counted, never queued. Through the real openai SDK against a
loopback upstream that counts the requests it holds at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from cascade import Cascade
from cascade.gateway.app import create_app, running
from cascade.testing import MockLLMServer, Reply
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, live_config

KEY = "gw-shadow-key"
TOP = "gpt-4o"  # the name of rung "mid", the top of the ladder below
GOOD = "We are open from nine to five"
ASK: Any = [{"role": "user", "content": "What are your opening hours?"}]


class HeldTop:
    """The upstream's answer for the top rung: held until ``release``; counts the requests it
    holds at once (the shadow calls in flight at the upstream)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self._changed = threading.Condition()
        self.now = self.most = 0

    def __call__(self, model: str, body: dict[str, Any]) -> Reply:
        with self._changed:
            self.now += 1
            self.most = max(self.most, self.now)
            self._changed.notify_all()
        try:
            self.gate.wait(60)  # never for ever, should the test fail before opening it
        finally:
            with self._changed:
                self.now -= 1
                self._changed.notify_all()
        return Reply(GOOD)

    def wait_until(self, held: Any, what: str) -> None:
        """Wake on each change of the count until ``held(now)`` holds; fail (not hang) if it
        never does."""
        with self._changed:
            assert self._changed.wait_for(lambda: held(self.now), 30), f"never happened: {what}"


@contextmanager
def upstream() -> Iterator[tuple[MockLLMServer, HeldTop]]:
    top = HeldTop()
    with pytest.MonkeyPatch.context() as env, MockLLMServer(top) as server:
        env.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
        env.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)
        server.script("gpt-4o-mini", [Reply(GOOD)])  # the first rung answers and is accepted
        try:
            yield server, top
        finally:
            top.gate.set()


def config(server: MockLLMServer, ledger: Path, **top_level: Any) -> dict[str, Any]:
    """faq: mini -> mid, every accepted run shadowed by the top rung."""
    return {**live_config(server, ladder=["mini", "mid"], attempts=1, ledger=str(ledger),
                          shadow_rate=1.0), **top_level}


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx2.get(f"{url}/metrics", headers={"authorization": f"Bearer {KEY}"}).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_gateway_sends_at_most_four_shadow_calls_at_once(tmp_path: Path) -> None:
    """30 concurrent clients, each answered by the first rung: 4 shadow calls (the default
    shadow_max_in_flight) reach the held top rung; the other 26 are skipped and counted in
    cascade_shadow_skipped_total, and never sent, even once the top rung answers."""
    with upstream() as (server, top):
        engine = Cascade.from_dict(config(server, tmp_path / "ledger.sqlite"))
        try:
            with running(create_app(engine, api_keys=[KEY])) as url, openai.OpenAI(
                    base_url=f"{url}/v1", api_key=KEY, max_retries=0) as api:

                def ask(_: int) -> str | None:
                    reply = api.chat.completions.create(model="faq", messages=ASK)
                    return reply.choices[0].message.content

                try:
                    with ThreadPoolExecutor(30) as pool:
                        assert list(pool.map(ask, range(30))) == [GOOD] * 30
                    # Every run has returned, so each shadow was admitted or skipped by now,
                    # and none admitted can end before the top rung answers.
                    top.wait_until(lambda now: now >= 4, "4 shadow calls held at the top rung")
                    assert engine.shadows.skipped == {"faq": 26}
                    assert metric(url, "cascade_shadow_skipped_total", task="faq") == 26
                    assert top.now == 4
                finally:
                    top.gate.set()  # before the gateway's shutdown waits for the shadows
                top.wait_until(lambda now: now == 0, "the shadow calls answered")
        finally:
            engine.close()  # waits for the shadow evaluations still running
    assert top.most == 4
    assert len(server.calls(TOP)) == 4


def test_complete_skips_shadows_beyond_the_bound_and_runs_them_again_once_free(
    tmp_path: Path,
) -> None:
    """The sync path: 10 concurrent ``complete`` calls with shadow_max_in_flight: 2 send 2
    shadow calls and skip 8 (a cascade.shadow_skipped event each); once those end, the next
    accepted run is shadowed again."""
    with upstream() as (server, top):
        engine = Cascade.from_dict(config(server, tmp_path / "ledger.sqlite",
                                          shadow_max_in_flight=2))
        with engine, capture_logs() as logs:
            try:
                with ThreadPoolExecutor(10) as pool:
                    results = list(pool.map(lambda _: engine.complete("faq", ASK), range(10)))
                assert all(r.accepted and r.model == "mini" for r in results)
                top.wait_until(lambda now: now >= 2, "2 shadow calls at the top rung")
                assert engine.shadows.skipped == {"faq": 8}
                assert top.now == 2
            finally:
                top.gate.set()  # before closing the engine waits for the shadows
            engine.shadows.wait()
            engine.complete("faq", ASK)
            engine.shadows.wait()
    assert top.most == 2
    assert len(server.calls(TOP)) == 3
    skipped = [e for e in logs if e["event"] == "cascade.shadow_skipped"]
    assert len(skipped) == 8
    assert {(e["task"], e["max_in_flight"]) for e in skipped} == {("faq", 2)}
    assert {e["run_id"] for e in skipped} <= {r.run_id for r in results}
