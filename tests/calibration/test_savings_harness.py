"""benchmarks/savings.py: splits, baselines at matched quality, per-seed bookkeeping, summary.

Tiny synthetic data only (no ../shared/data); the expected numbers are worked out by hand in
the comments.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml

import cascade.calibration.calibrate as calibration
from benchmarks import savings
from benchmarks.savings_stats import (
    baselines,
    markdown_table,
    matched_oracle,
    random_mix,
    split_records,
    summarize,
)
from cascade.providers.dataset import ReplayRecord, write_dataset

# -- split --------------------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_stratified() -> None:
    items = [("a", i) for i in range(4)] + [("b", i) for i in range(6)]
    train, test = split_records(items, seed=3, train_fraction=0.5, stratum=lambda x: x[0])
    assert sorted(train + test) == sorted(items)
    assert not set(train) & set(test)
    # Half of each stratum: 2 of the 4 "a", 3 of the 6 "b".
    assert sum(x[0] == "a" for x in train) == 2
    assert sum(x[0] == "b" for x in train) == 3
    assert split_records(items, 3, 0.5, lambda x: x[0]) == (train, test)  # same seed, same split
    others = {tuple(split_records(items, s, 0.5, lambda x: x[0])[0]) for s in range(10)}
    assert len(others) > 1  # the seed matters


def test_split_fraction_and_bad_input() -> None:
    train, test = split_records(list(range(10)), seed=0, train_fraction=0.3)
    assert (len(train), len(test)) == (3, 7)
    with pytest.raises(ValueError, match="train_fraction"):
        split_records(list(range(10)), seed=0, train_fraction=1.0)
    with pytest.raises(ValueError, match="empty"):
        split_records([1], seed=0, train_fraction=0.5)


# -- baselines ----------------------------------------------------------------------------------

# Two rungs, four queries. First rung costs 1 and is right on queries 0 and 3; the top costs 10
# and is always right.
COST = np.array([[1.0, 1, 1, 1], [10, 10, 10, 10]])
SCORE = np.array([[1.0, 0, 0, 1], [1, 1, 1, 1]])


def test_baselines_by_hand() -> None:
    b = baselines(COST, SCORE, 0.9)
    assert b["always_top"] == {"cost_per_query": 10.0, "quality": 1.0}
    assert b["always_first"] == {"cost_per_query": 1.0, "quality": 0.5}
    assert b["always_first_cost_ratio"] == pytest.approx(0.1)
    # Oracle: stop at rung 0 on queries 0 and 3 (cost 1), pay 1 + 10 on 1 and 2: mean 6.
    assert b["oracle"]["cost_per_query"] == pytest.approx(6.0)
    assert b["oracle_cost_ratio"] == pytest.approx(0.6)
    # Random escalation to 0.9 x 1.0 from 0.5: share p = 0.4 / 0.5 = 0.8;
    # cost = 1 (first rung, every query) + 0.8 x 10 = 9, i.e. 0.9 of always-top.
    assert b["random_two_point_share"] == pytest.approx(0.8)
    assert b["random_two_point_cost_ratio"] == pytest.approx(0.9)
    # Best random mix of stop-at-rung points (1, 0.5), (11, 1.0) and the top alone (10, 1.0):
    # first rung on 20% of queries, the top alone on 80%: 0.2 + 8 = 8.2, i.e. 0.82.
    assert b["random_mix_cost_ratio"] == pytest.approx(0.82)
    # Oracle at R: quality 2 of the needed 3.6 from rung 0; query 1 escalates fully (+10, +1),
    # query 2 for 0.6 of its step (+6, +0.6): (4 + 10 + 6) / 4 = 5, i.e. 0.5 of always-top.
    assert b["oracle_at_r_cost_ratio"] == pytest.approx(0.5)


def test_random_escalation_is_free_when_the_first_rung_already_reaches_the_target() -> None:
    score = np.array([[1.0, 1, 1, 0], [1, 1, 1, 1]])  # first rung 0.75 >= 0.7 x 1.0
    b = baselines(COST, score, 0.7)
    assert b["random_two_point_share"] == 0.0
    assert b["random_two_point_cost_ratio"] == pytest.approx(0.1)
    assert b["oracle_at_r_cost_ratio"] == pytest.approx(0.1)


def test_random_mix_uses_a_middle_rung() -> None:
    # Stop-at points (cost, quality): (1, 0.5), (3, 0.95), (13, 1.0). Target 0.9:
    # mix (1, 0.5) and (3, 0.95) with w = 0.4 / 0.45 -> 1 + 2 x 0.8889 = 2.7778.
    best = random_mix([1, 3, 13], [0.5, 0.95, 1.0], 0.9)
    assert best == pytest.approx(1 + 2 * 0.4 / 0.45)
    assert random_mix([1, 2], [0.1, 0.2], 0.9) == math.inf


def test_matched_oracle_climbs_the_cheapest_hull_first() -> None:
    # One query, three rungs: cumulative cost 1, 2, 12; scores 0, 0.5, 1.
    # Target 0.75: climb to rung 1 (+1 cost, +0.5 score, slope 0.5), then half of the next step
    # (+10 cost, +0.5 score, slope 0.05) for the remaining 0.25: 2 + 5 = 7.
    cost = np.array([[1.0], [2.0], [12.0]])
    score = np.array([[0.0], [0.5], [1.0]])
    assert matched_oracle(cost, score, 0.75) == pytest.approx(7.0)
    assert matched_oracle(cost, score, 1.5) == math.inf


# -- summary ------------------------------------------------------------------------------------


def _run(outcome: str, cost: float | None, quality: float | None, violated: bool | None,
         seed: int) -> dict[str, Any]:
    return {"dataset": "x", "target": 0.9, "seed": seed, "label": "thresholds",
            "outcome": outcome, "cost_ratio": cost, "quality_ratio": quality,
            "violated": violated, "runtime_s": None if outcome == "error" else 1.0 + seed,
            "error": "ValueError: boom" if outcome == "error" else None,
            "baselines": baselines(COST, SCORE, 0.9)}


def test_summary_counts_violations_failures_and_errors() -> None:
    runs = [
        _run("ok", 0.2, 0.85, True, 0),   # test quality below 0.9 x top: a violation
        _run("ok", 0.4, 0.95, False, 1),
        _run("failed", 1.0, 1.0, False, 2),  # falls back to always-top: no violation
        _run("error", None, None, None, 3),  # reported, left out of every rate
    ]
    (s,) = summarize(runs)
    assert (s["seeds"], s["ok"], s["failed"], s["errors"]) == (4, 2, 1, 1)
    assert s["violations"] == 1
    assert s["violation_rate"] == pytest.approx(1 / 3)
    assert s["failed_share"] == pytest.approx(1 / 3)
    assert s["error_messages"] == ["ValueError: boom"]
    assert s["cost_ratio"]["median"] == pytest.approx(0.4)
    assert (s["cost_ratio"]["min"], s["cost_ratio"]["max"]) == (0.2, 1.0)
    assert s["cost_ratio"]["q25"] == pytest.approx(0.3)  # numpy linear: 0.2 + 0.5 x 0.2
    assert s["quality_ratio"]["median"] == pytest.approx(0.95)
    assert s["runtime_s"]["median"] == pytest.approx(2.0)
    assert s["baselines"]["random_two_point_cost_ratio"]["median"] == pytest.approx(0.9)
    table = markdown_table([s])
    assert "| x | 0.9 | thresholds | 2/1/1 | 40.0% [20.0%\u2013100.0%] |" in table
    assert "| 33.3% | 33.3% | 50.0% | 60.0% | 90.0% / 82.0% | 10.0% / 50.0% |" in table


# -- one seed, end to end with the real calibrator ----------------------------------------------


def _synthetic(tmp_path: Path, n: int = 60) -> tuple[Path, Path]:
    """Two rungs: a cheap one that is right when its logprob is high, and a right top."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        right = bool(rng.random() < 0.7)
        lp = float(np.log(rng.uniform(0.7, 1.0) if right else rng.uniform(0.05, 0.6)))
        rows.append(ReplayRecord.model_validate({
            "id": f"q{i}", "task": "t", "messages": [{"role": "user", "content": f"q {i}?"}],
            "responses": {
                "small": {"text": "a", "score": float(right), "cost_usd": 1e-5, "logprob": lp},
                "large": {"text": "b", "score": 1.0, "cost_usd": 1e-3},
            }}))
    data = tmp_path / "all.jsonl"
    write_dataset(data, rows)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "providers": {"rec": {"type": "replay"}},
        "models": {k: {"provider": "rec", "name": k, "price": {"input": 1, "output": 2}}
                   for k in ("small", "large")},
        "ledger": {"path": None},
        "tasks": {"t": {"ladder": ["small", "large"],
                        "evaluators": [{"type": "logprob", "min": 0.5}]}},
    }))
    return data, cfg


def _job(tmp_path: Path, data: Path, cfg: Path, **kw: Any) -> savings.Job:
    ds = savings.Dataset("synthetic", "file", str(data), str(cfg), "t")
    fields: dict[str, Any] = {"dataset": ds, "config": str(cfg), "seed": 0,
                              "targets": (0.9,), "train_fraction": 0.5, "method": None,
                              "delta": None, "label": "t", "records_path": str(data),
                              "scratch": str(tmp_path)}
    return savings.Job(**{**fields, **kw})


def test_run_seed_reads_the_held_out_report(tmp_path: Path) -> None:
    data, cfg = _synthetic(tmp_path)
    # 30 train queries: too few to fit and certify, so the threshold search stands in
    (row,) = savings.run_seed(_job(tmp_path, data, cfg, method="thresholds"))
    assert row["outcome"] == "ok", row.get("message")
    assert (row["n_train"], row["n_test"]) == (30, 30)
    top = row["baselines"]["always_top"]
    assert row["cost_ratio"] == pytest.approx(row["test_cost"] / top["cost_per_query"])
    assert row["quality_ratio"] == pytest.approx(row["test_quality"] / top["quality"])
    assert row["violated"] == (row["test_quality"] < 0.9 * top["quality"])
    assert row["baselines_match_run_bench"] is True


class _Fake:
    """Stands in for calibrate: records its keyword arguments, then fails or raises."""

    def __init__(self, raise_: bool) -> None:
        self.raise_, self.kwargs = raise_, {}

    def __call__(self, config: Any, train: Any, **kwargs: Any) -> Any:
        self.kwargs = kwargs
        if self.raise_:
            raise RuntimeError("no policy")
        return SimpleNamespace(status="failed", message="unreachable", ladder=(), test=None,
                               as_json=lambda: {"thresholds": {}})


def test_failed_calibration_falls_back_to_always_top(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data, cfg = _synthetic(tmp_path)
    fake = _Fake(raise_=False)
    monkeypatch.setattr(calibration, "calibrate", fake)
    (row,) = savings.run_seed(_job(tmp_path, data, cfg))
    assert (row["outcome"], row["cost_ratio"], row["quality_ratio"], row["violated"]) == (
        "failed", 1.0, 1.0, False)
    assert row["test_cost"] == row["baselines"]["always_top"]["cost_per_query"]
    assert "method" not in fake.kwargs  # forwarded only when given
    assert "delta" not in fake.kwargs


def test_exceptions_are_recorded_and_method_delta_forwarded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, cfg = _synthetic(tmp_path)
    fake = _Fake(raise_=True)
    monkeypatch.setattr(calibration, "calibrate", fake)
    rows = savings.run_seed(_job(tmp_path, data, cfg, method="ltt", delta=0.0,
                                 targets=(0.9, 0.95)))
    assert [r["outcome"] for r in rows] == ["error", "error"]
    assert rows[0]["error"] == "RuntimeError: no policy"
    assert fake.kwargs["method"] == "ltt"
    assert fake.kwargs["delta"] == 0.0  # given, even though falsy
    assert fake.kwargs["target_quality"] == 0.95


def test_every_dataset_config_loads_with_its_task() -> None:
    from cascade.config import load_config

    root = Path(savings.ROOT)
    for ds in savings.DATASETS.values():
        cfg = load_config(root / ds.config)
        assert ds.task in cfg.tasks, ds.name
    for path in sorted((root / "benchmarks" / "configs").glob("*.yaml")):
        cfg = load_config(path)  # the candidate configs too (accept: any, logprob + agreement)
        assert [r.model for r in cfg.tasks["gsm8k"].ladder], path


def test_summary_skips_undefined_quality_ratios() -> None:
    # Always-top scoring 0 on a test half leaves quality/top undefined (None) for that seed.
    runs = [_run("ok", 0.5, None, False, 0), _run("ok", 0.7, 0.9, False, 1)]
    (s,) = summarize(runs)
    assert s["quality_ratio"]["median"] == pytest.approx(0.9)
    assert s["cost_ratio"]["median"] == pytest.approx(0.6)
