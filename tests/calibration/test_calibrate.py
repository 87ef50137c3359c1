"""Calibration: thresholds that reach the target, dropped rungs, failures, and sim == engine."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import cascade.calibration.threshold_search as threshold_search
from cascade import Cascade, CascadeError, ConfigError, Request
from cascade.calibration.calibrate import GUARD, write_calibrated
from cascade.calibration.calibrate import calibrate as _calibrate
from cascade.calibration.simulation import ReplayTable, build_views, grids, simulate, subsets
from cascade.calibration.threshold_search import calibrated_mapping
from cascade.config import load_config, parse_config
from cascade.providers.dataset import ReplayRecord, load_dataset, write_dataset
from cascade.replay.bench import run_bench
from cascade.types import Completion, Verdict

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "routellm"
COST = {"small": 1e-5, "mid": 2e-4, "large": 1e-3}


def calibrate(*args: Any, **kwargs: Any) -> Any:
    """These tests pin the per-evaluator threshold search (``method="thresholds"``)."""
    return _calibrate(*args, method="thresholds", **kwargs)

Answer = dict[str, Any]
Maker = Callable[[int, np.random.Generator], dict[str, Answer]]


def answer(text: str, score: float, model: str, logprob: float | None = None,
           cost: float | None = None) -> Answer:
    out: Answer = {"text": text, "score": score,
                   "cost_usd": COST[model] if cost is None else cost}
    if logprob is not None:
        out["logprob"] = logprob
    return out


def dataset(path: Path, n: int, make: Maker, seed: int = 0) -> Path:
    """Write ``n`` records whose responses ``make(i, rng)`` returns."""
    rng = np.random.default_rng(seed)
    write_dataset(path, [
        ReplayRecord.model_validate({
            "id": f"q{i}", "task": "t",
            "messages": [{"role": "user", "content": f"question {i}?"}],
            "responses": make(i, rng)})
        for i in range(n)])
    return path


def config(tmp_path: Path, ladder: Sequence[Any], evaluators: list[dict[str, Any]] | None = None,
           name: str = "c.yaml", **task: Any) -> Path:
    data = {
        "providers": {"rec": {"type": "replay"}},
        "models": {k: {"provider": "rec", "name": k, "price": {"input": 1, "output": 2}}
                   for k in COST},
        "ledger": {"path": None},
        "tasks": {"t": {"ladder": list(ladder), "evaluators": evaluators or [], **task}},
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def separable(i: int, rng: np.random.Generator) -> dict[str, Answer]:
    """small is right 70% of the time and its logprob/confidence says when; large always is."""
    good = rng.random() < 0.7
    p = rng.uniform(0.95, 0.99) if good else rng.uniform(0.22, 0.45)
    text = f"the answer is {i}\nConfidence: {round(p, 4)}"
    return {"small": answer(text, float(good), "small", math.log(p)),
            "large": answer(f"the answer is {i}", 1.0, "large", -0.1)}


def noisy(i: int, rng: np.random.Generator) -> dict[str, Answer]:
    """Three rungs whose logprobs are informative but overlap; large is right 90% of the time."""
    out = {}
    for model, skill in (("small", 0.6), ("mid", 0.75), ("large", 0.9)):
        good = rng.random() < skill
        logprob = -abs(rng.normal(0.1 if good else 0.6, 0.25))
        out[model] = answer(" ".join(["w"] * int(rng.integers(1, 30))), float(good), model,
                            logprob)
    return out


def test_threshold_lands_between_the_groups(tmp_path: Path) -> None:
    """When logprob separates good from bad first answers, min falls between the groups."""
    data = dataset(tmp_path / "d.jsonl", 150, separable)
    cfg = config(tmp_path, ["small", "large"], [{"type": "logprob", "min": 0.5}])
    result = calibrate(cfg, data, target_quality=1.0)
    assert result.status == "ok", result.message
    assert result.ladder == ("small", "large")
    chosen = result.thresholds["small"]["logprob.min"]
    assert 0.45 < chosen <= 0.95
    report = result.train
    assert report["cost_per_query"] < 0.5 * report["baselines"]["always_top"]["cost_per_query"]
    assert report["quality"] == pytest.approx(report["baselines"]["always_top"]["quality"])


def test_self_confidence_threshold_is_tuned(tmp_path: Path) -> None:
    """self_confidence's min is tuned the same way, from the confidence the answers state."""
    data = dataset(tmp_path / "d.jsonl", 150, separable)
    cfg = config(tmp_path, ["small", "large"], [{"type": "self_confidence", "min": 0.99}])
    result = calibrate(cfg, data, target_quality=1.0)
    assert result.status == "ok", result.message
    assert 0.45 < result.thresholds["small"]["self_confidence.min"] <= 0.95


def test_reaches_target_on_train(tmp_path: Path) -> None:
    """The calibrated cascade replayed by run_bench keeps quality >= R x always-top on train."""
    data = dataset(tmp_path / "d.jsonl", 300, noisy)
    test = dataset(tmp_path / "t.jsonl", 300, noisy, seed=1)
    cfg = config(tmp_path, ["small", "mid", "large"], [{"type": "logprob", "min": 0.5}])
    result = calibrate(cfg, data, target_quality=0.9, test=test)
    assert result.status == "ok", result.message
    top = result.train["baselines"]["always_top"]
    assert result.train["quality"] >= 0.9 * top["quality"]
    assert result.train["target_met"] is True
    assert result.train["cost_per_query"] < top["cost_per_query"]
    assert result.guard == GUARD
    assert result.test is not None
    assert result.test["n"] == 300
    lo, hi = result.test["quality_ratio_ci95"]
    assert lo <= result.test["quality"] / result.test["baselines"]["always_top"]["quality"] <= hi


def test_useless_middle_rung_is_dropped(tmp_path: Path) -> None:
    """A middle rung that is never right only adds cost, so it is removed from the ladder."""
    def make(i: int, rng: np.random.Generator) -> dict[str, Answer]:
        out = separable(i, rng)
        out["mid"] = answer(f"wrong {i}", 0.0, "mid", float(-rng.uniform(0.0, 2.0)))
        return out

    data = dataset(tmp_path / "d.jsonl", 150, make)
    cfg = config(tmp_path, ["small", "mid", "large"], [{"type": "logprob", "min": 0.5}])
    result = calibrate(cfg, data, target_quality=1.0)
    assert result.status == "ok", result.message
    assert result.ladder == ("small", "large")
    written = result.config["tasks"]["t"]["ladder"]
    assert [r if isinstance(r, str) else r["model"] for r in written] == ["small", "large"]


def test_top_alone_when_nothing_cheaper_is_good_enough(tmp_path: Path) -> None:
    """If no cheaper cascade keeps the quality, the top rung alone is the answer."""
    def make(i: int, rng: np.random.Generator) -> dict[str, Answer]:
        return {"small": answer("nope", 0.0, "small", -0.01),
                "large": answer("yes", 1.0, "large", -0.01)}

    data = dataset(tmp_path / "d.jsonl", 40, make)
    result = calibrate(config(tmp_path, ["small", "large"], [{"type": "logprob", "min": 0.5}]),
                       data, target_quality=0.95)
    assert result.status == "ok"
    assert result.ladder == ("large",)
    assert "top rung alone" in result.message


def test_impossible_target_fails_with_a_message(tmp_path: Path) -> None:
    """R = 1.2 cannot be met: status failed, a message, no config, nothing to write."""
    data = dataset(tmp_path / "d.jsonl", 100, separable)
    result = calibrate(config(tmp_path, ["small", "large"], [{"type": "logprob", "min": 0.5}]),
                       data, target_quality=1.2)
    assert result.status == "failed"
    assert "unreachable" in result.message
    assert result.config == {}
    assert result.ladder == ()
    with pytest.raises(CascadeError, match="calibration failed"):
        write_calibrated(result, tmp_path / "out.yaml")
    assert not (tmp_path / "out.yaml").exists()


def test_costlier_than_always_top_is_a_failure(tmp_path: Path) -> None:
    """A cascade that meets R only by costing more than always-top is reported as failed."""
    def make(i: int, rng: np.random.Generator) -> dict[str, Answer]:
        large_right = i % 5 != 0  # 80%
        small_right = not large_right or i % 5 in (1, 2)
        lp = -0.01 if small_right else -2.0
        return {"small": answer("s", float(small_right), "small", lp, cost=9e-4),
                "large": answer("l", float(large_right), "large", -0.01)}

    data = dataset(tmp_path / "d.jsonl", 100, make)
    result = calibrate(config(tmp_path, ["small", "large"], [{"type": "logprob", "min": 0.5}]),
                       data, target_quality=1.1)
    assert result.status == "failed"
    assert "more than always-top" in result.message
    assert result.train["cost_per_query"] > result.train["baselines"]["always_top"][
        "cost_per_query"]


def tricky(i: int, rng: np.random.Generator) -> dict[str, Answer]:
    """Missing and empty answers, agreement between rungs, words of varying length."""
    out: dict[str, Answer] = {}
    truth = str(i % 3)
    for model, skill in (("small", 0.5), ("mid", 0.7), ("large", 0.85)):
        roll = rng.random()
        if (roll < 0.08 and model != "large") or roll < 0.03:
            continue  # no recording: an error step
        good = rng.random() < skill
        said = truth if good else str(int(rng.integers(3, 6)))
        words = " ".join(["w"] * int(rng.integers(0, 12)))
        text = "" if roll > 0.96 else f"{words} final {said}"
        out[model] = answer(text, float(good), model, float(-rng.uniform(0, 1.5)))
    return out or {"large": answer("x", 0.0, "large")}


TRICKY_EVALUATORS: list[dict[str, Any]] = [
    {"type": "agreement", "recipe": "final_number", "min_agree": 0.5},
    {"type": "length", "min_words": 2, "max_words": 12},
]


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_simulation_equals_run_bench(tmp_path: Path, target: float) -> None:
    """The simulated train cost and quality of the chosen point equal run_bench's to 1e-9."""
    data = dataset(tmp_path / "d.jsonl", 200, tricky)
    cfg = config(tmp_path, ["small", "mid", "large"], TRICKY_EVALUATORS)
    result = calibrate(cfg, data, target_quality=target)
    assert result.status == "ok", result.message
    assert result.simulated_train["cost_per_query"] == pytest.approx(
        result.train["cost_per_query"], abs=1e-9)
    assert result.simulated_train["quality"] == pytest.approx(result.train["quality"], abs=1e-9)


def test_simulator_matches_engine_at_every_point(tmp_path: Path) -> None:
    """For every kept-rung subset and sampled thresholds, simulate() equals run_bench."""
    data = dataset(tmp_path / "d.jsonl", 80, tricky, seed=3)
    cfg_path = config(tmp_path, ["small", "mid", "large"], TRICKY_EVALUATORS)
    cfg, raw, records = load_config(cfg_path), yaml.safe_load(cfg_path.read_text()), \
        load_dataset(data)
    table = ReplayTable(cfg, raw, str(cfg_path), records, "t", tune=True)
    grid = grids(table)
    rng = np.random.default_rng(0)
    checked = 0
    for subset in subsets(3):
        views = build_views(table, subset, grid)
        for _ in range(4):
            picks = [int(rng.integers(len(v.accept))) for v in views]
            cost, quality = simulate(views, np.array([picks]))
            mapping, _ = calibrated_mapping(raw, table, "t", subset, grid, picks)
            report = run_bench(parse_config(mapping), records, task="t").tasks["t"]
            assert cost.mean() == pytest.approx(report["cost_per_query"], abs=1e-12)
            assert quality.mean() == pytest.approx(report["quality"], abs=1e-12)
            checked += 1
    assert checked == 16


def test_written_yaml_loads_and_carries_its_provenance(tmp_path: Path) -> None:
    """The written file has a comment header and is a config Cascade and run_bench accept."""
    data = dataset(tmp_path / "d.jsonl", 150, separable)
    test = dataset(tmp_path / "t.jsonl", 100, separable, seed=1)
    cfg = config(tmp_path, ["small", "large"], [{"type": "logprob", "min": 0.5}],
                 params={"temperature": 0})
    result = calibrate(cfg, data, target_quality=1.0, test=test)
    out = tmp_path / "calibrated.yaml"
    write_calibrated(result, out, command="cascade calibrate c.yaml d.jsonl --target-quality 1")
    text = out.read_text()
    assert text.startswith("# Calibrated by cascade calibrate on ")
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any(GUARD in line for line in header)
    assert any(line.startswith("# train (n=150)") for line in header)
    assert any(line.startswith("# test (n=100)") for line in header)
    assert any("--target-quality 1" in line for line in header)
    with Cascade.from_yaml(out, ledger=False) as engine:
        assert list(engine.tasks) == ["t"]
    loaded = yaml.safe_load(text)
    assert loaded["tasks"]["t"]["params"] == {"temperature": 0}  # other keys kept
    first = loaded["tasks"]["t"]["ladder"][0]
    assert first["evaluators"] == [{"type": "logprob",
                                    "min": result.thresholds["small"]["logprob.min"]}]
    again = run_bench(out, data).tasks["t"]
    assert again["cost_per_query"] == pytest.approx(result.train["cost_per_query"], abs=1e-12)
    assert again["quality"] == pytest.approx(result.train["quality"], abs=1e-12)


SEEN: list[str] = []


def spy(request: Request, completion: Completion) -> Verdict:
    """A callable evaluator that writes down everything it is shown."""
    SEEN.append(repr(request) + repr(completion))
    return Verdict("spy", True, None)


def test_labels_never_reach_evaluators(tmp_path: Path) -> None:
    """No evaluator is ever shown a recorded score, during the search or the replays."""
    def make(i: int, rng: np.random.Generator) -> dict[str, Answer]:
        good = i % 2 == 0
        return {"small": answer(" ".join(["w"] * (i % 7 + 1)), 0.876543 if good else 0.123457,
                                "small", -0.01),
                "large": answer("fine", 0.987654, "large", -0.01)}

    SEEN.clear()
    data = dataset(tmp_path / "d.jsonl", 60, make)
    cfg = config(tmp_path, ["small", "large"],
                 [{"type": "length", "min_words": 1},
                  {"type": "callable", "path": "tests.calibration.test_calibrate:spy"}])
    result = calibrate(cfg, data, target_quality=0.9, test=data)
    assert result.status == "ok", result.message
    assert SEEN
    for seen in SEEN:
        for label in ("876543", "123457", "987654"):
            assert label not in seen


def test_removed_evaluator_and_strict_json(tmp_path: Path) -> None:
    """"Accept all" removes the tuned evaluator; as_json turns it into null, strict JSON."""
    def make(i: int, rng: np.random.Generator) -> dict[str, Answer]:
        # Right every time, but half the answers carry no logprob: only removal accepts them.
        return {"small": answer("ok", 1.0, "small", -0.01 if i % 2 else None),
                "large": answer("ok", 1.0, "large", -0.01)}

    data = dataset(tmp_path / "d.jsonl", 40, make)
    result = calibrate(config(tmp_path, ["small", "large"], [{"type": "logprob", "min": 0.9}]),
                       data, target_quality=1.0)
    assert result.thresholds == {"small": {"logprob.min": -math.inf}}
    assert result.config["tasks"]["t"]["ladder"][0] == {"model": "small", "evaluators": []}
    data_json = json.loads(json.dumps(result.as_json(), allow_nan=False))
    assert data_json["thresholds"] == {"small": {"logprob.min": None}}
    assert "removed" in result.message


def test_coordinate_descent_finds_the_exhaustive_optimum(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """On a small grid, the fallback search for large grids picks the same point."""
    data = dataset(tmp_path / "d.jsonl", 200, noisy)
    cfg = config(tmp_path, ["small", "mid", "large"], [{"type": "logprob", "min": 0.5}])
    full = calibrate(cfg, data, target_quality=0.9)
    monkeypatch.setattr(threshold_search, "_EXHAUSTIVE_LIMIT", 1)
    descent = calibrate(cfg, data, target_quality=0.9)
    assert descent.status == full.status == "ok"
    assert descent.train["cost_per_query"] <= full.train["cost_per_query"] * 1.05
    assert descent.simulated_train["lower_bound"] >= 0


@pytest.mark.parametrize(("task", "ladder", "match"), [
    ({"accept": "any"}, ["small", "large"], "accept: all"),
    ({"on_exhausted": "raise"}, ["small", "large"], "return_last"),
    ({"max_cost_usd": 0.01}, ["small", "large"], "max_cost_usd"),
    ({"cache": {}}, ["small", "large"], "cache"),
    ({}, [{"model": "small", "evaluators": [
        {"type": "logprob", "min": 0.5},
        {"type": "json_schema", "schema": {"type": "object"}, "repair_attempts": 1}]},
      "large"], "repair"),
])
def test_unsupported_configs_are_config_errors(tmp_path: Path, task: dict[str, Any],
                                               ladder: list[Any], match: str) -> None:
    """accept: any on a tuned rung, raise at the top, caps, caches, repairs: ConfigError."""
    data = dataset(tmp_path / "d.jsonl", 10, separable)
    cfg = config(tmp_path, ladder, [{"type": "logprob", "min": 0.5}], **task)
    with pytest.raises(ConfigError, match=match):
        calibrate(cfg, data, target_quality=0.9)


def test_bad_target_is_rejected(tmp_path: Path) -> None:
    """A target quality that is not a positive number is a ValueError."""
    data = dataset(tmp_path / "d.jsonl", 10, separable)
    with pytest.raises(ValueError, match="positive"):
        calibrate(config(tmp_path, ["small", "large"]), data, target_quality=0)


@pytest.mark.skipif(not DATA.is_dir(), reason="shared RouteLLM data not available")
def test_gsm8k_train_split(tmp_path: Path) -> None:
    """On the real GSM8K train split: target met on train, simulation equal to run_bench."""
    from cascade.replay.importers import import_dataset

    train = tmp_path / "gsm_train.jsonl"
    import_dataset("routellm-gsm8k", str(DATA), str(train), split="train")
    cfg = tmp_path / "gsm.yaml"
    cfg.write_text(yaml.safe_dump({
        "providers": {"rec": {"type": "replay"}},
        "models": {
            "mixtral": {"provider": "rec", "name": "mistralai/Mixtral-8x7B-Instruct-v0.1",
                        "price": {"input": 0.24, "output": 0.24}},
            "gpt4": {"provider": "rec", "name": "gpt-4-1106-preview",
                     "price": {"input": 10, "output": 30}}},
        "ledger": {"path": None},
        "tasks": {"math": {"ladder": ["mixtral", "gpt4"],
                           "evaluators": [{"type": "length", "min_words": 20}]}}}))
    result = calibrate(cfg, train, target_quality=0.95)
    assert result.status == "ok", result.message
    assert result.train["target_met"] is True
    assert result.simulated_train["cost_per_query"] == pytest.approx(
        result.train["cost_per_query"], abs=1e-9)
    assert result.simulated_train["quality"] == pytest.approx(result.train["quality"], abs=1e-9)
    assert result.frontier == sorted(result.frontier)


def test_cli_calibrate_writes_config_and_reports(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """cascade calibrate prints train/test numbers and writes a config that bench accepts."""
    from cascade.cli import main

    data = _cli_dataset(tmp_path)
    out = tmp_path / "calibrated.yaml"
    code = main(["calibrate", str(data["config"]), str(data["train"]), "--test",
                 str(data["train"]), "--target-quality", "0.9", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "train: n=" in printed
    assert "test: n=" in printed
    assert main(["bench", str(out), str(data["train"])]) == 0


def test_cli_calibrate_impossible_target(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """An unreachable target exits 1 with one line and writes nothing."""
    from cascade.cli import main

    data = _cli_dataset(tmp_path)
    out = tmp_path / "calibrated.yaml"
    code = main(["calibrate", str(data["config"]), str(data["train"]), "--target-quality", "1.5",
                 "--out", str(out)])
    assert code == 1
    assert "calibration failed" in capsys.readouterr().err
    assert not out.exists()


def _cli_dataset(tmp_path: Path) -> dict[str, Path]:
    import random

    import yaml

    from cascade.providers.dataset import ReplayRecord, write_dataset

    rng = random.Random(3)
    rows = []
    for i in range(120):
        good = rng.random() < 0.6
        rows.append(ReplayRecord.model_validate({
            "id": f"q{i}", "task": "qa", "messages": [{"role": "user", "content": "q"}],
            "responses": {
                "small": {"text": "ok " * (30 if good else 3), "score": 1.0 if good else 0.0,
                          "cost_usd": 0.001},
                "big": {"text": "fine " * 20, "score": 1.0, "cost_usd": 0.01}}}))
    train = tmp_path / "train.jsonl"
    write_dataset(train, rows)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "providers": {"rec": {"type": "replay"}},
        "models": {"small": {"provider": "rec", "name": "small", "price": {"input": 1, "output": 1}},
                   "big": {"provider": "rec", "name": "big", "price": {"input": 1, "output": 1}}},
        "ledger": {"path": None},
        "tasks": {"qa": {"ladder": ["small", "big"],
                         "evaluators": [{"type": "length", "min_words": 1}]}}}))
    return {"config": config, "train": train}
