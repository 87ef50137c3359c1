"""What each command imports: start-up work is counted in modules loaded, not in seconds.

Every case runs in a fresh interpreter (this one has imported everything already) and reports
the exit code and ``sys.modules``. The seconds are measured in ``benchmarks/cli_startup.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cascade.demo import DEMO_CONFIG
from cascade.testing import MockLLMServer
from tests.conftest import live_config

ROOT = Path(__file__).resolve().parents[2]

# Runs ``main(argv)`` and prints {"code": exit code, "modules": [...]} as the last line.
PROBE = """
import json, sys
from cascade.cli.entry import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""
IMPORT_ONLY = """
import json, sys
import cascade
print(json.dumps({"code": 0, "modules": sorted(sys.modules)}))
"""

SDKS = {"openai", "anthropic", "httpx2", "aiohttp"}
WEB = {"starlette", "uvicorn", "prometheus_client"}
OFFLINE = {"numpy", "cascade.calibration", "cascade.replay", "cascade.gateway", "matplotlib"}
# Everything a config, the engine or the logs bring in: none of it is needed to print a version.
ENGINE = {"pydantic", "yaml", "structlog", "rich", "tenacity", "jsonschema", "textstat",
          "cascade.engine", "cascade.config", "cascade.ledger", "cascade.providers"}


def loaded(argv: list[str], *, script: str = PROBE, env: dict[str, str] | None = None,
           cwd: Path = ROOT) -> tuple[int, set[str]]:
    """Exit code and the top-level packages (plus cascade subpackages) a fresh process loaded."""
    environ = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                          env=environ, cwd=cwd, timeout=120, check=False)
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    names: set[str] = set()
    for module in report["modules"]:
        parts = module.split(".")
        names.add(parts[0])
        if parts[0] == "cascade" and len(parts) > 1:
            names.add(".".join(parts[:2]))
    return report["code"], names


def test_import_cascade_loads_no_engine() -> None:
    """``import cascade`` loads the errors and types, not the engine or its dependencies."""
    code, names = loaded([], script=IMPORT_ONLY)
    assert code == 0
    assert "cascade.errors" in names  # the probe sees what was loaded
    assert not names & (ENGINE | SDKS | WEB | OFFLINE)


def test_version_loads_only_the_parser() -> None:
    """``cascade --version`` loads no config, engine, logging, SDK or numpy."""
    code, names = loaded(["--version"])
    assert code == 0
    assert "cascade.cli" in names
    assert not names & (ENGINE | SDKS | WEB | OFFLINE)


def test_validate_loads_no_sdk_numpy_or_web_stack() -> None:
    """``cascade validate`` builds the config without importing an SDK, numpy or the gateway."""
    code, names = loaded(["validate", "configs/example.yaml"])
    assert code == 0
    assert {"pydantic", "yaml", "cascade.engine", "cascade.providers"} <= names
    assert not names & (SDKS | WEB | OFFLINE | {"jsonschema", "textstat"})


def test_replay_run_loads_no_sdk_or_numpy() -> None:
    """``cascade run`` on recordings answers without importing an SDK or numpy."""
    query = "gsm8k-3"  # the first recording of the bundled GSM8K set
    code, names = loaded(["run", str(DEMO_CONFIG), "math", "q", "--query-id", query])
    assert code == 0
    assert not names & (SDKS | WEB | OFFLINE)


@pytest.mark.usefixtures("keys")
def test_sdk_is_imported_by_the_first_call(tmp_path: Path, server: MockLLMServer) -> None:
    """A fresh process imports the OpenAI SDK when its provider makes a call, and the call works;
    the Anthropic SDK, whose rung is never reached, stays unloaded."""
    server.script("gpt-4o-mini", ["We open at nine every day"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(live_config(server)))
    code, names = loaded(["run", str(path), "faq", "When do you open?"], cwd=tmp_path)
    assert code == 0
    assert len(server.requests) == 1
    assert "openai" in names
    assert not names & ({"anthropic", "numpy"} | WEB)
