"""The replay format, rebuilt from production runs: ``cascade data export --from-ledger`` and
``cascade calibrate --from-ledger``.

Only runs logged with content (``logging: {content: true}``, or ``complete(log_content=True)``)
can be read back: the ledger's ``content`` table holds their prompt and every answer (the rungs
that escalated, the one that answered, and shadow calls). Each answer becomes a response keyed
by the model's provider name (the replay format's key), with its tokens, cost and latency from
its step row, its mean token log-probability (``logprob``) when the provider returned them, and
a ``score`` obtained, in this order of preference:

1. ``feedback``: a user's score (the latest) for the answer the run returned;
2. ``reference``: the answer of the highest rung that answered in the run (a shadow call to the
   top rung, or the rung an escalation ended on) is taken as right, score 1.0;
3. ``shadow:agreement`` / ``agreement:MODEL``: any other answer scores 1.0 if it agrees with that
   reference answer (``cascade.engine.shadow.agreement_label``), else 0.0.

A run with a single answer and no user feedback has no label. ``meta.score_sources`` says, per
response, which rule gave its score, ``meta.shadowed`` whether an answer came from a shadow call,
and ``meta.run_id`` links the line back to the ledger.

``export_ledger`` writes every labelled run (rule 3 always applies: the file says where each
score came from). ``task_rows`` is what ``calibrate --from-ledger`` reads: it applies rule 3 only
where the task sets ``shadow_labels: true``, keeps only runs with the top rung's answer, and
returns the runs without any label apart, with no score at all (an unlabelled pool). With
agreement labels it also keeps an escalated run only at the task's ``shadow_rate``, the chance a
run accepted below the top had of being shadowed, so that hard queries are not over-represented.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascade.config import CascadeConfig
from cascade.engine.shadow import agreement_label
from cascade.formatting import to_json
from cascade.ledger import Ledger
from cascade.providers.dataset import ReplayRecord
from cascade.report.period import parse_since

__all__ = ["ExportSummary", "LedgerRows", "export_ledger", "kept_for_balance", "ledger_rows",
           "parse_since", "task_rows"]


@dataclass(frozen=True, slots=True)
class ExportSummary:
    written: int
    unlabelled: int  # runs with content but no label (one answer, no feedback)
    runs_with_content: int
    sources: dict[str, int]


@dataclass(frozen=True, slots=True)
class LedgerRows:
    """A task's runs logged with content, split by what calibration may learn from them.

    Attributes:
        labelled: Runs whose every answer has a score, the top rung's answer among them.
        unlabelled: Runs without any label, in the replay format with no ``score`` anywhere:
            an unlabelled pool, whose quality nobody measured.
        incomplete: Runs left out: a label, but an answer no rule scores, or no answer of the
            top rung (a run accepted below the top and not shadowed), so the cascade could not
            be compared with always-top on them.
        runs_with_content: Every run of the task (and period) logged with content.
        sources: How many scores each rule gave in ``labelled``.
        balanced: Labelled runs dropped for balance: escalated runs without a user score,
            beyond the shadow rate's share (see ``ledger_rows``'s ``balance``).
    """

    labelled: list[ReplayRecord]
    unlabelled: list[dict[str, Any]]
    incomplete: int
    runs_with_content: int
    sources: dict[str, int]
    balanced: int = 0


def _filters(
    task: str | None, since: float | None, until: float | None
) -> tuple[str, tuple[Any, ...]]:
    where = ["r.run_id IN (SELECT run_id FROM content WHERE kind = 'prompt')"]
    args: list[Any] = []
    for clause, value in (("r.task = ?", task), ("r.ts >= ?", since), ("r.ts < ?", until)):
        if value is not None:
            where.append(clause)
            args.append(value)
    return " AND ".join(where), tuple(args)


def _runs(
    ledger: Ledger, task: str | None, since: float | None, until: float | None, agreement: bool
) -> Iterator[dict[str, Any] | None]:
    """One replay line per run logged with content (None: nothing to replay); a response
    without a ``score`` is an answer no rule scores."""
    where, args = _filters(task, since, until)
    runs = ledger.query(
        f"SELECT r.run_id, r.ts, r.task, r.model, r.accepted FROM runs r WHERE {where}"
        " ORDER BY r.ts, r.run_id", args)
    content: dict[str, list[Any]] = defaultdict(list)
    for row in ledger.query(
        "SELECT c.run_id, c.step, c.kind, c.model, c.model_name, c.text, c.logprob FROM content c"
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
    for run in runs:
        yield _record(run, content[run["run_id"]], steps, user.get(run["run_id"]), agreement)


def _scored(record: dict[str, Any]) -> dict[str, Any]:
    """The record with only its scored responses."""
    responses = {k: v for k, v in record["responses"].items() if "score" in v}
    return {**record, "responses": responses}


def export_ledger(
    ledger: Ledger, out: str | Path, *, task: str | None = None, since: float | None = None,
    until: float | None = None,
) -> ExportSummary:
    """Write the replay dataset of the ledger's labelled runs logged with content."""
    written = unlabelled = runs = 0
    sources: dict[str, int] = defaultdict(int)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for found in _runs(ledger, task, since, until, agreement=True):
            runs += 1
            record = _scored(found) if found is not None else None
            if record is None or not record["responses"]:
                unlabelled += 1
                continue
            ReplayRecord.model_validate(record)  # what calibrate will read back
            _count(sources, record)
            fh.write(to_json(record, ensure_ascii=False) + "\n")
            written += 1
    return ExportSummary(written, unlabelled, runs, dict(sources))


def ledger_rows(
    ledger: Ledger,
    *,
    top: str,
    task: str | None = None,
    since: float | None = None,
    until: float | None = None,
    agreement: bool = False,
    balance: float | None = None,
) -> LedgerRows:
    """The ledger's runs logged with content, labelled runs apart from unlabelled ones.

    Args:
        top: The top rung's provider model name (the replay key): a run without its answer is
            left out, since neither always-top nor an escalation to it can be replayed there.
        agreement: Score answers by agreement with the reference answer (rule 3), and count a
            run with two answers and no user score as labelled. False: only user scores label a
            run (the answer it returned; the reference answer then scores 1.0).
        balance: The shadow rate the runs were served with. A run accepted below the top rung
            has the top rung's answer only when it was shadowed, with this probability, while
            an escalated run always has it; so a labelled run without a user score whose top
            answer is not a shadow call's is kept with this probability only, decided by a
            hash of its run id (``kept_for_balance``). Every run is then in the agreement-
            labelled set with the same probability, as calibration assumes. None: keep all.

    Returns:
        A ``LedgerRows``; its unlabelled rows carry no ``score`` at all.

    Raises:
        LedgerError: the ledger cannot be read.
    """
    labelled: list[ReplayRecord] = []
    unlabelled: list[dict[str, Any]] = []
    incomplete = runs = balanced = 0
    sources: dict[str, int] = defaultdict(int)
    for record in _runs(ledger, task, since, until, agreement):
        runs += 1
        if record is None:
            continue  # a prompt with no answer (every rung failed): nothing to replay
        responses = record["responses"].values()
        if top not in record["responses"]:
            incomplete += 1
        elif not any("score" in r for r in responses):
            unlabelled.append(record)
        elif not all("score" in r for r in responses):
            incomplete += 1
        elif (
            balance is not None
            and not record["meta"]["shadowed"]
            and "feedback" not in record["meta"]["score_sources"].values()
            and not kept_for_balance(record["meta"]["run_id"], balance)
        ):
            balanced += 1
        else:
            labelled.append(ReplayRecord.model_validate(record))
            _count(sources, record)
    return LedgerRows(labelled, unlabelled, incomplete, runs, dict(sources), balanced)


def kept_for_balance(run_id: str, rate: float) -> bool:
    """Whether an escalated run is kept at ``rate``: a stable hash of its id, so every
    recalibration keeps the same runs (and keeps them as the rate grows)."""
    digest = hashlib.sha256(run_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def task_rows(
    config: CascadeConfig,
    task: str,
    ledger: Ledger,
    *,
    since: float | None = None,
    until: float | None = None,
) -> LedgerRows:
    """``ledger_rows`` of ``task`` as its config asks: the top rung of its ladder, and
    agreement labels only with ``tasks.<task>.shadow_labels: true``, balanced at the task's
    ``shadow_rate`` (the rate the runs were served with, so keep it while they gather)."""
    settings = config.tasks[task]
    top = config.models[settings.ladder[-1].model].name
    return ledger_rows(ledger, top=top, task=task, since=since, until=until,
                       agreement=settings.shadow_labels,
                       balance=settings.shadow_rate if settings.shadow_labels else None)


def _count(sources: dict[str, int], record: dict[str, Any]) -> None:
    for source in record["meta"]["score_sources"].values():
        sources[source.split(":")[0] if source.startswith("agreement") else source] += 1


def _record(
    run: Any, rows: list[Any], steps: dict[tuple[str, int], Any], feedback: float | None,
    agreement: bool,
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
    shadowed = any(
        (step := steps.get((run["run_id"], int(r["step"])))) is not None
        and step["decision"] == "shadow"
        for r in ordered
    )
    returned = run["model"]
    reference = ordered[-1]
    # Without a user score, only agreement labels a run; with neither, nothing is scored.
    labelled = len(ordered) >= 2 and (feedback is not None or agreement)
    responses: dict[str, dict[str, Any]] = {}
    score_sources: dict[str, str] = {}
    for row in ordered:
        step = steps.get((run["run_id"], int(row["step"])))
        score: float | None = None
        source = ""
        if feedback is not None and row["model"] == returned:
            score, source = feedback, "feedback"
        elif not labelled:
            pass  # one answer and no user score, or no agreement labels: nothing to compare
        elif row is reference:
            score, source = 1.0, "reference"
        elif agreement:
            score = agreement_label(row["text"], reference["text"])
            shadow = shadowed and step is not None
            source = "shadow:agreement" if shadow else f"agreement:{reference['model']}"
        name = row["model_name"] or row["model"]
        entry: dict[str, Any] = {"text": row["text"]}
        if row["logprob"] is not None:
            entry["logprob"] = float(row["logprob"])
        if score is not None:
            entry["score"] = float(score)
            score_sources[name] = source
        if step is not None:
            entry.update(
                input_tokens=int(step["input_tokens"]), output_tokens=int(step["output_tokens"]),
                cost_usd=float(step["cost_usd"]), latency_ms=float(step["latency_ms"]))
        responses[name] = entry
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
                 "returned": returned, "shadowed": shadowed, "score_sources": score_sources},
    }
