"""A ledger filled by real engine runs: the SDK clients against the loopback MockLLMServer.

A two-rung ladder (mini -> sonnet). mini accepts every answer (a length check only) but is wrong
on the hard questions (a + b >= 45), where it hedges; sonnet is always right. With
``shadow_rate: 1`` every accepted mini answer also gets sonnet's answer and a shadow label.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cascade import Cascade
from cascade.testing import MockLLMServer, Reply
from tests.conftest import live_config

MINI, SONNET = "gpt-4o-mini", "claude-sonnet-4-6"  # the replay keys: the provider model names


def question(i: int) -> tuple[str, bool]:
    """The prompt of run i, and whether mini answers it right."""
    a, b = (i * 7) % 40 + 1, (i * 13) % 45 + 1
    return f"Question {i}: what is {a} plus {b}?", a + b < 45


def responder(model: str, body: dict[str, Any]) -> Reply:
    text = body["messages"][-1]["content"]
    if isinstance(text, list):
        text = " ".join(p.get("text", "") for p in text)
    a, b = map(int, re.findall(r"what is (\d+) plus (\d+)", text)[0])
    if model == SONNET or a + b < 45:
        return Reply(f"The answer is {a + b}.")
    return Reply(f"I am not sure, but I think it might be around {a + b + 1}, maybe.")


@dataclass
class Traffic:
    config: Path
    run_ids: list[str]
    right: list[bool]  # mini's answer to run i is right


def serve_traffic(
    tmp_path: Path,
    ledger: Mapping[str, Any],
    n: int,
    rated: Mapping[int, float] = {},
    *,
    content: bool = True,
    **task: Any,
) -> Traffic:
    """Run ``n`` questions through a config whose ledger is ``ledger``, then store the user
    scores ``rated`` (run index -> score) with ``engine.feedback``."""
    run_ids, right = [], []
    with MockLLMServer(responder=responder) as upstream:
        data = live_config(upstream, evaluators=[{"type": "length", "min_words": 2}], **task)
        data["ledger"] = dict(ledger)
        if content:
            data["logging"] = {"content": True}
        config = tmp_path / "cascade.yaml"
        config.write_text(yaml.safe_dump(data))
        with Cascade.from_yaml(config) as engine:
            for i in range(n):
                prompt, ok = question(i)
                run_ids.append(engine.complete("faq", prompt).run_id)
                right.append(ok)
                # one at a time: a run that finds shadow_max_in_flight taken is not shadowed
                engine.shadows.wait()
            for i, score in rated.items():
                engine.feedback(run_ids[i], score)
    return Traffic(config, run_ids, right)
