"""The sync path's call threads: reused, never queued behind a hung call, context carried;
and what runs before an attempt is timed."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from types import ModuleType
from typing import Any

import pytest

from cascade import Cascade, Completion
from cascade.config import ProviderConfig
from cascade.engine.call_threads import run_within
from cascade.providers.openai import OpenAIProvider
from cascade.testing import MockLLMServer
from tests.conftest import live_config

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def call_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "cascade-call")


def test_threads_are_reused_across_calls() -> None:
    before = call_threads()
    for _ in range(200):
        assert run_within(5, lambda: 7) == 7
    assert call_threads() - before <= 1  # one thread served them all, one after another


def test_a_hung_call_does_not_hold_up_the_next() -> None:
    """The caller gets TimeoutError while the call still hangs, and the next call runs on
    another thread instead of queueing behind it (which would time out too)."""
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    hung_on: list[int] = []

    def hang() -> None:
        hung_on.append(threading.get_ident())
        started.set()
        release.wait(10)
        finished.set()

    with pytest.raises(TimeoutError):
        run_within(0.05, hang)
    assert not finished.is_set()  # the caller did not wait for the call to end
    assert started.wait(10)  # the hung call holds its thread (it may start after the timeout)
    assert run_within(5, threading.get_ident) not in hung_on
    assert not finished.is_set()  # ... nor did the next call
    release.set()


def test_errors_and_the_callers_context_reach_the_call() -> None:
    token = WHO.set("the run")
    try:
        assert run_within(5, WHO.get) == "the run"
    finally:
        WHO.reset(token)

    def boom() -> None:
        raise KeyError("from the call")

    with pytest.raises(KeyError, match="from the call"):
        run_within(5, boom)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads (3.12+)
def test_a_forked_child_gets_threads_of_its_own() -> None:
    assert run_within(5, lambda: 1) == 1  # an idle thread exists in the parent now
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if run_within(2, lambda: 2) == 2 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


class LoadRecording(OpenAIProvider):
    """Records where its SDK is loaded and where its calls run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[tuple[str, str]] = []

    def load_sdk(self) -> ModuleType:
        self.events.append(("load", threading.current_thread().name))
        return super().load_sdk()

    def complete(self, *args: Any, **kwargs: Any) -> Completion:
        self.events.append(("call", threading.current_thread().name))
        return super().complete(*args, **kwargs)

    async def acomplete(self, *args: Any, **kwargs: Any) -> Completion:
        self.events.append(("call", threading.current_thread().name))
        return await super().acomplete(*args, **kwargs)


@pytest.mark.usefixtures("keys")
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_sdk_is_loaded_before_the_attempt_is_timed(server: MockLLMServer, mode: str) -> None:
    """An SDK provider's SDK (imported on first use, 0.5-1 s) is loaded by the caller before the
    attempt's timeout starts: on the calling thread, before the call (which the sync path runs
    on a call thread), so the import never counts against timeout_s."""
    server.script("gpt-4o-mini", ["We open at nine every day"])
    provider = LoadRecording("openai", ProviderConfig(type="openai", base_url=server.openai_url))
    data = live_config(server, ladder=["mini"])
    with Cascade.from_dict(data, providers={"openai": provider}, ledger=False) as engine:

        async def once() -> None:
            await engine.acomplete("faq", "When do you open?")
            await engine.aclose()  # this loop's async client

        if mode == "sync":
            engine.complete("faq", "When do you open?")
        else:
            asyncio.run(once())
    here = threading.current_thread().name
    assert provider.events[0] == ("load", here)
    assert provider.events[1] == ("call", "cascade-call" if mode == "sync" else here)
