"""``type: callable`` imports a function from beside the config or the working directory."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cascade import Cascade, ConfigError
from cascade.testing import FakeProvider

CHECK = """
from cascade import Verdict

def has_citation(request, completion):
    ok = "[1]" in completion.text
    return Verdict(evaluator="has_citation", passed=ok, reason={where!r})
"""


@pytest.fixture
def package() -> Iterator[str]:
    """A package name no other test uses; it and names it starts are forgotten afterwards."""
    name = f"checks_{uuid.uuid4().hex}"
    yield name
    for loaded in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[loaded]


def write_package(folder: Path, name: str, where: str, source: str = CHECK) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text("")
    (folder / name / "checks.py").write_text(source.format(where=where))


def write_config(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cascade.yaml"  # rewritten in place: the folder's listing stays the same
    path.write_text(yaml.safe_dump({
        "providers": {"p": {"type": "openai"}},
        "models": {k: {"provider": "p", "name": k, "price": {"input": 1, "output": 1}}
                   for k in ("small", "large")},
        "ledger": {"path": None},
        "tasks": {"t": {"ladder": ["small", "large"], "evaluators": [
            {"type": "callable", "path": f"{name}.checks:has_citation"}]}},
    }))
    return path


def run(path: Path) -> list[str]:
    fake = FakeProvider("p", {"small": ["no source"], "large": ["see [1]"]})
    with Cascade.from_yaml(path, providers={"p": fake}) as engine:
        result = engine.complete("t", "q")
    assert result.model == "large"
    return [step.verdicts[0].reason for step in result.steps]


def test_module_beside_the_config_loads_from_another_directory(
    tmp_path: Path, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package next to the config file imports with no PYTHONPATH, whatever the cwd."""
    config = write_config(tmp_path / "project", package)
    write_package(tmp_path / "project", package, "beside the config")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    before = list(sys.path)
    assert run(config) == ["beside the config", "beside the config"]
    assert sys.path == before  # searched while importing only


def test_module_in_the_working_directory_loads(
    tmp_path: Path, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package in the working directory imports when the config lives elsewhere."""
    config = write_config(tmp_path / "configs", package)
    write_package(tmp_path / "work", package, "in the working directory")
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    before = list(sys.path)
    assert run(config) == ["in the working directory"] * 2
    assert sys.path == before


def test_the_config_folder_comes_before_the_working_directory(
    tmp_path: Path, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the same package in both, the one beside the config is imported."""
    config = write_config(tmp_path / "project", package)
    write_package(tmp_path / "project", package, "beside the config")
    write_package(tmp_path / "work", package, "in the working directory")
    monkeypatch.chdir(tmp_path / "work")
    assert run(config) == ["beside the config"] * 2


def test_missing_module_names_the_path_key_and_the_folders_searched(
    tmp_path: Path, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module found nowhere is a ConfigError at the path key listing where it was looked for."""
    config = write_config(tmp_path / "project", package)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(ConfigError) as info:
        Cascade.from_yaml(config, providers={"p": FakeProvider("p")})
    assert info.value.location == "tasks.t.evaluators[0].path"
    assert f"no module named {package!r}" in info.value.message
    assert str((tmp_path / "project").resolve()) in info.value.message
    assert str((tmp_path / "work").resolve()) in info.value.message


def test_module_that_fails_to_import_is_not_called_missing(
    tmp_path: Path, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module that raises while importing is a ConfigError saying so, with the cause."""
    config = write_config(tmp_path / "project", package)
    write_package(tmp_path / "project", package, "", source="1 / 0\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="failed to import: ZeroDivisionError") as info:
        Cascade.from_yaml(config, providers={"p": FakeProvider("p")})
    assert info.value.location == "tasks.t.evaluators[0].path"


def test_module_written_after_an_earlier_load_is_found(
    tmp_path: Path, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder Python has listed before is listed again, so a module added since is found."""
    project = tmp_path / "project"
    config = write_config(project, package)
    write_package(project, package, "first")
    monkeypatch.chdir(tmp_path)
    assert run(config) == ["first"] * 2
    # The new package changes the folder's listing but not its mtime, which is what the import
    # system looks at before it lists a folder again (two writes within one clock tick).
    listed = project.stat()
    write_package(project, f"{package}_later", "added later")
    os.utime(project, ns=(listed.st_atime_ns, listed.st_mtime_ns))
    write_config(project, f"{package}_later")
    assert run(config) == ["added later"] * 2
