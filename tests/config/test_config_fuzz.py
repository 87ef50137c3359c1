"""Property tests: any YAML document or mutated config either loads or raises ConfigError."""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cascade import Cascade, ConfigError, Ledger
from cascade.config import load_config

VALID: dict[str, Any] = {
    "providers": {"openai": {"type": "openai", "api_key_env": "OPENAI_API_KEY",
                             "max_concurrency": 4,
                             "circuit_breaker": {"failures": 3, "cooldown_s": 10}},
                  "anthropic": {"type": "anthropic"}},
    "models": {
        "mini": {"provider": "openai", "name": "gpt-4o-mini",
                 "price": {"input": 0.15, "output": 0.6}, "params": {"max_tokens": 100}},
        "sonnet": {"provider": "anthropic", "name": "claude-sonnet-4-6",
                   "price": {"input": 3, "output": 15, "cached_input": 0.3}},
    },
    "ledger": {"path": None},
    "retry": {"attempts": 3, "max_wait_s": 5},
    "budgets": {"daily_usd": 10},
    "cache": {"path": ":memory:"},
    "tasks": {
        "faq": {"ladder": ["mini", {"model": "sonnet", "evaluators": [
                    {"type": "length", "min_words": 1}]}],
                "evaluators": [{"type": "length", "min_words": 3, "max_words": 200},
                               {"type": "regex", "pattern": "\\w+"},
                               {"type": "json_schema", "schema": {"type": "object"}},
                               {"type": "agreement", "min_agree": 0.5},
                               {"type": "refusal"},
                               {"type": "contains", "any": ["a"]}],
                "accept": "all", "on_exhausted": "return_last", "max_cost_usd": 0.1,
                "cache": {"ttl_s": 60}},
    },
}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)),
    max_leaves=20)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            out += paths(child, (*prefix, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            out += paths(child, (*prefix, i))
    return out


ALL_PATHS = paths(VALID)[1:]


# Mutated configs may name any cache or ledger file; keep them out of the working tree.
SCRATCH = Path(tempfile.mkdtemp(prefix="cascade-fuzz-"))


def build(data: Any) -> None:
    previous = os.getcwd()
    os.chdir(SCRATCH)
    try:
        Cascade.from_dict(data, ledger=Ledger(":memory:")).close()
    except ConfigError:
        pass
    finally:
        os.chdir(previous)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_random_documents(data: Any) -> None:
    """Any document is a config or a ConfigError, never another exception."""
    build(data)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(ALL_PATHS), st.sampled_from(["replace", "delete", "add"]), values)
def test_mutated_valid_config(path: tuple[Any, ...], action: str, value: Any) -> None:
    """Replacing, deleting or adding any key of a valid config never raises anything else."""
    data = copy.deepcopy(VALID)
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif isinstance(parent[last], dict):
        parent[last]["unexpected_key"] = value
    else:
        parent[last] = value
    build(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_random_yaml_text(tmp_path: Path, text: str) -> None:
    """Arbitrary file content loads or raises ConfigError."""
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path)
    except ConfigError:
        pass


def test_valid_fixture_builds() -> None:
    """The base of the mutations is itself valid (so mutations start from a real config)."""
    Cascade.from_dict(copy.deepcopy(VALID), ledger=Ledger(":memory:")).close()
