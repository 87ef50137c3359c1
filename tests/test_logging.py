"""Structured log events: one cascade.step per step and one cascade.run per call; no secrets."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from cascade import Cascade
from cascade.testing import FakeProvider, MockLLMServer, Reply
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, live_config
from tests.engine.test_engine import config

STEP_FIELDS = {"run_id", "task", "step", "model", "provider", "attempts", "input_tokens",
               "output_tokens", "cost_usd", "latency_ms", "decision", "verdicts"}


def run_logged(**kwargs: object) -> list[dict[str, object]]:
    fake = FakeProvider("p", {"small": ["no"], "medium": ["a fine answer"]})
    engine = Cascade.from_dict(config(), providers={"p": fake}, ledger=False)
    with capture_logs() as logs:
        engine.complete("t", "a secret question", **kwargs)  # type: ignore[arg-type]
    return logs


def test_step_and_run_events() -> None:
    """Each step logs cascade.step with the documented fields; the call ends with cascade.run."""
    logs = run_logged()
    steps = [e for e in logs if e["event"] == "cascade.step"]
    assert len(steps) == 2
    assert STEP_FIELDS <= set(steps[0])
    assert steps[0]["decision"] == "escalate"
    assert steps[0]["verdicts"] == [{"evaluator": "length", "passed": False, "score": 0.0,
                                     "reason": "1 word, below the minimum 3"}]
    (run,) = [e for e in logs if e["event"] == "cascade.run"]
    assert run["model"] == "medium"
    assert run["steps"] == 2


def test_content_left_out_by_default() -> None:
    """Prompt and answer text are not logged unless asked for."""
    assert "a fine answer" not in repr(run_logged())


def test_content_logged_on_request() -> None:
    """log_content=True adds the answer text."""
    assert "a fine answer" in repr(run_logged(log_content=True))


@pytest.mark.usefixtures("keys")
def test_keys_never_leak(server: MockLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    """A fake key echoed by the server appears nowhere: logs, steps, errors, reprs."""
    server.script("gpt-4o-mini", [Reply(status=401, message=f"bad key {FAKE_OPENAI_KEY}")])
    server.script("claude-sonnet-4-6", [Reply(status=403,
                                              message=f"forbidden {FAKE_ANTHROPIC_KEY}")])
    engine = Cascade.from_dict(live_config(server), ledger=False)
    # closed, or its SDK client's socket is left for the garbage collector to report as a
    # ResourceWarning in whichever later test happens to trigger a collection
    with engine, capture_logs() as logs:
        try:
            engine.complete("faq", "q")
        except Exception as exc:  # noqa: BLE001  (we inspect whatever comes out)
            caught = exc
    seen = " ".join([repr(logs), str(caught), repr(caught.__dict__), repr(engine),
                     repr(engine.providers), capsys.readouterr().out])
    assert "OPENAI_API_KEY" in seen
    assert FAKE_OPENAI_KEY not in seen
    assert FAKE_ANTHROPIC_KEY not in seen
