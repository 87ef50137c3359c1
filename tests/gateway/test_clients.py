"""Popular OpenAI clients, pointed at the gateway: LangChain's ChatOpenAI and LiteLLM.

Neither is in the [test] extra (LiteLLM alone brings dozens of packages); these tests skip
unless they are installed, and run in a separate environment:
``pip install -e ".[test]" langchain-openai litellm && python -m pytest tests/gateway/test_clients.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from cascade.testing import MockLLMServer, Reply
from tests.conftest import live_config
from tests.engine.test_tools import GOOD_CALL, WEATHER

pytest.importorskip("starlette")

ASK = "What is the weather in Paris?"


@pytest.fixture
def gateway(server: MockLLMServer, keys: None) -> Iterator[str]:
    from tests.gateway.test_server import serving

    config = live_config(server, evaluators=[{"type": "length", "min_words": 3},
                                             {"type": "tool_call"}])
    with serving(config) as (url, _):
        yield url


def test_langchain_chat_openai(gateway: str, server: MockLLMServer) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(model="faq", base_url=gateway, api_key="unused",
                                      max_retries=0)
    # Queued up front: the server pops each reply in turn and repeats the last.
    server.script("gpt-4o-mini", ["no", "It is sunny in Paris today.",
                                  Reply("", tool_calls=[GOOD_CALL])])
    server.script("claude-sonnet-4-6", ["It is sunny in Paris today."])
    reply = llm.invoke(ASK)
    assert reply.content == "It is sunny in Paris today."
    assert reply.response_metadata["finish_reason"] == "stop"
    streamed = "".join(str(chunk.content) for chunk in llm.stream(ASK))
    assert streamed == "It is sunny in Paris today."
    called = llm.bind_tools([WEATHER]).invoke(ASK)
    assert called.tool_calls == [{"name": "get_weather", "args": {"city": "Paris"},
                                  "id": "call_1", "type": "tool_call"}]


# LiteLLM's lazily imported modules warn about their own pydantic TypedDicts.
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_litellm(gateway: str, server: MockLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch at import
    litellm: Any = pytest.importorskip("litellm")
    server.script("gpt-4o-mini", ["It is sunny in Paris today.", Reply("", tool_calls=[GOOD_CALL])])
    reply = litellm.completion(model="openai/faq", api_base=gateway, api_key="unused",
                               messages=[{"role": "user", "content": ASK}])
    assert reply.choices[0].message.content == "It is sunny in Paris today."
    reply = litellm.completion(model="openai/faq", api_base=gateway, api_key="unused",
                               messages=[{"role": "user", "content": ASK}], tools=[WEATHER])
    call = reply.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather", {"city": "Paris"})
    assert reply.choices[0].finish_reason == "tool_calls"
    chunks = litellm.completion(model="openai/faq", api_base=gateway, api_key="unused",
                                messages=[{"role": "user", "content": ASK}], tools=[WEATHER],
                                stream=True)
    parts = [c.choices[0].delta for c in chunks]
    names = [t.function.name for d in parts for t in (d.tool_calls or []) if t.function.name]
    args = "".join(t.function.arguments or "" for d in parts for t in (d.tool_calls or []))
    assert names == ["get_weather"]
    assert json.loads(args) == {"city": "Paris"}
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
