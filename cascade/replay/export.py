"""``cascade data export --from-ledger``: the replay format, rebuilt from production runs.

Only runs logged with content (``logging: {content: true}``, or ``complete(log_content=True)``)
can be exported: the ledger's ``content`` table holds their prompt and every answer (the rungs
that escalated, the one that answered, and shadow calls). Each answer becomes a response keyed
by the model's provider name (the replay format's key), with its tokens, cost and latency from
its step row, and a ``score`` obtained, in this order of preference:

1. ``feedback``: a user's score (the latest) for the answer the run returned;
2. ``reference``: the answer of the highest rung that answered in the run (a shadow call to the
   top rung, or the rung an escalation ended on) is taken as right, score 1.0;
3. ``shadow:agreement`` / ``agreement:MODEL``: any other answer scores 1.0 if it agrees with that
   reference answer (``cascade.engine.shadow.agreement_label``), else 0.0.

A run with a single answer and no user feedback has no label and is left out (counted).
``meta.score_sources`` says, per response, which rule gave its score, and ``meta.run_id`` links
the line back to the ledger.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cascade.engine.shadow import agreement_label
from cascade.errors import ConfigError
from cascade.formatting import to_json
from cascade.ledger import Ledger
from cascade.providers.dataset import ReplayRecord

__all__ = ["ExportSummary", "export_ledger", "parse_since"]


@dataclass(frozen=True, slots=True)
class ExportSummary:
    written: int
    unlabelled: int  # runs with content but no label (one answer, no feedback)
    runs_with_content: int
    sources: dict[str, int]


def parse_since(value: str) -> float:
    """``2026-11-30`` or an ISO timestamp (UTC unless it says otherwise) as a Unix time.

    Raises:
        ConfigError: not a date.
    """
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(f"not a date (YYYY-MM-DD or ISO 8601): {value!r}",
                          location="--since") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _filters(task: str | None, since: float | None) -> tuple[str, tuple[Any, ...]]:
    where = ["r.run_id IN (SELECT run_id FROM content WHERE kind = 'prompt')"]
    args: list[Any] = []
    if task is not None:
        where.append("r.task = ?")
        args.append(task)
    if since is not None:
        where.append("r.ts >= ?")
        args.append(since)
    return " AND ".join(where), tuple(args)


def export_ledger(
    ledger: Ledger, out: str | Path, *, task: str | None = None, since: float | None = None
) -> ExportSummary:
    """Write the replay dataset of the ledger's runs logged with content."""
    where, args = _filters(task, since)
    runs = ledger.query(
        f"SELECT r.run_id, r.ts, r.task, r.model, r.accepted FROM runs r WHERE {where}"
        " ORDER BY r.ts, r.run_id", args)
    content: dict[str, list[Any]] = defaultdict(list)
    for row in ledger.query(
        "SELECT c.run_id, c.step, c.kind, c.model, c.model_name, c.text FROM content c"
        f" JOIN runs r ON r.run_id = c.run_id WHERE {where} ORDER BY c.step, c.id", args):
        content[row["run_id"]].append(row)
    steps: dict[tuple[str, int], Any] = {}
    for row in ledger.query(
        "SELECT s.run_id, s.step, s.decision, s.input_tokens, s.output_tokens, s.cost_usd,"
        f" s.latency_ms FROM steps s JOIN runs r ON r.run_id = s.run_id WHERE {where}", args):
        steps[(row["run_id"], int(row["step"]))] = row
    user: dict[str, float] = {}
    for row in ledger.query(
        "SELECT f.run_id, f.score FROM feedback f JOIN runs r ON r.run_id = f.run_id"
        f" WHERE {where} AND f.source = 'user' ORDER BY f.ts, f.id", args):
        user[row["run_id"]] = float(row["score"])  # the latest wins
    written = unlabelled = 0
    sources: dict[str, int] = defaultdict(int)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for run in runs:
            record = _record(run, content[run["run_id"]], steps, user.get(run["run_id"]))
            if record is None:
                unlabelled += 1
                continue
            ReplayRecord.model_validate(record)  # what calibrate will read back
            for source in record["meta"]["score_sources"].values():
                sources[source.split(":")[0] if source.startswith("agreement") else source] += 1
            fh.write(to_json(record, ensure_ascii=False) + "\n")
            written += 1
    return ExportSummary(written, unlabelled, len(runs), dict(sources))


def _record(
    run: Any, rows: list[Any], steps: dict[tuple[str, int], Any], feedback: float | None
) -> dict[str, Any] | None:
    prompt = next((r for r in rows if r["kind"] == "prompt"), None)
    if prompt is None:
        return None
    # The last answer of each model (a repaired answer replaces the first try).
    answers: dict[str, Any] = {}
    for row in rows:
        if row["kind"] == "answer" and row["model"]:
            answers.pop(row["model"], None)
            answers[row["model"]] = row
    if not answers:
        return None
    ordered = sorted(answers.values(), key=lambda r: int(r["step"]))
    returned = run["model"]
    reference = ordered[-1]
    responses: dict[str, dict[str, Any]] = {}
    score_sources: dict[str, str] = {}
    for row in ordered:
        step = steps.get((run["run_id"], int(row["step"])))
        if feedback is not None and row["model"] == returned:
            score, source = feedback, "feedback"
        elif len(ordered) < 2:
            continue  # one answer and no user score: nothing to compare it with
        elif row is reference:
            score, source = 1.0, "reference"
        else:
            score = agreement_label(row["text"], reference["text"])
            shadowed = step is not None and any(
                (run["run_id"], int(r["step"])) in steps
                and steps[(run["run_id"], int(r["step"]))]["decision"] == "shadow"
                for r in ordered)
            source = "shadow:agreement" if shadowed else f"agreement:{reference['model']}"
        name = row["model_name"] or row["model"]
        entry: dict[str, Any] = {"text": row["text"], "score": float(score)}
        if step is not None:
            entry.update(
                input_tokens=int(step["input_tokens"]), output_tokens=int(step["output_tokens"]),
                cost_usd=float(step["cost_usd"]), latency_ms=float(step["latency_ms"]))
        responses[name] = entry
        score_sources[name] = source
    if not responses:
        return None
    messages = [
        {"role": m.get("role", "user"), "content": m.get("content", "")}
        for m in json.loads(prompt["text"])
        if isinstance(m.get("content"), str) and m.get("role") in ("system", "user", "assistant")
    ]
    if not messages:
        return None
    return {
        "id": str(run["run_id"]),
        "task": str(run["task"]),
        "messages": messages,
        "responses": responses,
        "meta": {"source": "ledger", "run_id": str(run["run_id"]), "ts": float(run["ts"]),
                 "returned": returned, "score_sources": score_sources},
    }
