"""``--scheme fixed``: thresholds of the rungs' own signals at one level, certified on every
train query, written as an ordinary config that replays to the same numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cascade.calibration.calibrate import calibrate
from cascade.calibration.levels import LEVELS, families, threshold_at
from cascade.errors import ConfigError
from cascade.evaluation import Tunable
from cascade.providers.dataset import write_dataset
from tests.calibration.test_policy import COST, _records


def _config(tmp_path: Path, ladder: list[str], evaluators: list[dict[str, Any]],
            accept: str = "any") -> Path:
    data = {
        "providers": {"rec": {"type": "replay"}},
        "models": {k: {"provider": "rec", "name": k, "price": {"input": 1, "output": 2}}
                   for k in COST},
        "ledger": {"path": None},
        "tasks": {"t": {"ladder": ladder, "accept": accept, "evaluators": evaluators}},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


CANDIDATES = [{"type": "logprob", "min": 0.5},
              {"type": "agreement", "recipe": "gsm8k", "min_agree": 0.5}]


def test_levels_and_families_are_fixed_before_the_data() -> None:
    assert LEVELS[0] == 1.0
    assert LEVELS[-1] == 0.0
    assert list(LEVELS) == sorted(LEVELS, reverse=True)
    assert 0.9999 in LEVELS  # dense near 1, where confidences crowd
    assert families(2) == [(0, 1)]
    assert families(4) == [(0, 3), (1, 3), (2, 3), (0, 1, 2, 3)]
    assert threshold_at(Tunable("min", 0.0, 1.0), 0.75) == 0.75
    assert threshold_at(Tunable("min_score", 1.0, 10.0, low_open=False), 0.5) == 5.5
    assert 0 < threshold_at(Tunable("min", 0.0, 1.0), 0.0) < 1e-6  # min > 0 is required
    assert threshold_at(Tunable("min_words", 0, float("inf"), integer=True), 0.5) is None


@pytest.fixture(scope="module")
def fixed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("fixed")
    cfg = _config(tmp, ["small", "mid", "large"], CANDIDATES)
    write_dataset(tmp / "train.jsonl", _records(400, 1))
    write_dataset(tmp / "test.jsonl", _records(600, 2))
    pac = calibrate(cfg, tmp / "train.jsonl", test=tmp / "test.jsonl", target_quality=0.9)
    expected = calibrate(cfg, tmp / "train.jsonl", test=tmp / "test.jsonl", target_quality=0.9,
                         guarantee="expected")
    return {"pac": pac, "expected": expected, "cfg": cfg, "tmp": tmp}


def test_fixed_certifies_on_every_train_query(fixed: dict[str, Any]) -> None:
    result = fixed["pac"]
    g = result.guarantee
    assert result.status == "ok"
    assert g["scheme"] == "fixed"
    assert g["fit_queries"] == 0
    assert g["certify_queries"] == 400
    assert g["certified_cheaper_than_top"] is True
    assert 0 < g["p_value"] <= g["delta"] / g["families"]  # Bonferroni over the families
    assert g["families"] == len(families(3))
    assert result.train["cost_per_query"] < 0.6 * result.train["baselines"]["always_top"][
        "cost_per_query"]
    assert result.test["target_met"] is True


def test_fixed_writes_the_level_into_every_candidate(fixed: dict[str, Any]) -> None:
    """The written rungs carry the candidates with their thresholds at the chosen level, keep
    accept: any, and replay (run_bench) to exactly the simulated cost and quality."""
    result = fixed["pac"]
    level = result.guarantee["level"]
    assert 0 < result.guarantee["chosen"] < result.guarantee["candidates"]
    ladder = result.config["tasks"]["t"]["ladder"]
    assert [r if isinstance(r, str) else r["model"] for r in ladder] == list(result.ladder)
    for rung in ladder[:-1]:
        by_type = {e["type"]: e for e in rung["evaluators"]}
        assert by_type["logprob"]["min"] == pytest.approx(max(level, 1e-9))
        assert by_type["agreement"]["min_agree"] == pytest.approx(max(level, 1e-9))
    sim = result.simulated_train
    assert sim["certify_cost_per_query"] == pytest.approx(result.train["cost_per_query"])
    assert sim["certify_quality"] == pytest.approx(result.train["quality"])


def test_expected_guarantee_says_what_it_promises(fixed: dict[str, Any]) -> None:
    expected = fixed["expected"]
    g = expected.guarantee
    assert g["guarantee"] == "expected"
    assert g["delta"] is None
    assert g["p_value"] is None
    assert "On average over calibration sets" in g["statement"]
    assert g["certified_cheaper_than_top"] is True
    assert expected.test["target_met"] is True


def test_auto_falls_back_to_holdout_without_a_bounded_signal(tmp_path: Path) -> None:
    cfg = _config(tmp_path, ["small", "large"], [{"type": "regex", "pattern": "####"}],
                  accept="all")
    write_dataset(tmp_path / "train.jsonl", _records(200, 3))
    said: list[str] = []
    result = calibrate(cfg, tmp_path / "train.jsonl", target_quality=0.9, say=said.append)
    assert result.guarantee["scheme"] == "holdout"
    assert said[0].startswith("scheme: holdout")
    with pytest.raises(ConfigError, match="use --scheme holdout"):
        calibrate(cfg, tmp_path / "train.jsonl", target_quality=0.9, scheme="fixed")


def test_fixed_refuses_too_few_queries(tmp_path: Path) -> None:
    from cascade.errors import DatasetError

    cfg = _config(tmp_path, ["small", "large"], CANDIDATES)
    write_dataset(tmp_path / "train.jsonl", _records(12, 3))
    with pytest.raises(DatasetError, match="too few to certify"):
        calibrate(cfg, tmp_path / "train.jsonl", target_quality=0.9)


def test_cli_refuses_clt_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cascade.cli import main

    cfg = _config(tmp_path, ["small", "large"], CANDIDATES)
    write_dataset(tmp_path / "train.jsonl", _records(60, 3))
    code = main(["calibrate", str(cfg), str(tmp_path / "train.jsonl"), "--target-quality", "0.9",
                 "--out", str(tmp_path / "o.yaml"), "--bound", "clt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith("error: --bound clt was removed")
    assert not (tmp_path / "o.yaml").exists()


def test_cli_expected_guarantee_end_to_end(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from cascade.cli import main

    cfg = _config(tmp_path, ["small", "mid", "large"], CANDIDATES)
    write_dataset(tmp_path / "train.jsonl", _records(400, 1))
    code = main(["calibrate", str(cfg), str(tmp_path / "train.jsonl"), "--target-quality", "0.9",
                 "--out", str(tmp_path / "o.yaml"), "--guarantee", "expected", "--verbose"])
    out = capsys.readouterr().out
    assert code == 0
    assert "guarantee: On average over calibration sets like train.jsonl" in out
    assert "method: conformal risk control" in out
    assert yaml.safe_load((tmp_path / "o.yaml").read_text())["tasks"]["t"]["ladder"]


def test_a_judge_is_replayed_and_charged_on_every_rung(tmp_path: Path) -> None:
    """llm_judge under accept: any: the replayed judge finds its recorded reply (by query id)
    and its cost is charged on the top rung too, so the simulation equals run_bench (which
    raises otherwise) and always-top's cost includes the judge."""
    cfg = _config(tmp_path, ["small", "large"],
                  [{"type": "logprob", "min": 0.5}, {"type": "llm_judge", "model": "mid"}])
    write_dataset(tmp_path / "train.jsonl", _records(200, 1))
    result = calibrate(cfg, tmp_path / "train.jsonl", target_quality=0.9, scheme="fixed")
    # always-top's cost includes the top rung's judge (run_bench's baseline is the call alone)
    assert result.simulated_train["certify_always_top_cost_per_query"] > COST["large"]
    assert result.simulated_train["certify_cost_per_query"] == pytest.approx(
        result.train["cost_per_query"])


def test_a_callable_threshold_is_not_leveled(tmp_path: Path) -> None:
    """A callable has no YAML settings to write a level into: the fixed scheme leaves it as it
    is and levels the others."""
    (tmp_path / "myeval.py").write_text(
        "from cascade.evaluation import Tunable\n"
        "from cascade.types import Verdict\n"
        "class Conf:\n"
        "    tunable = Tunable('min', 0.0, 1.0)\n"
        "    def threshold_value(self, verdict, completion):\n"
        "        return verdict.score\n"
        "    def __call__(self, request, completion):\n"
        "        return Verdict('conf', False, 0.2)\n"
        "conf = Conf()\n")
    cfg = _config(tmp_path, ["small", "large"],
                  [{"type": "callable", "path": "myeval:conf"}, *CANDIDATES])
    write_dataset(tmp_path / "train.jsonl", _records(200, 1))
    result = calibrate(cfg, tmp_path / "train.jsonl", target_quality=0.9, scheme="fixed")
    assert result.status == "ok"
    for rung in result.config["tasks"]["t"]["ladder"][:-1]:
        assert {"type": "callable", "path": "myeval:conf"} in rung["evaluators"]


@pytest.mark.parametrize("guarantee", ["pac", "expected"])
def test_targets_above_one_can_be_certified_and_one_keeps_top(tmp_path: Path,
                                                              guarantee: str) -> None:
    """R > 1: always-top can never pass, and must not block the cheaper candidates behind it.
    R = 1 with the expected guarantee: always-top is the fallback, never 'unreachable'."""
    import numpy as np

    from cascade.calibration.guarantee import certify

    rng = np.random.default_rng(0)
    q_top = (rng.random(400) < 0.8).astype(float)
    outcome = {"top": (np.ones(400), q_top), "a": (np.full(400, 0.1), np.ones(400))}
    got, _, _ = certify([["a"]], "top", outcome, q_top, 1.1, 0.1, guarantee, "betting", 0)
    assert set(got) == {"a"}
    worse = {"top": outcome["top"], "a": (np.full(400, 0.1), q_top * 0.5)}
    got, _, _ = certify([["a"]], "top", worse, q_top, 1.0, 0.1, guarantee, "betting", 0)
    assert set(got) == {"top"}
    cfg = _config(tmp_path, ["small", "large"], CANDIDATES)
    write_dataset(tmp_path / "train.jsonl", _records(200, 1))
    result = calibrate(cfg, tmp_path / "train.jsonl", target_quality=1.0, guarantee=guarantee)
    assert result.status == "ok"
