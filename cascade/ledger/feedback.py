"""Feedback on a run's answer: validated, then stored in the ledger's ``feedback`` table.

A score is the quality of the answer the run returned, in [0, 1]. ``source`` says where it came
from: ``user`` (``engine.feedback``, ``cascade feedback``, ``POST /v1/feedback``) or
``shadow:agreement`` (a shadow evaluation, see ``engine.shadow``). Export, drift and the task
router read them back; a user's score wins over a shadow label for the same run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from cascade.errors import FeedbackError
from cascade.ledger import Ledger
from cascade.ledger.writes import storable

__all__ = ["MAX_COMMENT", "FeedbackRecord", "add_feedback", "check_feedback"]

MAX_COMMENT = 4000  # characters; a longer comment is refused rather than cut


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """One stored feedback row."""

    id: int
    run_id: str
    ts: float
    score: float
    comment: str | None
    source: str


def check_feedback(run_id: Any, score: Any, comment: Any = None) -> tuple[str, float, str | None]:
    """Validate the fields of a feedback call.

    Raises:
        FeedbackError: naming the field at fault.
    """
    if not isinstance(run_id, str) or not run_id.strip():
        raise FeedbackError("must be a non-empty string (the result's run_id)", param="run_id")
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise FeedbackError(f"must be a number in [0, 1] (got {score!r})", param="score")
    value = float(score)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise FeedbackError(f"must be in [0, 1] (got {score!r})", param="score")
    if comment is not None and not isinstance(comment, str):
        raise FeedbackError("must be a string or null", param="comment")
    if comment is not None and len(comment) > MAX_COMMENT:
        raise FeedbackError(f"longer than {MAX_COMMENT} characters", param="comment")
    return run_id.strip(), value, comment


def add_feedback(
    ledger: Ledger | None,
    run_id: Any,
    score: Any,
    comment: Any = None,
    *,
    source: str = "user",
    now: float | None = None,
    made_with: str | None = None,
    key_name: str | None = None,
) -> FeedbackRecord:
    """Store a score for a run's answer (one transaction: the run must exist).

    Args:
        made_with: Only a run made with this gateway key id may be scored (``runs.key_id``);
            None scores any run. A run of another key is refused exactly as an unknown one,
            so a key cannot learn which run ids exist.
        key_name: The named gateway key that sent the score (``feedback.key_name``; None for
            library calls and unnamed keys).

    Raises:
        FeedbackError: a bad field, an unknown run id, or no ledger to store it in.
        LedgerError: the ledger cannot be written.
    """
    run_id, value, comment = check_feedback(run_id, score, comment)
    # Cleaned as content rows are: a NUL (PostgreSQL refuses it) or a lone surrogate (neither
    # backend can encode it) becomes U+FFFD, rather than a ledger failure or a crash. A run id
    # that needed cleaning names no run, and is refused as unknown below.
    run_id, comment = storable(run_id) or "", storable(comment)
    if ledger is None:
        raise FeedbackError("feedback needs a ledger (the config turns it off)", param="ledger")
    ts = time.time() if now is None else now
    ledger.flush()  # the run's row may still be queued for the writer thread
    with ledger.backend.transaction() as tx:
        runs = tx.execute("SELECT key_id FROM runs WHERE run_id = ?", (run_id,))
        if not runs or (made_with is not None and runs[0]["key_id"] != made_with):
            raise FeedbackError(f"unknown run id {run_id!r} in {ledger.where}", param="run_id")
        rows = tx.execute(
            "INSERT INTO feedback (run_id, ts, score, comment, source, key_name)"
            " VALUES (?,?,?,?,?,?) RETURNING id",
            (run_id, ts, value, comment, source, key_name),
        )
    return FeedbackRecord(int(rows[0]["id"]), run_id, ts, value, comment, source)
