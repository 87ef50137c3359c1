"""Issue 22, item 14: a task router's weights are converted to arrays once, at load.

A valid 34 MB task router cost 0.7 s of event loop per ``auto`` request, because its weight
lists were converted on every call. Counted here, not timed: the number of list-to-array
conversions while the gateway serves ``auto`` requests (``benchmarks/task_router_load.py``
has the timings).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest

from cascade import Cascade
from cascade.gateway.app import create_app, running
from cascade.testing import FakeProvider
from tests.models.test_task_router import CODE, MATH, fitted


class CountingNumpy:
    """numpy, counting conversions of Python lists to arrays."""

    def __init__(self) -> None:
        self.conversions = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    def asarray(self, value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, list):
            self.conversions += 1
        return np.asarray(value, *args, **kwargs)

    def array(self, value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, list):
            self.conversions += 1
        return np.array(value, *args, **kwargs)


def test_14_auto_requests_convert_no_weights(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading converts the weights; ten auto requests through the gateway convert none."""
    path = fitted(tmp_path)
    counting = CountingNumpy()
    # task_router imports numpy where it computes (CLI start-up), so the counting stand-in goes
    # where that import finds it; it hands every other use on to numpy.
    monkeypatch.setitem(sys.modules, "numpy", counting)
    engine = Cascade.from_yaml(path, providers={"p": FakeProvider("p", {"m": ["an answer"]})})
    try:
        assert counting.conversions == 2  # weights and bias, once
        with running(create_app(engine, api_keys=[])) as url:
            tasks = [httpx2.post(f"{url}/v1/chat/completions", timeout=30, json={
                "model": "auto", "messages": [{"role": "user", "content": prompt}]},
            ).headers["x-cascade-task"] for prompt in [*MATH[15:20], *CODE[15:20]]]
    finally:
        engine.close()
    assert tasks == ["math"] * 5 + ["code"] * 5
    assert counting.conversions == 2


def test_14_weights_cannot_be_changed_in_place(tmp_path: Path) -> None:
    """The arrays every request shares are read-only."""
    path = fitted(tmp_path)
    with Cascade.from_yaml(path, providers={"p": FakeProvider("p", {"m": ["x"]})}) as engine:
        assert engine.task_router is not None
        probabilities = engine.task_router.classifier.probabilities(MATH[16])
        assert max(probabilities, key=probabilities.__getitem__) == "math"
        assert engine.task_router.classifier.weights  # the plain data is still there to save
        with pytest.raises(ValueError, match="read-only"):
            engine.task_router.classifier._arrays.weights[0, 0] = 1.0
