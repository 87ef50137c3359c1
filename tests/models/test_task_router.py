"""Task ``auto``: a classifier fitted from examples picks the task from the prompt."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from cascade import Cascade, ConfigError
from cascade.cli import main
from cascade.gateway.app import create_app, running
from cascade.models.task_router import TaskClassifier, fit_classifier
from cascade.testing import FakeProvider

MATH = [f"What is {a} times {b}? Show the arithmetic." for a, b in zip(range(3, 23), range(7, 27))]
CODE = [f"Write a Python function that returns the {w} of a list." for w in
        ("sum", "maximum", "minimum", "length", "reverse", "sorted copy", "mean", "median",
         "mode", "product", "first item", "last item", "unique items", "even items",
         "odd items", "squares", "cumulative sum", "count of zeros", "range", "second largest")]
HELLO = "Hello! How are you today?"


def config(tmp_path: Path, **router: Any) -> dict[str, Any]:
    return {
        "providers": {"p": {"type": "openai"}},
        "models": {"m": {"provider": "p", "name": "m", "price": {"input": 1, "output": 1}}},
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
        "logging": {"content": True},
        "tasks": {
            "math": {"ladder": ["m"], "examples": MATH[:15]},
            "code": {"ladder": ["m"], "examples": CODE[:15]},
            "chat": {"ladder": ["m"]},
        },
        "task_router": {"min_confidence": 0.5, "default_task": "chat", **router},
    }


def fitted(tmp_path: Path, **router: Any) -> Path:
    path = tmp_path / "cascade.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, **router)))
    assert main(["router", "fit", str(path)]) == 0
    return path


def engine_for(path: Path) -> Cascade:
    return Cascade.from_yaml(path, providers={"p": FakeProvider("p", {"m": ["an answer"]})})


def test_router_fit_writes_plain_data_and_auto_picks_the_task(tmp_path: Path) -> None:
    path = fitted(tmp_path)
    written = yaml.safe_load(path.read_text())
    model_file = tmp_path / written["task_router"]["model"]
    data = json.loads(model_file.read_text())  # plain JSON, not a pickle
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(model_file.read_bytes())
    TaskClassifier.model_validate(data)
    assert data["tasks"] == ["code", "math"]
    with engine_for(path) as engine:
        held_out = [(p, "math") for p in MATH[15:]] + [(p, "code") for p in CODE[15:]]
        for prompt, task in held_out:
            result = engine.complete("auto", prompt)
            assert result.task == task, prompt
            assert result.task_probability is not None and result.task_probability >= 0.5
        named = engine.complete("math", MATH[0])
        assert named.task_probability is None
    rows = json.loads(json.dumps(engine_for(path).ledger.query(  # type: ignore[union-attr]
        "SELECT task, task_probability FROM runs ORDER BY ts")))
    assert [r[0] for r in rows[:-1]] == [t for _, t in held_out]
    assert all(r[1] is not None for r in rows[:-1]) and rows[-1][1] is None


def test_below_min_confidence_goes_to_default_task(tmp_path: Path) -> None:
    path = fitted(tmp_path, min_confidence=0.99)
    with engine_for(path) as engine:
        result = engine.complete("auto", HELLO)
        assert result.task == "chat"
    path = fitted(tmp_path, min_confidence=0.0)
    with engine_for(path) as engine:
        assert engine.complete("auto", HELLO).task in ("math", "code")


def test_auto_without_a_router_or_with_a_bad_one(tmp_path: Path) -> None:
    data = config(tmp_path)
    with Cascade.from_dict(data, providers={"p": FakeProvider("p", {"m": ["x"]})}) as engine:
        with pytest.raises(ConfigError, match="cascade router fit"):
            engine.complete("auto", "hi")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tasks": ["math", "code"], "hashing": {"buckets": 4},
                               "weights": [[0, 0, 0]], "bias": [0, 0]}))
    data["task_router"]["model"] = str(bad)
    with pytest.raises(ConfigError, match="task_router.model"):
        Cascade.from_dict(data)
    data["task_router"] = {"default_task": "nope"}
    with pytest.raises(ConfigError, match="task_router.default_task"):
        Cascade.from_dict(data)


def test_router_fit_needs_two_tasks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = config(tmp_path)
    data["tasks"]["code"]["examples"] = []
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["router", "fit", str(path)]) == 2
    assert "at least two tasks" in capsys.readouterr().err


def test_router_fit_from_ledger_history(tmp_path: Path) -> None:
    data = config(tmp_path)
    data["tasks"]["math"]["examples"] = []
    data["tasks"]["code"]["examples"] = []
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with Cascade.from_yaml(path, providers={"p": FakeProvider("p", {"m": ["x"]})}) as engine:
        for prompt in MATH[:15]:
            engine.complete("math", prompt)
        for prompt in CODE[:15]:
            engine.complete("code", prompt)
    out = tmp_path / "fitted.yaml"
    assert main(["router", "fit", str(path), "--from-ledger", str(tmp_path / "ledger.sqlite"),
                 "--out", str(out)]) == 0
    with engine_for(out) as engine:
        assert engine.complete("auto", MATH[17]).task == "math"
        assert engine.complete("auto", CODE[17]).task == "code"


def test_gateway_model_auto(tmp_path: Path) -> None:
    path = fitted(tmp_path)
    with engine_for(path) as engine, running(create_app(engine, api_keys=[])) as url:
        reply = httpx2.post(f"{url}/v1/chat/completions", timeout=30, json={
            "model": "auto", "messages": [{"role": "user", "content": CODE[18]}]})
        models = httpx2.get(f"{url}/v1/models", timeout=30).json()
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-cascade-task"] == "code"
    assert float(reply.headers["x-cascade-task-probability"]) >= 0.5
    assert "cascade/auto" in [m["id"] for m in models["data"]]


def test_fit_is_deterministic() -> None:
    examples = [(p, "math") for p in MATH] + [(p, "code") for p in CODE]
    assert fit_classifier(examples) == fit_classifier(examples)
