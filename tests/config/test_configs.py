"""Every config shipped in configs/ loads and builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade import Cascade

CONFIGS = sorted((Path(__file__).parent.parent.parent / "configs").glob("*.yaml"))


def test_there_are_configs() -> None:
    """The configs folder is not empty (so the next test cannot pass vacuously)."""
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds(path: Path) -> None:
    """The file validates and every task's evaluators build."""
    engine = Cascade.from_yaml(path, ledger=False)
    assert engine.tasks
