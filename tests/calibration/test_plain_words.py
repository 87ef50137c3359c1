"""What cascade calibrate says: the guarantee in one plain sentence, the method only with
--verbose, "keep the top rung alone" once with why and what to try, and targets refused or
warned about before anything runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from cascade.calibration.calibrate import calibrate
from cascade.calibration.guarantee import betting_pvalue, queries_needed
from cascade.cli import main
from cascade.demo import DATASET, DEMO_CONFIG
from cascade.providers.dataset import ReplayRecord, write_dataset

DEMO = (DEMO_CONFIG, DATASET)  # 300 recorded GSM8K queries, Mixtral then GPT-4 (key gpt4)


def _calibrate(cfg: Path, train: Path, out: Path, *extra: str) -> int:
    return main(["calibrate", str(cfg), str(train), "--out", str(out), *extra])


def test_guarantee_is_one_plain_sentence(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The guarantee names the confidence, R as a percentage, the data and the top rung."""
    code = _calibrate(*DEMO, tmp_path / "o.yaml", "--target-quality", "0.9", "--delta", "0.2")
    out = capsys.readouterr().out
    assert code == 0
    guarantee = [line for line in out.splitlines() if line.startswith("guarantee:")]
    assert guarantee == ["guarantee: With 80% confidence, quality on traffic like "
                         "gsm8k-300.jsonl.gz stays at least 90% of always-gpt4's."]


def test_method_only_with_verbose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """How the guarantee was obtained is a second line, printed only with --verbose."""
    args = ["--target-quality", "0.9"]
    assert _calibrate(*DEMO, tmp_path / "o.yaml", *args) == 0
    assert "learn-then-test" not in capsys.readouterr().out
    assert _calibrate(*DEMO, tmp_path / "o.yaml", *args, "--verbose") == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("guarantee:"))
    assert lines[at + 1].startswith("method: learn-then-test")
    assert "p = " in lines[at + 1]


def test_keep_top_alone_said_once_with_why_and_an_estimate() -> None:
    """On the bundled 300 GSM8K queries at R = 0.95, the 150 certify queries are too few; the
    message says so once, estimates how many would do, and names what to try."""
    result = calibrate(DEMO_CONFIG, DATASET, target_quality=0.95)
    assert result.ladder == ("gpt4",)
    assert result.message.count("keep the top rung alone") == 1
    assert result.message.startswith(
        "keep the top rung alone: 150 queries are too few to certify a cheaper policy at this "
        "target; about ")
    needed = result.guarantee["certify_queries_needed"]
    assert needed > 150
    assert f"about {float(f'{needed:.2g}'):,.0f} would" in result.message  # two figures
    assert "labelled queries in all (a rough estimate" in result.message
    assert "Try a lower --target-quality or more labelled queries." in result.message


def test_keep_top_alone_without_a_margin_gives_no_number() -> None:
    """When no cheaper policy even reached the target (R = 1 on GSM8K), no count is invented."""
    result = calibrate(*DEMO, target_quality=1.0)
    assert result.message.count("keep the top rung alone") == 1
    assert "no cheaper policy reached the target on the 150 queries" in result.message
    assert "would be needed" not in result.message
    assert result.guarantee["certify_queries_needed"] is None


def test_queries_needed_is_none_within_the_noise() -> None:
    """A mean at or below zero, or less than one standard error above it, gives no estimate."""
    rng = np.random.default_rng(0)
    assert queries_needed(np.full(150, -0.05), -0.9, 1.0, 0.1) is None
    noisy = rng.choice([-0.9, 0.1], size=150, p=[0.1, 0.9])  # mean 0.0 give or take
    noisy = noisy - noisy.mean() + 0.2 * noisy.std() / np.sqrt(150)
    assert queries_needed(noisy, -0.9, 1.0, 0.1) is None


def test_queries_needed_is_where_the_test_starts_to_pass() -> None:
    """d that fails at 150 queries gets an estimate above 150, at which fresh draws from the
    same distribution pass the same test about half the time."""
    rng = np.random.default_rng(1)
    values, p = np.array([-0.9, 0.1]), [0.077, 0.923]  # true mean 0.023, like GSM8K at 0.95

    def draw(n: int) -> np.ndarray:
        return rng.choice(values, size=n, p=p)

    observed = draw(150)
    while not (betting_pvalue(observed, -0.9, 1.0, 0.1) > 0.1 and observed.mean() > 0.02):
        observed = draw(150)
    needed = queries_needed(observed, -0.9, 1.0, 0.1)
    assert needed is not None
    assert needed > 150
    passed = sum(betting_pvalue(draw(needed), -0.9, 1.0, 0.1) <= 0.1 for _ in range(60))
    assert 0.15 <= passed / 60 <= 0.9  # a rough estimate: "about half", give or take


def test_percentage_target_is_refused_up_front(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """--target-quality 90 exits 2 with one line saying to use 0.9, before reading any file."""
    code = _calibrate(tmp_path / "missing.yaml", tmp_path / "missing.jsonl",
                      tmp_path / "o.yaml", "--target-quality", "90")
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "error: --target-quality 90 looks like a percentage; it is a fraction of always-top's "
        "quality: use 0.9"]


def test_delta_outside_zero_one_is_one_line(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """--delta 10 exits 2 with one line, not a traceback from the library's ValueError."""
    code = _calibrate(tmp_path / "missing.yaml", tmp_path / "missing.jsonl",
                      tmp_path / "o.yaml", "--target-quality", "0.9", "--delta", "10")
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "error: --delta 10 is not a probability between 0 and 1 (0.1 means 90% confidence)"]


def test_matching_the_top_model_is_warned_before_running(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """At R = 1 the command says, before its first progress line, that no finite sample
    certifies matching the top model, suggests R <= 0.98, and still runs."""
    code = _calibrate(*DEMO, tmp_path / "o.yaml", "--target-quality", "1")
    err = capsys.readouterr().err
    assert code == 0
    first = err.splitlines()[0]
    assert first.startswith("note: --target-quality 1 asks for always-top's quality")
    assert "no finite sample certifies matching the top model" in first
    assert "--target-quality 0.98 or lower" in first
    assert any("train queries" in line for line in err.splitlines()[1:])  # it still runs


def test_two_tasks_name_the_task_flag(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """With two tasks in config and data, the error names --task, not the Python keyword."""
    ladder = {"ladder": ["m"], "evaluators": []}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "providers": {"rec": {"type": "replay"}},
        "models": {"m": {"provider": "rec", "name": "m", "price": {"input": 1, "output": 1}}},
        "ledger": {"path": None}, "tasks": {"t": ladder, "u": ladder}}))
    write_dataset(tmp_path / "train.jsonl", [
        ReplayRecord.model_validate({
            "id": f"q{i}", "task": "tu"[i % 2], "messages": [{"role": "user", "content": "q"}],
            "responses": {"m": {"text": "a", "score": 1.0}}})
        for i in range(4)])
    code = _calibrate(cfg, tmp_path / "train.jsonl", tmp_path / "o.yaml",
                      "--target-quality", "0.9")
    err = capsys.readouterr().err
    assert code == 2
    assert "pass --task" in err
    assert "one of t, u" in err
    assert "pass task=" not in err
