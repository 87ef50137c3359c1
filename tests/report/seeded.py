"""A ledger seeded by real engine runs: MockLLMServer upstream, a three-rung ladder, some
escalations, shadow calls of the top rung, user feedback and a failed call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cascade import Cascade
from cascade.ledger.feedback import add_feedback
from cascade.testing import MockLLMServer, Reply
from tests.conftest import live_config

GOOD = "a fine and complete answer"


def seeded_config(server: MockLLMServer, ledger: Path) -> dict[str, Any]:
    data = live_config(server, ladder=["mini", "mid", "sonnet"], ledger=str(ledger),
                       attempts=1, shadow_rate=1.0, quality_target=0.8)
    data["tasks"]["code"] = {"ladder": ["mini", "sonnet"],
                             "evaluators": [{"type": "length", "min_words": 3}]}
    data["budgets"] = {"daily_usd": 5.0}
    return data


def seed(server: MockLLMServer, ledger: Path) -> Cascade:
    """Run the engine over the mock upstream; returns it (the caller closes it)."""
    # mini fails once (an error step), then answers well or too briefly (escalated); shadow
    # calls (every run mini or mid answered) call mid and sonnet, so each run's are waited for
    server.script("gpt-4o-mini", [Reply(status=500, message="down"), GOOD, "no", GOOD, "no",
                                  GOOD, "no", GOOD])
    server.script("gpt-4o", [GOOD])
    server.script("claude-sonnet-4-6", [Reply(text=GOOD + " indeed", output_tokens=9)])
    engine = Cascade.from_dict(seeded_config(server, ledger), sleep=lambda s: None)
    results = []
    for task, prompt in [*(("faq", f"question {i}") for i in range(6)),
                         *(("code", f"snippet {i}") for i in range(2))]:
        results.append(engine.complete(task, prompt))
        engine.shadows.wait()
    for result, score in zip(results[:3], (1.0, 0.5, 0.0), strict=True):
        add_feedback(engine.ledger, result.run_id, score)
    engine.ledger.flush()  # type: ignore[union-attr]
    return engine
