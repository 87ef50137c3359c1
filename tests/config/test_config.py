"""Config loading: every mistake is a ConfigError naming the file and the key path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from cascade import Cascade, ConfigError
from cascade.config import load_config, parse_config

BASE: dict[str, Any] = {
    "providers": {"openai": {"type": "openai", "api_key_env": "OPENAI_API_KEY"},
                  "anthropic": {"type": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"}},
    "models": {
        "mini": {"provider": "openai", "name": "gpt-4o-mini",
                 "price": {"input": 0.15, "output": 0.60}},
        "sonnet": {"provider": "anthropic", "name": "claude-sonnet-4-5",
                   "price": {"input": 3.0, "output": 15.0, "cached_input": 0.3},
                   "params": {"max_tokens": 1024}},
    },
    "ledger": {"path": "cascade-ledger.sqlite"},
    "retry": {"attempts": 4, "max_wait_s": 30},
    "tasks": {"faq": {"ladder": ["mini", "sonnet"],
                      "evaluators": [{"type": "length", "min_words": 3, "max_words": 200}],
                      "accept": "all", "on_exhausted": "return_last"}},
}


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def error_for(tmp_path: Path, mutate: Any) -> str:
    data = copy.deepcopy(BASE)
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        Cascade.from_yaml(path, ledger=False)
    return str(info.value)


def test_issue_example_loads(tmp_path: Path) -> None:
    """The shape documented in the contract loads and keeps its values."""
    config = load_config(write(tmp_path, BASE))
    assert [r.model for r in config.tasks["faq"].ladder] == ["mini", "sonnet"]
    assert config.models["sonnet"].price.cached_input == 0.3
    assert config.retry.attempts == 4


def test_defaults() -> None:
    """accept defaults to all, on_exhausted to return_last, retry.attempts to 4."""
    data = copy.deepcopy(BASE)
    del data["tasks"]["faq"]["accept"], data["tasks"]["faq"]["on_exhausted"], data["retry"]
    config = parse_config(data)
    assert config.tasks["faq"].accept == "all"
    assert config.tasks["faq"].on_exhausted == "return_last"
    assert config.retry.attempts == 4


def test_unknown_model_in_ladder(tmp_path: Path) -> None:
    """A typo in a ladder names the file, the ladder index and the bad key."""
    message = error_for(tmp_path, lambda d: d["tasks"]["faq"]["ladder"].__setitem__(1, "sonet"))
    assert message.startswith(str(tmp_path / "c.yaml"))
    assert "tasks.faq.ladder[1]: unknown model 'sonet'" in message


def test_unknown_key(tmp_path: Path) -> None:
    """An unknown key is rejected with its path."""
    message = error_for(tmp_path, lambda d: d["tasks"]["faq"].update(ladders=["mini"]))
    assert "tasks.faq.ladders: unknown key" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    """A misspelt section is rejected, not ignored."""
    assert "modles: unknown key" in error_for(tmp_path, lambda d: d.update(modles={}))


def test_wrong_type(tmp_path: Path) -> None:
    """A wrong type names the key and what was given."""
    message = error_for(tmp_path, lambda d: d["models"]["mini"]["price"].update(input="cheap"))
    assert "models.mini.price.input" in message
    assert "'cheap'" in message


def test_negative_price(tmp_path: Path) -> None:
    """Prices cannot be negative."""
    message = error_for(tmp_path, lambda d: d["models"]["mini"]["price"].update(output=-1))
    assert "models.mini.price.output" in message


def test_bad_accept_value(tmp_path: Path) -> None:
    """accept only takes all, any or {min_score}."""
    message = error_for(tmp_path, lambda d: d["tasks"]["faq"].update(accept="most"))
    assert "tasks.faq.accept" in message


def test_unknown_provider_reference(tmp_path: Path) -> None:
    """A model pointing at an undefined provider is named."""
    message = error_for(tmp_path, lambda d: d["models"]["mini"].update(provider="openia"))
    assert "models.mini.provider: unknown provider 'openia'" in message


def test_unknown_provider_type(tmp_path: Path) -> None:
    """An unknown provider type lists the installed ones."""
    message = error_for(tmp_path, lambda d: d["providers"]["openai"].update(type="opnai"))
    assert "providers.openai.type" in message
    assert "'opnai'" in message
    assert "openai" in message


def test_unknown_evaluator_type(tmp_path: Path) -> None:
    """An unknown evaluator type is a ConfigError at load time, with its location."""
    message = error_for(tmp_path,
                        lambda d: d["tasks"]["faq"]["evaluators"].append({"type": "lenght"}))
    assert "tasks.faq.evaluators[1].type" in message
    assert "'lenght'" in message


def test_evaluator_settings_are_validated(tmp_path: Path) -> None:
    """A typo in an evaluator's settings fails at load time with the key path."""
    message = error_for(tmp_path, lambda d: d["tasks"]["faq"]["evaluators"][0].update(min_word=3))
    assert "tasks.faq.evaluators[0].min_word: unknown key" in message


def test_rung_evaluator_location(tmp_path: Path) -> None:
    """Per-rung evaluators report their own ladder position."""
    def mutate(d: dict[str, Any]) -> None:
        d["tasks"]["faq"]["ladder"][0] = {"model": "mini",
                                          "evaluators": [{"type": "length", "max_words": "x"}]}
    assert "tasks.faq.ladder[0].evaluators[0].max_words" in error_for(tmp_path, mutate)


def test_empty_ladder(tmp_path: Path) -> None:
    """A task needs at least one rung."""
    assert "tasks.faq.ladder" in error_for(tmp_path, lambda d: d["tasks"]["faq"].update(ladder=[]))


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        Cascade.from_yaml(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path: Path) -> None:
    """Invalid YAML names the file and the line."""
    path = write(tmp_path, "tasks:\n  faq: [mini,\n  x: {\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: line \d+, column \d+: invalid YAML"):
        load_config(path)


def test_not_a_mapping(tmp_path: Path) -> None:
    """A YAML list at the top level is explained."""
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_empty_file(tmp_path: Path) -> None:
    """An empty file is explained, not a TypeError."""
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, ""))


def test_rung_mapping_overrides_task_evaluators() -> None:
    """A {model, evaluators} rung uses its own evaluators in place of the task's."""
    data = copy.deepcopy(BASE)
    data["tasks"]["faq"]["ladder"] = [
        {"model": "mini", "evaluators": [{"type": "length", "min_words": 50}]}, "sonnet"]
    engine = Cascade.from_dict(data, ledger=False)
    first, second = engine.tasks["faq"].rungs
    assert first.slots[0].evaluator.config.min_words == 50
    assert second.slots[0].evaluator.config.min_words == 3


def test_from_dict_errors_have_key_path() -> None:
    """Configs built in code get the same key-path errors."""
    data = copy.deepcopy(BASE)
    data["tasks"]["faq"]["ladder"] = ["mini", "gpt5"]
    with pytest.raises(ConfigError, match=r"tasks\.faq\.ladder\[1\]: unknown model 'gpt5'"):
        Cascade.from_dict(data, ledger=False)


def test_loading_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a config reads no API key: only a call that reaches the provider does."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    Cascade.from_dict(copy.deepcopy(BASE), ledger=False)
