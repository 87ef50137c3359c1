"""A live gateway whose keys carry names and limits, for the rate-limit and shared-cache tests.

Key storage is not this module's business: ``Gateway.client`` is replaced by a table from bearer
key to ``Client`` (name, rpm, tpm), as the keys' own lookup will fill it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request

from cascade import Cascade
from cascade.gateway.app import create_app, running
from cascade.gateway.state import Client, Denied, key_id
from cascade.ledger.keys import KeyScope
from cascade.gateway.throttle import RateLimits
from cascade.testing import MockLLMServer
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, live_config
from tests.gateway.test_attacks import ASK, MINI

KEY_A, KEY_B = "gw-key-alpha-5be1c0ffee", "gw-key-bravo-77d0c0ffee"

__all__ = ["ASK", "KEY_A", "KEY_B", "MINI", "Live", "ask", "clients", "live_gateway"]


def clients(
    a: Mapping[str, Any] | None = None, b: Mapping[str, Any] | None = None
) -> dict[str, Client]:
    """Key A named ``a`` and key B named ``b``, with the limits given."""
    return {
        KEY_A: Client(key_id(KEY_A.encode()), name="a", scope=KeyScope("a"), **(a or {})),
        KEY_B: Client(key_id(KEY_B.encode()), name="b", scope=KeyScope("b"), **(b or {})),
    }


@dataclass
class Live:
    url: str
    app: Starlette
    upstream: MockLLMServer
    engine: Cascade

    def metric(self, name: str, **labels: str) -> float:
        value = self.app.state.gateway.metrics.registry.get_sample_value(name, labels)
        return float(value or 0.0)


@contextmanager
def live_gateway(
    tmp_path: Path,
    table: Mapping[str, Client],
    *,
    config: Mapping[str, Any] | None = None,
    limiter: Any = None,
    env: Mapping[str, str] | None = None,
    upstream: MockLLMServer | None = None,
    ledger: str = "ledger.sqlite",
) -> Iterator[Live]:
    """A gateway over a one-rung task ``faq`` (model mini) whose keys are ``table``.

    ``config`` is merged into the config's top level (``limits``, ``cache``, task settings go
    under ``tasks``); ``limiter`` replaces the gateway's limiter (an injected clock).
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
        patch.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        own = upstream is None
        server = upstream or MockLLMServer().__enter__()
        try:
            data = live_config(
                server, ladder=["mini"], evaluators=[], attempts=1, ledger=str(tmp_path / ledger)
            )
            for section, value in (config or {}).items():
                if section == "tasks":
                    data["tasks"]["faq"].update(value)
                else:
                    data[section] = value
            if own:
                server.script(MINI, ["We are open from nine to five"])
            engine = Cascade.from_dict(data)
            try:
                app = create_app(engine, api_keys=list(table))
                gateway = app.state.gateway

                async def client(request: Request) -> Client | Denied:
                    _, _, token = request.headers.get("authorization", "").partition(" ")
                    return table.get(token.strip()) or Denied("unknown")

                gateway.client = client
                if limiter is not None:
                    limits = engine.config.limits
                    app.state.rate_limits = RateLimits(
                        limits.redis if limits else None, gateway.metrics, limiter=limiter
                    )
                with running(app) as url:
                    yield Live(url, app, server, engine)
            finally:
                engine.close()
        finally:
            if own:
                server.__exit__(None, None, None)


def ask(url: str, key: str, **body: Any) -> httpx2.Response:
    return httpx2.post(
        f"{url}/v1/chat/completions",
        json={"model": "faq", "messages": ASK, **body},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
