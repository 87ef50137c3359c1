from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import nltk.downloader  # noqa: F401  (see below)
import pytest
import structlog

from cascade.testing import MockLLMServer

# nltk.downloader binds sys.stderr as a default argument when it is first imported. Imported
# here, at collection, that is pytest's session-long stream; first imported inside a test that
# captures (capsys: the docs test's snippets reach textstat), it would be that test's stream,
# closed when the test ends, and a later canary's "[nltk_data] Error loading" line would crash.
FAKE_OPENAI_KEY = "sk-test-SECRET-openai-0000"
FAKE_ANTHROPIC_KEY = "sk-ant-test-SECRET-anthropic-0000"


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """The CLI configures structlog globally; put it back after each test."""
    yield
    structlog.reset_defaults()
    library = logging.getLogger("cascade")  # the CLI configures it too
    for handler in list(library.handlers):
        if getattr(handler, "_cascade_cli", False):
            library.removeHandler(handler)
    library.setLevel(logging.NOTSET)
    library.propagate = True


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)


@pytest.fixture
def server() -> Iterator[MockLLMServer]:
    with MockLLMServer() as srv:
        yield srv


def live_config(server: MockLLMServer, *, ladder: list[Any] | None = None,
                evaluators: list[dict[str, Any]] | None = None, attempts: int = 3,
                ledger: str | None = None, **task: Any) -> dict[str, Any]:
    """A config whose providers point at the loopback server: mini (openai) -> sonnet (anthropic)."""
    return {
        "providers": {
            "openai": {"type": "openai", "base_url": server.openai_url},
            "anthropic": {"type": "anthropic", "base_url": server.anthropic_url},
        },
        "models": {
            "mini": {"provider": "openai", "name": "gpt-4o-mini",
                     "price": {"input": 0.15, "output": 0.60}},
            "mid": {"provider": "openai", "name": "gpt-4o", "price": {"input": 2.5, "output": 10}},
            "sonnet": {"provider": "anthropic", "name": "claude-sonnet-4-6",
                       "price": {"input": 3.0, "output": 15.0, "cached_input": 0.3},
                       "params": {"max_tokens": 256}},
        },
        "retry": {"attempts": attempts, "max_wait_s": 30},
        "ledger": {"path": ledger},
        "tasks": {"faq": {"ladder": ladder or ["mini", "sonnet"],
                          "evaluators": evaluators if evaluators is not None
                          else [{"type": "length", "min_words": 3}], **task}},
    }


from tests.ledger.ledger_db import db  # noqa: E402,F401  (the SQLite/PostgreSQL ledger fixture)
from tests.redis_server import outage_clock  # noqa: E402,F401  (Redis outage windows)
