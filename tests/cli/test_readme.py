"""The README's YAML and Python example work as written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from cascade.testing import MockLLMServer, Reply

ROOT = Path(__file__).parent.parent.parent
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_yaml_example_is_the_shipped_config() -> None:
    """The YAML shown is exactly configs/example.yaml, so it cannot drift."""
    assert blocks("yaml")[0] == (ROOT / "configs/example.yaml").read_text()


@pytest.mark.usefixtures("keys")
def test_python_example_runs(server: MockLLMServer, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """The Python snippet runs verbatim (the SDKs' base-URL variables point at a loopback server)."""
    monkeypatch.setenv("OPENAI_BASE_URL", server.openai_url)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.anthropic_url)
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs/example.yaml", tmp_path / "configs/example.yaml")
    monkeypatch.chdir(tmp_path)
    server.script("gpt-4o-mini", ["Nine."])
    server.script("claude-sonnet-4-6", [Reply("We are open from nine to five.", input_tokens=12,
                                              output_tokens=8)])
    exec(compile(blocks("python")[0], "README.md", "exec"), {})
    # structlog, unconfigured, prints its events to stdout too; keep the example's own lines.
    out = "".join(line for line in capsys.readouterr().out.splitlines(keepends=True)
                  if "cascade.step" not in line and "cascade.run" not in line)
    assert out.startswith("We are open from nine to five.\nsonnet True $")
    assert "1 mini escalate 1" in out
    assert (tmp_path / "configs" / "cascade-ledger.sqlite").exists()  # beside the config
