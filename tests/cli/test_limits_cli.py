"""``limits:`` and ``cache.redis`` in the config, as ``cascade validate`` and ``cascade serve`` see
them: unknown tasks and unset variables are one-line errors naming the key path; limits without
Redis are a warning that they hold per process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cascade.cli.entry import main

EXAMPLE = Path(__file__).parent.parent.parent / "configs/example.yaml"


def write(tmp_path: Path, **sections: Any) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data.update(sections)
    data["ledger"] = {"path": str(tmp_path / "ledger.sqlite")}
    path = tmp_path / "limits.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.usefixtures("keys")
def test_an_unknown_task_under_limits_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """limits.tasks.<name> must be a task: one line naming the key path and the tasks."""
    path = write(tmp_path, limits={"tasks": {"fqa": {"rpm": 5}}})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}: limits.tasks.fqa: unknown task 'fqa' (defined: faq)\n"


@pytest.mark.usefixtures("keys")
def test_a_bad_limit_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """rpm 0 and an unknown on_error are schema errors naming their key paths."""
    path = write(
        tmp_path,
        limits={"tasks": {"faq": {"rpm": 0}}, "redis": {"url_env": "R", "on_error": "maybe"}},
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "limits.tasks.faq.rpm" in err
    assert "limits.redis.on_error" in err


@pytest.mark.usefixtures("keys")
def test_validate_says_limits_without_redis_are_per_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Limits but no limits.redis: validate passes, warns, and lists the limit."""
    path = write(tmp_path, limits={"tasks": {"faq": {"rpm": 600, "tpm": 200000}}})
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "rate limits are per process (no limits.redis)" in err
    assert "rate limit (task faq): 600 rpm, per process" in out


@pytest.mark.usefixtures("keys")
def test_validate_with_redis_has_no_per_process_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """limits.redis set (and its variable): no warning; the limit is shared."""
    monkeypatch.setenv("CASCADE_TEST_LIMITS_REDIS", "redis://127.0.0.1:6379/0")
    path = write(
        tmp_path,
        limits={"redis": {"url_env": "CASCADE_TEST_LIMITS_REDIS"}, "tasks": {"faq": {"rpm": 600}}},
    )
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "per process" not in err
    assert "rate limit (task faq): 600 rpm, shared through Redis" in out


@pytest.mark.usefixtures("keys")
@pytest.mark.parametrize("command", ["validate", "serve"])
@pytest.mark.parametrize("section", ["limits", "cache"])
def test_an_unset_redis_variable_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    section: str,
) -> None:
    """limits.redis.url_env or cache.redis.url_env naming an unset variable: exit 2, one
    line naming the variable and the key path; serve starts nothing."""
    monkeypatch.delenv("CASCADE_TEST_UNSET", raising=False)
    redis = {"redis": {"url_env": "CASCADE_TEST_UNSET"}}
    extra: dict[str, Any] = {section: redis}
    if section == "cache":
        data = yaml.safe_load(EXAMPLE.read_text())
        extra["tasks"] = data["tasks"]
        extra["tasks"]["faq"]["cache"] = {"ttl_s": 60}
    path = write(tmp_path, **extra)
    args = [command, str(path)] + (["--port", "0"] if command == "serve" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "environment variable CASCADE_TEST_UNSET (the Redis URL) is not set" in err
    assert f"{section}.redis.url_env" in err
