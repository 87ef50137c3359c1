"""Issue 22, item 14: what the loaders read is bounded, and each refusal is one line.

YAML nested 1,000 deep used to end in a 3,000-line ``RecursionError``; a ``model:`` path of
``/dev/zero`` was read to 2.7 GB and a FIFO hung the load; the task router file had no size
limit. Each is now a one-line ``ConfigError`` naming the file and the key, from ``cascade
validate``, ``cascade serve`` and ``Cascade.from_yaml`` alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from cascade import Cascade, ConfigError
from cascade.cli import main
from cascade.config import load_config
from cascade.config.loading import MAX_YAML_DEPTH
from cascade.config.paths import read_capped
from tests.gateway.test_attacks import NOWHERE, attack_config


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.usefixtures("keys")
@pytest.mark.parametrize("nesting", ["flow", "block"])
def test_14_yaml_nested_1000_deep_is_one_line(tmp_path: Path, nesting: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """validate and serve fail in one line (exit 2); the loader raises ConfigError."""
    data = attack_config(NOWHERE, tmp_path / "l.sqlite")
    data["tasks"]["faq"]["params"] = {"x": "NESTED"}
    text = yaml.safe_dump(data)
    if nesting == "flow":
        text = text.replace("NESTED", deep(1000))
    else:
        block = "".join(f"\n{'  ' * (i + 4)}k{i}:" for i in range(1000)) + " 1"
        text = text.replace(" NESTED", block)
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    for argv in (["validate", str(path)], ["serve", str(path), "--port", "0"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err[:500]
        assert f"nested deeper than {MAX_YAML_DEPTH} levels" in err
    with pytest.raises(ConfigError, match="nested deeper"):
        Cascade.from_yaml(path)


def test_14_yaml_nested_within_the_bound_loads(tmp_path: Path) -> None:
    """A config nested 60 deep (deeper than any real one) is still read."""
    data = attack_config(NOWHERE, tmp_path / "l.sqlite")
    data["tasks"]["faq"]["params"] = {"x": "NESTED"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data).replace("NESTED", deep(60)))
    assert load_config(path).tasks["faq"].params["x"] is not None


def _fifo(tmp_path: Path) -> Path:
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    return fifo


# Where a config names a model file, and how to point it at a path.
def _quality(data: dict[str, Any], path: str) -> None:
    data["tasks"]["faq"]["evaluators"] = [{"type": "quality_model", "min": 0.5, "model": path}]


def _rung_router(data: dict[str, Any], path: str) -> None:
    data["tasks"]["faq"]["router"] = {"model": path}


def _task_router(data: dict[str, Any], path: str) -> None:
    data["task_router"] = {"model": path}


PLACES = {"quality_model": _quality, "router": _rung_router, "task_router": _task_router}
KEY_PATHS = {"quality_model": "tasks.faq.evaluators[0].model", "router": "tasks.faq.router.model",
             "task_router": "task_router.model"}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
@pytest.mark.usefixtures("keys")
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "directory"])
def test_14_model_path_that_is_not_a_file_is_one_line(
        tmp_path: Path, place: str, target: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A model: path of /dev/zero, a FIFO or a directory: one line naming the key, exit 2."""
    where = {"/dev/zero": "/dev/zero", "fifo": str(_fifo(tmp_path)) if target == "fifo" else "",
             "directory": str(tmp_path)}[target]
    data = attack_config(NOWHERE, tmp_path / "l.sqlite")
    PLACES[place](data, where)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err[:500]
    assert "not a regular file" in err
    assert f": {KEY_PATHS[place]}: " in err
    with pytest.raises(ConfigError, match="not a regular file"):
        Cascade.from_yaml(path)


@pytest.mark.usefixtures("keys")
@pytest.mark.parametrize("place", PLACES)
def test_14_model_file_over_the_cap_is_refused(tmp_path: Path, place: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each model file is read with a byte cap (a cap lowered to 1 KB here)."""
    for module, name in (("evaluators.quality", "MAX_MODEL_BYTES"),
                         ("cascade.models.router", "MAX_ROUTER_BYTES"),
                         ("cascade.models.task_router", "MAX_TASK_ROUTER_BYTES")):
        monkeypatch.setattr(f"{module}.{name}", 1024)
    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 2000 + "0]")
    data = attack_config(NOWHERE, tmp_path / "l.sqlite")
    PLACES[place](data, str(big))
    with pytest.raises(ConfigError, match="larger than 1,024 bytes") as info:
        Cascade.from_dict(data)
    assert "\n" not in str(info.value)


def test_14_read_capped_stops_at_the_cap() -> None:
    """/dev/zero as a config file (pipes are allowed there) ends at the cap, not at 2.7 GB."""
    with pytest.raises(ConfigError, match="larger than 4,096 bytes"):
        read_capped("/dev/zero", 4096, regular=False)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_capped("/dev/zero", 4096)
