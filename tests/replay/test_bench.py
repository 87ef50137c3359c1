"""cascade bench: the report's arithmetic on a hand-made dataset, and its guarantees."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cascade import Completion, Request
from cascade.cli import main
from cascade.providers.dataset import ReplayRecord, write_dataset
from cascade.replay.bench import percentile, run_bench

CONFIG: dict[str, Any] = {
    "providers": {"rec": {"type": "replay"}},
    "models": {"a": {"provider": "rec", "name": "model-a", "price": {"input": 1, "output": 1}},
               "b": {"provider": "rec", "name": "model-b", "price": {"input": 1, "output": 1}},
               "c": {"provider": "rec", "name": "model-c", "price": {"input": 1, "output": 1}}},
    "tasks": {"qa": {"ladder": ["a", "b", "c"],
                     "evaluators": [{"type": "length", "min_words": 3}]}},
}
COST = {"a": 0.001, "b": 0.01, "c": 0.1}
LATENCY = {"a": 100.0, "b": 200.0, "c": 400.0}


def rec(rid: str, **answers: tuple[str, float]) -> dict[str, Any]:
    return {"id": rid, "task": "qa", "messages": [{"role": "user", "content": f"question {rid}"}],
            "responses": {f"model-{k}": {"text": text, "score": score, "cost_usd": COST[k],
                                         "latency_ms": LATENCY[k]}
                          for k, (text, score) in answers.items()}}


ROWS = [
    rec("q1", a=("good answer here", 1.0), b=("also good here", 1.0), c=("best answer here", 1.0)),
    rec("q2", a=("bad", 0.0), b=("fine answer now", 1.0), c=("best answer here", 1.0)),
    rec("q3", a=("no", 0.0), b=("nope", 0.0), c=("final long answer", 1.0)),
    rec("q4", a=("x", 0.5), c=("y", 0.0)),  # b has no recording: an error step
]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    dataset = tmp_path / "data.jsonl"
    write_dataset(dataset, [ReplayRecord.model_validate(r) for r in ROWS])
    return config, dataset


def test_report_arithmetic(files: tuple[Path, Path]) -> None:
    """Cost sums along the path, shares, baselines, oracle and percentiles match hand values."""
    report = run_bench(*files).as_json()["tasks"]["qa"]
    approx = pytest.approx
    assert report["n"] == 4
    assert report["ladder"] == ["a", "b", "c"]
    assert report["cost_per_query"] == approx((0.001 + 0.011 + 0.111 + 0.101) / 4)
    assert report["quality"] == approx(0.75)
    assert report["escalation_rate"] == approx([0.75, 0.5])
    assert report["accepted_share"] == approx([0.25, 0.25, 0.5])
    assert report["unaccepted_share"] == approx(0.25)
    assert (report["failed"], report["error_steps"]) == (0, 1)
    base = report["baselines"]
    assert base["always_top"] == approx({"cost_per_query": 0.1, "quality": 0.75})
    assert base["always_first"] == approx({"cost_per_query": 0.001, "quality": 0.375})
    assert base["oracle"] == approx({"cost_per_query": 0.124 / 4, "quality": 0.875})
    # path latencies 100, 300, 700, 500 (q4: a + c; b has no recording)
    assert report["latency_ms"] == approx({"p50": 400.0, "p95": 670.0, "p99": 694.0})
    assert report["engine_overhead_ms"]["p50"] > 0


def test_percentile_linear() -> None:
    """Percentiles interpolate linearly between ranks."""
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 99) == 5
    assert percentile([], 50) == 0.0


def test_cost_from_tokens_when_not_recorded(tmp_path: Path) -> None:
    """Without cost_usd, a recording is priced from its tokens and the config's prices."""
    rows = [{"id": "q", "task": "qa", "messages": [{"role": "user", "content": "x"}],
             "responses": {"model-a": {"text": "three words here", "score": 1.0,
                                       "input_tokens": 1000, "output_tokens": 500}}}]
    config = {**CONFIG, "tasks": {"qa": {"ladder": ["a"]}}}
    report = run_bench(_cfg(config), [ReplayRecord.model_validate(r) for r in rows])
    assert report.tasks["qa"]["cost_per_query"] == pytest.approx(1500 / 1e6)


def _cfg(data: dict[str, Any]) -> Any:
    from cascade.config import parse_config
    return parse_config(data)


SEEN: list[str] = []


def spy(request: Request, completion: Completion) -> bool:
    SEEN.append(repr(request) + repr(completion) + repr(vars(completion)
                                                        if hasattr(completion, "__dict__") else ""))
    return False


def test_labels_never_reach_evaluators(tmp_path: Path) -> None:
    """An evaluator sees the answer text and usage, never the recorded score."""
    SEEN.clear()
    rows = [{"id": "q", "task": "qa", "messages": [{"role": "user", "content": "x"}],
             "responses": {"model-a": {"text": "answer one", "score": 0.123457},
                           "model-b": {"text": "answer two", "score": 0.654321}}}]
    config = {**CONFIG, "tasks": {"qa": {"ladder": ["a", "b"], "evaluators": [
        {"type": "callable", "path": f"{__name__}:spy"}]}}}
    run_bench(_cfg(config), [ReplayRecord.model_validate(r) for r in rows])
    assert len(SEEN) == 2
    assert "answer one" in SEEN[0]
    assert not any("0.123457" in s or "0.654321" in s or "score=" in s for s in SEEN)


def test_malformed_line_no_partial_report(files: tuple[Path, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A bad line fails with its line number and nothing is reported."""
    config, dataset = files
    lines = dataset.read_text().splitlines()
    lines[2] = lines[2].replace('"score":1.0', '"score":7')
    dataset.write_text("\n".join(lines) + "\n")
    assert main(["bench", str(config), str(dataset)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{dataset}:3:" in err
    assert "score" in err


def test_unknown_task_in_dataset(files: tuple[Path, Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A record naming a task the config lacks is an error before anything runs."""
    config, dataset = files
    dataset.write_text(dataset.read_text().replace('"task":"qa"', '"task":"math"', 1))
    assert main(["bench", str(config), str(dataset)]) == 2
    assert "task 'math' is not in the config" in capsys.readouterr().err


def test_task_flag_with_a_dataset_of_another_task(files: tuple[Path, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """--task with queries that name a task the config lacks names both sides' tasks, and
    does not advise the --task that was just given."""
    config, dataset = files
    dataset.write_text(dataset.read_text().replace('"task":"qa"', '"task":"math"'))
    assert main(["bench", str(config), str(dataset), "--task", "qa"]) == 2
    err = capsys.readouterr().err
    assert "(config tasks: qa; dataset tasks: math)" in err
    assert "a query's own task comes before --task" in err
    assert "pass --task to choose one" not in err


def test_task_flag_matching_no_query(files: tuple[Path, Path],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--task naming a config task that no query ends up in is refused, not silently ignored."""
    config, dataset = files
    tasks = {**CONFIG["tasks"], "math": CONFIG["tasks"]["qa"]}
    config.write_text(yaml.safe_dump({**CONFIG, "tasks": tasks}, sort_keys=False))
    assert main(["bench", str(config), str(dataset), "--task", "math"]) == 2
    err = capsys.readouterr().err
    assert "--task 'math' matches no query" in err
    assert "(dataset tasks: qa; config tasks: qa, math)" in err


def test_task_flag_not_in_config(files: tuple[Path, Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--task that the config does not define is named as the flag, with the config's tasks."""
    config, dataset = files
    assert main(["bench", str(config), str(dataset), "--task", "nope"]) == 2
    assert "--task 'nope' is not one of the config's tasks (qa)" in capsys.readouterr().err


def test_cli_json_and_plot(files: tuple[Path, Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """bench --json writes the contract keys; --plot writes a PNG."""
    config, dataset = files
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["bench", str(config), str(dataset), "--json", str(out), "--plot", str(png)]) == 0
    report = json.loads(out.read_text())["tasks"]["qa"]
    assert {"n", "ladder", "escalation_rate", "accepted_share", "cost_per_query", "quality",
            "baselines", "latency_ms", "engine_overhead_ms"} <= set(report)
    assert set(report["baselines"]) == {"always_top", "always_first", "oracle"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cascade" in capsys.readouterr().out


def test_same_path_as_complete(files: tuple[Path, Path]) -> None:
    """bench reaches the same decisions as complete() with a replay provider over the file."""
    from cascade import Cascade
    from cascade.config import load_config

    config, dataset = files
    data = yaml.safe_load(config.read_text())
    data["providers"]["rec"]["dataset"] = str(dataset)
    engine = Cascade.from_dict(data, ledger=False)
    models = [engine.complete("qa", [{"role": "user", "content": "q"}], query_id=q).model
              for q in ("q1", "q2", "q3", "q4")]
    assert models == ["a", "b", "c", "c"]
    assert load_config(config)
