"""The production loop through the gateway: traffic, feedback, export, calibrate, a new config.

A two-rung ladder (mini -> sonnet) behind the real gateway, the real SDK clients talking to a
loopback upstream. mini accepts every answer (length check only) but is wrong on the hard half
of the questions, where it hedges; sonnet is always right. Shadow evaluation (``shadow_rate:
1``) calls sonnet after each accepted mini answer and labels it; users send some feedback. The
ledger is exported to the replay format and ``cascade calibrate`` learns a config that catches
mini's wrong answers: benched on the exported data, it is far better than the deployed one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from cascade import Cascade
from cascade.cli import main
from cascade.gateway.app import create_app, running
from cascade.testing import MockLLMServer, Reply
from tests.conftest import live_config

KEY = "loop-key"
N = 160


def _question(i: int) -> tuple[str, int, int]:
    a, b = (i * 7) % 40 + 1, (i * 13) % 45 + 1
    return f"Question {i}: what is {a} plus {b}?", a, b


def responder(model: str, body: dict[str, Any]) -> Reply:
    if "messages" in body:
        text = body["messages"][-1]["content"]
    else:
        text = body["messages"][-1]["content"]
    if isinstance(text, list):
        text = " ".join(p.get("text", "") for p in text)
    a, b = map(int, re.findall(r"what is (\d+) plus (\d+)", text)[0])
    if model == "claude-sonnet-4-6" or a + b < 45:
        return Reply(f"The answer is {a + b}.")
    # mini is wrong on the hard half, and hedges there (a shape a quality model can learn)
    return Reply(f"I am not sure, but I think it might be around {a + b + 1}, maybe.")


def _post(url: str, path: str, body: dict[str, Any]) -> httpx2.Response:
    return httpx2.post(f"{url}{path}", json=body, timeout=30,
                       headers={"authorization": f"Bearer {KEY}"})


@pytest.mark.usefixtures("keys")
def test_whole_loop_through_the_gateway(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite"
    with MockLLMServer(responder=responder) as upstream:
        data = live_config(upstream, ledger=str(ledger), evaluators=[
            {"type": "length", "min_words": 2}], shadow_rate=1.0)
        data["logging"] = {"content": True}
        config = tmp_path / "cascade.yaml"
        config.write_text(yaml.safe_dump(data))
        engine = Cascade.from_yaml(config)
        runs: list[tuple[str, bool]] = []
        with running(create_app(engine, api_keys=[KEY])) as url:
            for i in range(N):
                prompt, a, b = _question(i)
                reply = _post(url, "/v1/chat/completions", {
                    "model": "faq", "messages": [{"role": "user", "content": prompt}]})
                assert reply.status_code == 200, reply.text
                assert reply.headers["x-cascade-task"] == "faq"
                runs.append((reply.headers["x-cascade-run-id"], a + b < 45))
            # Users rate some answers (1 when right); a bad score and an unknown run are 400s.
            for run_id, right in runs[:40]:
                got = _post(url, "/v1/feedback", {"run_id": run_id, "score": float(right),
                                                   "comment": "rated"})
                assert got.status_code == 200, got.text
                assert got.json()["source"] == "user"
            bad = _post(url, "/v1/feedback", {"run_id": runs[0][0], "score": 1.5})
            assert bad.status_code == 400 and "score" in bad.json()["error"]["message"]
            unknown = _post(url, "/v1/feedback", {"run_id": "nope", "score": 1})
            assert unknown.status_code == 400
            assert unknown.json()["error"]["code"] == "run_not_found"
            assert httpx2.post(f"{url}/v1/feedback", json={"run_id": runs[0][0], "score": 1},
                               timeout=30).status_code == 401
        # Shadow calls run off the request path; the gateway's shutdown waited for them.
        assert not engine.shadows._tasks
        with engine, running(create_app(engine, api_keys=[KEY])) as url:
            metrics = httpx2.get(f"{url}/metrics", timeout=30,
                                 headers={"authorization": f"Bearer {KEY}"}).text
        week = re.search(r'cascade_drift_accepted_score\{rung="mini",task="faq",week="([^"]+)"\} '
                         r'([0-9.]+)', metrics)
        assert week is not None
        # every mini answer is labelled (users or shadows), and the label is the truth here
        assert float(week.group(2)) == pytest.approx(sum(r for _, r in runs) / N)
    # Every accepted mini answer got a shadow call to sonnet, recorded apart from the run.
    out = tmp_path / "prod.jsonl"
    assert main(["data", "export", "--from-ledger", str(ledger), str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == N
    sources = [src for line in lines for src in line["meta"]["score_sources"].values()]
    assert sources.count("feedback") == 40
    assert sources.count("reference") == N
    assert sources.count("shadow:agreement") == N - 40
    for line in lines:
        mini = line["responses"]["gpt-4o-mini"]
        a, b = map(int, re.findall(r"what is (\d+) plus (\d+)", line["messages"][0]["content"])[0])
        assert mini["score"] == float(a + b < 45)  # the label is the truth here
        assert line["responses"]["claude-sonnet-4-6"]["score"] == 1.0
    # Calibrate on production data; the new config differs and is much better on it.
    calibrated = tmp_path / "calibrated.yaml"
    assert main(["calibrate", str(config), str(out), "--target-quality", "0.9",
                 "--out", str(calibrated)]) == 0
    new = yaml.safe_load(calibrated.read_text())
    assert new["tasks"]["faq"] != data["tasks"]["faq"]
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    assert main(["bench", str(config), str(out), "--json", str(before)]) == 0
    assert main(["bench", str(calibrated), str(out), "--json", str(after)]) == 0
    q_before = json.loads(before.read_text())["tasks"]["faq"]["quality"]
    q_after = json.loads(after.read_text())["tasks"]["faq"]["quality"]
    assert q_before < 0.7
    assert q_after >= 0.9


@pytest.mark.usefixtures("keys")
def test_gateway_shutdown_waits_for_shadow_calls(tmp_path: Path) -> None:
    """A shadow call still running when the gateway stops is finished and recorded, not lost."""
    ledger = tmp_path / "ledger.sqlite"
    with MockLLMServer() as upstream:
        upstream.script("gpt-4o-mini", ["The answer is 4."])
        upstream.script("claude-sonnet-4-6", [Reply("The answer is 4.", delay_s=0.5)])
        data = live_config(upstream, ledger=str(ledger), shadow_rate=1.0)
        with Cascade.from_dict(data) as engine:
            with running(create_app(engine, api_keys=[KEY])) as url:
                reply = _post(url, "/v1/chat/completions", {
                    "model": "faq", "messages": [{"role": "user", "content": "2+2?"}]})
                assert reply.status_code == 200
            rows = engine.ledger.query(  # type: ignore[union-attr]
                "SELECT model, decision, status FROM steps ORDER BY step")
            labels = engine.ledger.query(  # type: ignore[union-attr]
                "SELECT score, source FROM feedback")
    assert [tuple(r) for r in rows] == [("mini", "accept", "settled"),
                                        ("sonnet", "shadow", "settled")]
    assert [tuple(r) for r in labels] == [(1.0, "shadow:agreement")]
