"""Prices from genai-prices when a model has no price: (bundled data, read offline)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from cascade import ConfigError
from cascade.cli import main
from cascade.config import parse_config
from cascade.config.pricing import Price


def _config(**models: dict[str, Any]) -> dict[str, Any]:
    return {
        "providers": {"openai": {"type": "openai"}, "anthropic": {"type": "anthropic"},
                      "local": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": models,
        "tasks": {"t": {"ladder": list(models)}},
        "ledger": {"path": None},
    }


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lookup must never open a connection (genai-prices can auto-update; we never ask it)."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_omitted_price_comes_from_genai_prices() -> None:
    config = parse_config(_config(
        mini={"provider": "openai", "name": "gpt-4o-mini"},
        sonnet={"provider": "anthropic", "name": "claude-sonnet-4-6"},
        mine={"provider": "openai", "name": "gpt-4o-mini", "price": {"input": 1, "output": 2}},
    ))
    assert config.models["mini"].price == Price(input=0.15, output=0.6, cached_input=0.075)
    assert config.models["sonnet"].price == Price(input=3, output=15, cached_input=0.3)
    assert config.models["mine"].price == Price(input=1, output=2)
    assert config.price_source("mini").startswith("genai-prices 0.")
    assert config.price_source("mini").endswith(": openai/gpt-4o-mini")
    assert config.price_source("sonnet").endswith(": anthropic/claude-sonnet-4-6")
    assert config.price_source("mine") == "config"


def test_unknown_model_without_price_says_what_to_add() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_config(llama={"provider": "local", "name": "my-local-llama"}),
                     path="x.yaml")
    assert info.value.location == "models.llama.price"
    message = str(info.value)
    assert "has no price for model 'my-local-llama' of provider 'openai'" in message
    assert "add price: {input: USD, output: USD} per 1M tokens" in message


def test_validate_prints_each_price_and_source(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(
        mini={"provider": "openai", "name": "gpt-4o-mini"},
        mine={"provider": "anthropic", "name": "claude-sonnet-4-6",
              "price": {"input": 2, "output": 9}})))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("model mini (gpt-4o-mini): $0.15 input, $0.60 output, cached input $0.075 per 1M "
            "tokens; price from genai-prices") in out
    assert ("model mine (claude-sonnet-4-6): $2.00 input, $9.00 output per 1M tokens; price from "
            "config") in out
