"""``calibrate --from-ledger`` with shadow labels: an escalated run is kept only at the shadow
rate, as a run accepted below the top is shadowed, so hard queries are not over-represented."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from cascade import Ledger
from cascade.cli import main
from cascade.config import load_config
from cascade.ledger.feedback import add_feedback
from cascade.replay.export import kept_for_balance, ledger_rows, task_rows
from cascade.types import CascadeResult, StepRecord

RATE = 0.25
N = 2000
MINI, SONNET = "gpt-4o-mini", "claude-sonnet-4-6"


@dataclass
class Traffic:
    config: Path
    ledger: Path
    escalated: set[str]  # hard queries: mini was rejected, sonnet answered
    shadowed: set[str]  # easy queries accepted by mini and shadowed (at RATE)
    accepted: set[str]  # every easy query accepted by mini
    rated: set[str]  # escalated runs with a user score


def _step(run_id: str, step: int, model: str, decision: str) -> StepRecord:
    provider = "openai" if model == "mini" else "anthropic"
    return StepRecord(run_id, "faq", step, model, provider, 1, 10, 5, 0.0, 100.0, decision)


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Traffic:
    """2,000 seeded runs: 30% hard (escalated), the rest accepted by mini, a quarter of those
    shadowed; a user scored every tenth escalated run."""
    tmp = tmp_path_factory.mktemp("balance")
    data = {
        "providers": {"openai": {"type": "openai"}, "anthropic": {"type": "anthropic"}},
        "models": {
            "mini": {"provider": "openai", "name": MINI, "price": {"input": 0.15, "output": 0.6}},
            "sonnet": {
                "provider": "anthropic",
                "name": SONNET,
                "price": {"input": 3.0, "output": 15.0},
            },
        },
        "ledger": {"path": str(tmp / "ledger.sqlite")},
        "logging": {"content": True},
        "tasks": {
            "faq": {
                "ladder": ["mini", "sonnet"],
                "shadow_rate": RATE,
                "shadow_labels": True,
                "evaluators": [{"type": "length", "min_words": 3}],
            }
        },
    }
    config = tmp / "cascade.yaml"
    config.write_text(yaml.safe_dump(data))
    rng = random.Random(7)
    out = Traffic(config, tmp / "ledger.sqlite", set(), set(), set(), set())
    ledger = Ledger(out.ledger)
    try:
        for i in range(N):
            run_id = f"run-{i:05d}"
            prompt = (0, "prompt", None, None, f'[{{"role": "user", "content": "q {i}"}}]', None)
            right = (2, "answer", "sonnet", SONNET, f"The answer is {i}.", None)
            if rng.random() < 0.3:
                steps = [_step(run_id, 1, "mini", "escalate"), _step(run_id, 2, "sonnet", "accept")]
                wrong = (1, "answer", "mini", MINI, f"The answer is {i + 1}.", -1.2)
                content, model = [prompt, wrong, right], "sonnet"
                out.escalated.add(run_id)
            else:
                steps = [_step(run_id, 1, "mini", "accept")]
                content = [prompt, (1, "answer", "mini", MINI, f"The answer is {i}.", -0.1)]
                model = "mini"
                out.accepted.add(run_id)
            if model == "mini" and rng.random() < RATE:
                steps.append(_step(run_id, 2, "sonnet", "shadow"))
                content.append(right)
                out.shadowed.add(run_id)
            for step in steps:
                ledger.record_step(step)
            ledger.record_run(
                CascadeResult("", model, True, 0.0, 100.0, run_id, tuple(steps), task="faq"),
                content=content,
            )
        for run_id in sorted(out.escalated)[::10]:
            add_feedback(ledger, run_id, 0.0)
            out.rated.add(run_id)
    finally:
        ledger.close()
    return out


def _labelled(traffic: Traffic, *, balanced: bool = True) -> set[str]:
    """The labelled runs' ids as calibrate --from-ledger reads them (or without the balance)."""
    ledger = Ledger(traffic.ledger)
    try:
        rows = (
            task_rows(load_config(traffic.config), "faq", ledger)
            if balanced
            else ledger_rows(ledger, top=SONNET, task="faq", agreement=True)
        )
    finally:
        ledger.close()
    return {r.id for r in rows.labelled}


def test_every_outcome_is_labelled_at_the_shadow_rate(traffic: Traffic) -> None:
    """Escalated runs without a user score are kept at about the shadow rate, the share of
    accepted runs that were shadowed, so hard queries weigh in the labelled set as in traffic;
    rated runs all stay."""
    labelled = _labelled(traffic)
    unrated = traffic.escalated - traffic.rated
    assert traffic.rated <= labelled
    assert labelled & traffic.accepted == traffic.shadowed
    kept = len(labelled & unrated) / len(unrated)
    shadowed = len(traffic.shadowed) / len(traffic.accepted)
    assert abs(kept - RATE) < 0.04
    assert abs(shadowed - RATE) < 0.04
    hard_in_traffic = len(traffic.escalated) / N
    hard_in_labelled = len(labelled & unrated) / len(labelled - traffic.rated)
    assert abs(hard_in_labelled - hard_in_traffic) < 0.05
    unbalanced = _labelled(traffic, balanced=False) - traffic.rated
    assert len(unbalanced & traffic.escalated) / len(unbalanced) > 0.6  # the bias it removes


def test_the_kept_runs_are_decided_by_their_ids(traffic: Traffic) -> None:
    """The choice is a stable hash of the run id: every read keeps the same runs."""
    labelled = _labelled(traffic)
    unrated = traffic.escalated - traffic.rated
    assert labelled & unrated == {r for r in unrated if kept_for_balance(r, RATE)}
    assert _labelled(traffic) == labelled
    assert kept_for_balance("run-00001", 1.0)
    assert not kept_for_balance("run-00001", 0.0)


def test_the_progress_line_counts_the_runs_dropped(
    traffic: Traffic, capsys: pytest.CaptureFixture[str]
) -> None:
    """calibrate --from-ledger says how many escalated runs it dropped for balance."""
    unrated = traffic.escalated - traffic.rated
    dropped = len(unrated - _labelled(traffic))
    main(
        [
            "calibrate",
            str(traffic.config),
            "--from-ledger",
            "--target-quality",
            "0.9",
            "--out",
            str(traffic.config.parent / "out.yaml"),
        ]
    )
    err = capsys.readouterr().err
    assert (
        f"{dropped} escalated without a user score dropped for balance (kept at shadow_rate "
        f"{RATE:g}, like the runs shadowed)" in err
    )
