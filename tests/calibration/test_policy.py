"""Learned policies: quality_model parity (engine, SDK, gateway, replay), safe model files, the
router's skip steps, and the Learn-then-Test guarantee's bookkeeping."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import yaml

from cascade import Cascade, ConfigError
from cascade.calibration.calibrate import calibrate, write_calibrated
from cascade.calibration.guarantee import betting_pvalue, clt_pvalue, fixed_sequence
from cascade.config import load_config
from cascade.gateway.app import create_app, running
from cascade.ledger.writer import flush_all
from cascade.models.linear import fit_isotonic, fit_logistic
from cascade.providers.dataset import ReplayRecord, load_dataset, write_dataset
from cascade.replay.bench import replay_engine, run_bench
from cascade.testing import FakeProvider, MockLLMServer, Reply

COST = {"small": 2e-5, "mid": 3e-4, "large": 2e-3}


def _records(n: int, seed: int, *, small_skill: float = 0.65) -> list[ReplayRecord]:
    """small is right more often on short prompts, and its format and logprob say when."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        hard = rng.random() < 0.4
        words = " ".join(["word"] * int(rng.integers(30, 60) if hard else rng.integers(3, 12)))
        good = rng.random() < (small_skill - 0.35 if hard else small_skill + 0.15)
        formatted = rng.random() < (0.95 if good else 0.45)
        answer = f"{i + (0 if good else 7)}"
        text = f"step one\n#### {answer}" if formatted else f"maybe {answer}"
        lp = math.log(rng.uniform(0.8, 0.99) if good else rng.uniform(0.3, 0.95))
        mid_good = rng.random() < 0.8
        out.append(
            ReplayRecord.model_validate(
                {
                    "id": f"q{i}",
                    "task": "t",
                    "messages": [{"role": "user", "content": f"question {i}: {words}?"}],
                    "responses": {
                        "small": {"text": text, "score": float(good), "logprob": lp,
                                  "cost_usd": COST["small"]},
                        "mid": {"text": f"#### {i if mid_good else i + 3}",
                                "score": float(mid_good), "logprob": -0.1,
                                "cost_usd": COST["mid"]},
                        "large": {"text": f"#### {i}", "score": 1.0 if rng.random() < 0.93
                                  else 0.0, "cost_usd": COST["large"]},
                    },
                }
            )
        )
    return out


def _config(tmp_path: Path, ladder: list[str], **task: Any) -> Path:
    data = {
        "providers": {"rec": {"type": "replay"}},
        "models": {k: {"provider": "rec", "name": k, "price": {"input": 1, "output": 2}}
                   for k in COST},
        "ledger": {"path": None},
        "tasks": {"t": {"ladder": ladder, "evaluators": [
            {"type": "regex", "pattern": "####"},
            {"type": "logprob", "min": 0.5},
            {"type": "agreement", "recipe": "gsm8k", "when_first": "fail"},
        ], **task}},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One calibration of small -> mid -> large on 900 train queries, written to disk."""
    tmp = tmp_path_factory.mktemp("policy")
    cfg = _config(tmp, ["small", "mid", "large"])
    write_dataset(tmp / "train.jsonl", _records(900, 1))
    write_dataset(tmp / "test.jsonl", _records(600, 2))
    result = calibrate(cfg, tmp / "train.jsonl", test=tmp / "test.jsonl", target_quality=0.9,
                       scheme="holdout")
    out = tmp / "out" / "cal.yaml"
    write_calibrated(result, out)
    return {"result": result, "out": out, "tmp": tmp, "test": tmp / "test.jsonl"}


def test_policy_is_certified_and_cheaper(calibrated: dict[str, Any]) -> None:
    """The chosen policy passed its test at delta and costs less than always-top on test."""
    result = calibrated["result"]
    g = result.guarantee
    assert result.status == "ok"
    assert g["fit_queries"] + g["certify_queries"] == 900
    assert g["certified_cheaper_than_top"] is True
    assert 0 <= g["p_value"] <= g["delta"] == 0.1
    assert g["chosen"] < g["certified"] <= g["candidates"]
    top = result.test["baselines"]["always_top"]
    assert result.test["cost_per_query"] < 0.8 * top["cost_per_query"]
    assert result.test["quality"] >= 0.9 * top["quality"]


def test_written_config_runs_unchanged(calibrated: dict[str, Any]) -> None:
    """The YAML + model files it writes bench to exactly the numbers calibration reported."""
    out: Path = calibrated["out"]
    assert list(out.parent.glob("cal.t.*.quality.json"))
    text = out.read_text()
    assert "# guarantee: With 90% confidence, quality on traffic like train.jsonl" in text
    report = run_bench(out, load_dataset(calibrated["test"]), task="t").tasks["t"]
    assert report["cost_per_query"] == pytest.approx(calibrated["result"].test["cost_per_query"])
    assert report["quality"] == pytest.approx(calibrated["result"].test["quality"])


def _quality_steps(result: Any) -> list[float]:
    return [v.score for s in result.steps for v in s.verdicts if v.evaluator == "quality_model"]


def test_same_probability_in_replay_sdk_and_gateway(calibrated: dict[str, Any], keys: None) -> None:
    """One answer gets the same P(correct) replayed, via complete() over the SDK, and through
    the gateway."""
    out: Path = calibrated["out"]
    record = load_dataset(calibrated["test"])[5]
    replayed = replay_engine(load_config(out), [record], path=str(out))
    want = _quality_steps(replayed.complete("t", [m.model_dump() for m in record.messages],
                                            query_id=record.id))
    assert want
    raw = yaml.safe_load(out.read_text())
    with MockLLMServer() as upstream:
        for key, resp in record.responses.items():
            upstream.script(key, [Reply(resp.text, logprobs=[resp.logprob] if resp.logprob
                                        is not None else None)])
        raw["providers"] = {"rec": {"type": "openai", "api_key_env": "OPENAI_API_KEY",
                                    "base_url": upstream.openai_url}}
        live_path = out.parent / "live.yaml"
        live_path.write_text(yaml.safe_dump(raw))
        engine = Cascade.from_yaml(live_path, ledger=False)
        try:
            got = _quality_steps(engine.complete("t", record.messages[0].content))
            with running(create_app(engine, api_keys=[])) as url:
                client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
                reply = client.chat.completions.with_raw_response.create(
                    model="t", messages=[{"role": "user", "content": record.messages[0].content}]
                )
        finally:
            engine.close()
    assert got == pytest.approx(want, abs=1e-12)
    run_id = reply.headers["x-cascade-run-id"]
    assert run_id
    assert reply.headers["x-cascade-model"] == replayed.complete(
        "t", record.messages[0].content, query_id=record.id).model


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (pickle.dumps({"dense": []}), "not a valid quality model"),
        (b'{"dense": ["a"], "weights": [NaN], "mean": [0], "scale": [1]}', "finite"),
        (b'{"dense": ["a"], "weights": [1], "mean": [0], "scale": [1], "code": "x"}',
         "not a valid quality model"),
        (b'{"dense": ["a"], "weights": [1, 2], "mean": [0], "scale": [1]}', "same length"),
        (b'{"dense": [], "weights": [], "mean": [], "scale": [], "text": ["prompt"],'
         b' "text_weights": [[1.0]]}', "hashing"),
        # a non-monotone isotonic map would rank a worse answer above a better one
        (b'{"dense": ["a"], "weights": [1], "mean": [0], "scale": [1],'
         b' "calibrator": {"x": [0, 1], "y": [0.9, 0.1]}}', "non-decreasing"),
    ],
)
def test_model_files_are_validated_data(tmp_path: Path, payload: bytes, needle: str) -> None:
    """A model file is parsed as JSON and validated; a pickle or a bad field is a ConfigError
    naming the evaluator, never code that runs."""
    (tmp_path / "m.json").write_bytes(payload)
    cfg = {
        "providers": {"p": {"type": "replay"}},
        "models": {"a": {"provider": "p", "name": "a", "price": {"input": 1, "output": 1}},
                   "b": {"provider": "p", "name": "b", "price": {"input": 1, "output": 1}}},
        "ledger": {"path": None},
        "tasks": {"t": {"ladder": ["a", "b"], "evaluators": [
            {"type": "quality_model", "min": 0.5, "model": "m.json"}]}},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as err:
        Cascade.from_yaml(path, ledger=False)
    assert needle in str(err.value)
    assert "tasks.t.evaluators[0].model" in str(err.value)


def _tiny_model(bias: float) -> dict[str, Any]:
    return {"dense": ["answer.words"], "weights": [0.0], "mean": [0.0], "scale": [1.0],
            "bias": bias}


def test_min_is_inclusive() -> None:
    """An answer passes when P(correct) equals min, and fails just below it."""
    p = 1 / (1 + math.exp(-0.4))

    def run(minimum: float) -> bool:
        engine = Cascade.from_dict(
            {"providers": {"p": {"type": "openai", "api_key_env": "X"}},
             "models": {"a": {"provider": "p", "name": "a", "price": {"input": 1, "output": 1}},
                        "b": {"provider": "p", "name": "b", "price": {"input": 1, "output": 1}}},
             "tasks": {"t": {"ladder": ["a", "b"], "evaluators": [
                 {"type": "quality_model", "min": minimum, "model": _tiny_model(0.4)}]}}},
            providers={"p": FakeProvider(script={"a": ["x"], "b": ["y"]})}, ledger=False)
        return engine.complete("t", "q").model == "a"

    assert run(p)
    assert not run(math.nextafter(p, 1.0))


def _router_engine(tmp_path: Path, skip_below: dict[str, float]) -> tuple[Cascade, FakeProvider]:
    # P(right) falls with the prompt's length: weight -4 on prompt.words (log1p of the count)
    router = {"rungs": {"a": {"dense": ["prompt.words"], "weights": [-4.0], "mean": [2.0],
                              "scale": [1.0], "bias": 0.0}}}
    fake = FakeProvider(script={"a": ["small answer"], "b": ["big answer"]})
    engine = Cascade.from_dict(
        {"providers": {"p": {"type": "openai", "api_key_env": "X"}},
         "models": {"a": {"provider": "p", "name": "a", "price": {"input": 1, "output": 1}},
                    "b": {"provider": "p", "name": "b", "price": {"input": 1, "output": 1}}},
         "ledger": {"path": str(tmp_path / "l.sqlite")},
         "tasks": {"t": {"ladder": ["a", "b"],
                         "router": {"model": router, "skip_below": skip_below}}}},
        providers={"p": fake})
    return engine, fake


def test_router_skip_is_a_recorded_step(tmp_path: Path) -> None:
    """A long prompt skips rung a: no call, a 'skip' step with the probability, in the ledger."""
    import sqlite3

    engine, fake = _router_engine(tmp_path, {"a": 0.5})
    result = engine.complete("t", " ".join(["long"] * 40))
    assert [s.decision for s in result.steps] == ["skip", "accept"]
    skip = result.steps[0]
    assert skip.cost_usd == 0 and skip.attempts == 0
    assert skip.verdicts[0].evaluator == "router"
    p = skip.verdicts[0].score
    assert p is not None and p < 0.5
    assert f"{p:.3f}" in skip.verdicts[0].reason
    assert [c["model"] for c in fake.calls] == ["b"]
    short = engine.complete("t", "hi")
    assert short.model == "a"
    engine.close()
    flush_all()  # rows the ledger's writer thread has queued
    rows = sqlite3.connect(tmp_path / "l.sqlite").execute(
        "select decision from steps where model = 'a' order by ts").fetchall()
    assert [r[0] for r in rows] == ["skip", "accept"]


@pytest.mark.parametrize(
    ("skip", "where"),
    [({"b": 0.5}, "tasks.t.router.skip_below.b"), ({"zz": 0.5}, "tasks.t.router.skip_below.zz")],
)
def test_router_thresholds_name_real_lower_rungs(tmp_path: Path, skip: dict[str, float],
                                                 where: str) -> None:
    """The top rung is never skipped, and a threshold must name a rung of the ladder."""
    with pytest.raises(ConfigError) as err:
        _router_engine(tmp_path, skip)
    assert where in str(err.value)


def test_betting_pvalue_is_valid_under_the_null() -> None:
    """At E[d] = 0 the test rejects at most about delta of the time; at +0.1 almost always."""
    rng = np.random.default_rng(0)

    def draw(mean: float) -> np.ndarray:
        return np.where(rng.random(300) < (0.1 - mean), -0.9, 0.1)

    null = [betting_pvalue(draw(0.0), -0.9, 1.0, 0.1, seed=s) <= 0.1 for s in range(300)]
    alt = [betting_pvalue(draw(0.1), -0.9, 1.0, 0.1, seed=s) <= 0.1 for s in range(100)]
    assert np.mean(null) <= 0.13
    assert np.mean(alt) >= 0.95
    assert clt_pvalue(np.full(10, 0.2)) == 0.0 and clt_pvalue(np.full(10, -0.2)) == 1.0


def test_fixed_sequence_stops_at_first_failure() -> None:
    """Candidates after the first non-rejection are never certified, however good."""
    good, bad = np.full(200, 0.1), np.full(200, -0.1)
    cert = fixed_sequence([good, bad, good], -0.9, 1.0, 0.1)
    assert cert.certified == (0,)
    assert len(cert.pvalues) == 2


def test_nothing_certified_keeps_always_top(tmp_path: Path) -> None:
    """When the cheap rung is always wrong, the written config is the top rung alone."""
    cfg = _config(tmp_path, ["small", "large"])
    write_dataset(tmp_path / "train.jsonl", _records(200, 3, small_skill=-1.0))
    result = calibrate(cfg, tmp_path / "train.jsonl", target_quality=0.95, scheme="holdout")
    assert result.status == "ok"
    assert result.ladder == ("large",)
    assert result.guarantee["certified_cheaper_than_top"] is False
    assert "keep the top rung alone: no cheaper policy reached the target" in result.message
    assert [r if isinstance(r, str) else r["model"] for r in
            result.config["tasks"]["t"]["ladder"]] == ["large"]


def test_isotonic_map_is_monotone_and_matches_block_means() -> None:
    """Pool-adjacent-violators: non-decreasing, and equal to the mean label of pooled blocks."""
    cal = fit_isotonic([1, 2, 3, 4], [0, 1, 0, 1])
    assert cal(np.array([1.0]))[0] == 0.0
    assert cal(np.array([2.5]))[0] == pytest.approx(0.5)
    assert cal(np.array([4.0]))[0] == 1.0
    assert list(cal.y) == sorted(cal.y)


def test_logistic_recovers_the_sign_of_a_signal() -> None:
    """A feature that raises the odds gets a positive weight, a useless one stays near zero."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 2))
    y = (rng.random(3000) < 1 / (1 + np.exp(-(2 * x[:, 0])))).astype(float)
    w, _ = fit_logistic(x, y, l2=1.0)
    assert w[0] > 1.5 and abs(w[1]) < 0.2


def test_cli_prints_the_guarantee(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """cascade calibrate prints what it certified and writes the JSON with it."""
    from cascade.cli import main

    cfg = _config(tmp_path, ["small", "large"])
    write_dataset(tmp_path / "train.jsonl", _records(300, 4))
    code = main(["calibrate", str(cfg), str(tmp_path / "train.jsonl"), "--target-quality",
                 "0.9", "--delta", "0.2", "--out", str(tmp_path / "o.yaml"), "--json",
                 str(tmp_path / "o.json"), "--scheme", "holdout"])
    assert code == 0
    assert "guarantee: With 80% confidence" in capsys.readouterr().out
    saved = json.loads((tmp_path / "o.json").read_text())
    assert saved["guarantee"]["delta"] == 0.2


def test_agreement_features_compare_extracted_answers() -> None:
    """Agreement is read on the extracted final answers, oldest first, last one separately."""
    from cascade.models.features import agreement_features

    def extract(text: str) -> str | None:
        return text.split("#### ")[-1] if "####" in text else None

    f = agreement_features("so #### 5", ["x #### 5", "y #### 6"], extract)
    assert f["history.agree_share"] == 0.5
    assert f["history.agree_last"] == 0.0 and f["history.agree_any"] == 1.0
    assert agreement_features("no answer", ["#### 5"], extract)["history.unreadable"] == 1.0
    assert agreement_features("#### 5", [], extract) == {"history.answers": 0.0}


def test_bench_latency_leaves_out_skipped_rungs(tmp_path: Path) -> None:
    """A rung the router skipped adds nothing to the replayed latency of the query."""
    router = {"rungs": {"small": {"dense": ["prompt.words"], "weights": [0.0], "mean": [0.0],
                                  "scale": [1.0], "bias": -5.0}}}
    cfg = {"providers": {"rec": {"type": "replay"}},
           "models": {k: {"provider": "rec", "name": k, "price": {"input": 1, "output": 2}}
                      for k in ("small", "large")},
           "ledger": {"path": None},
           "tasks": {"t": {"ladder": ["small", "large"],
                           "router": {"model": router, "skip_below": {"small": 0.5}}}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    record = ReplayRecord.model_validate({
        "id": "q", "task": "t", "messages": [{"role": "user", "content": "hi"}],
        "responses": {"small": {"text": "a", "score": 1, "latency_ms": 400},
                      "large": {"text": "b", "score": 1, "latency_ms": 900}}})
    report = run_bench(path, [record], task="t").tasks["t"]
    assert report["latency_ms"]["p50"] == 900
    assert report["accepted_share"][0] == 0.0


def test_crossfit_certifies_on_every_train_query(tmp_path: Path) -> None:
    """--scheme crossfit tests out-of-fold estimates of all train queries, along sequences fixed
    before any data is seen, and the config it writes replays to the numbers it reports."""
    from cascade.calibration.policy_search import GRID, grid_paths

    cfg = _config(tmp_path, ["small", "mid", "large"])
    write_dataset(tmp_path / "train.jsonl", _records(600, 5))
    result = calibrate(cfg, tmp_path / "train.jsonl", target_quality=0.9, scheme="crossfit")
    g = result.guarantee
    assert g["scheme"] == "crossfit"
    assert g["fit_queries"] == g["certify_queries"] == 600
    assert g["certified_cheaper_than_top"] is True
    assert result.train["quality"] >= 0.9 * result.train["baselines"]["always_top"]["quality"]
    sequences = grid_paths(3)
    assert len(sequences) == 3  # subsets with a lower rung: (0,1,2), (0,2), (1,2)
    assert all(len(seq) == len(GRID) for seq in sequences)
    assert [p.accept for p in sequences[0][:2]] == [{0: 1.0, 1: 1.0}, {0: 0.995, 1: 0.995}]


@pytest.mark.parametrize(("method", "scheme"), [("policy", "holdout"), ("policy", "auto"),
                                                ("thresholds", "auto")])
def test_relative_model_files_calibrate_from_any_folder(
    calibrated: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str,
    scheme: str,
) -> None:
    """A config naming its quality_model files relative to itself calibrates, search and
    run_bench replay alike, from a working directory elsewhere."""
    out: Path = calibrated["out"]
    assert "model: cal.t.small.quality.json" in out.read_text()
    monkeypatch.chdir(tmp_path)
    result = calibrate(out, calibrated["tmp"] / "train.jsonl", target_quality=0.9,
                       method=method, scheme=scheme)
    assert result.status == "ok"
    assert result.train["n"] == 900


def test_fixed_scheme_does_not_level_a_learned_model(
    calibrated: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quality_model was fitted on labels, so its threshold is no signal known before the
    data: the fixed scheme refuses it (after reading its relative model file from another
    folder), and auto calibrates such a config with holdout."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="use --scheme holdout"):
        calibrate(calibrated["out"], calibrated["tmp"] / "train.jsonl", target_quality=0.9,
                  scheme="fixed")
    auto = calibrate(calibrated["out"], calibrated["tmp"] / "train.jsonl", target_quality=0.9)
    assert auto.guarantee["scheme"] == "holdout"


def test_anchor_paths_anchors_files_not_model_keys(tmp_path: Path) -> None:
    """Model files (quality_model, router, task_router) become absolute; model keys do not."""
    from cascade.calibration.calibrated_file import anchor_paths

    raw = {"task_router": {"model": "tr.json"},
           "tasks": {"t": {"router": {"model": "r.json"}, "ladder": [
               {"model": "a", "evaluators": [{"type": "llm_judge", "model": "b"},
                                             {"type": "quality_model", "model": "q.json"}]}]}}}
    out = anchor_paths(raw, tmp_path)
    assert out["task_router"]["model"] == str(tmp_path / "tr.json")
    assert out["tasks"]["t"]["router"]["model"] == str(tmp_path / "r.json")
    rung = out["tasks"]["t"]["ladder"][0]
    assert rung["model"] == "a"
    assert rung["evaluators"] == [{"type": "llm_judge", "model": "b"},
                                  {"type": "quality_model", "model": str(tmp_path / "q.json")}]
