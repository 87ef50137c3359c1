"""The rows the ledger writes: totals arithmetic, the write-ahead row, and the writes queued for
the writer thread (each a function of one open transaction)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from cascade.ledger.backends import Tx
from cascade.types import CascadeResult, StepRecord

__all__ = [
    "STEP_COLUMNS",
    "ContentRow",
    "Pending",
    "TotalsKey",
    "add_to_totals",
    "buckets",
    "content_write",
    "free_step_write",
    "loss_write",
    "nano",
    "run_write",
    "settle_write",
    "write_ahead",
]

# (scope, period, bucket): ("global" | "task:NAME" | "key:NAME", "daily" | "monthly",
# "2026-12-01" | "2026-12")
TotalsKey = tuple[str, str, str]

# A ``content`` row: step, kind, model, model name, text, the answer's mean token
# log-probability (None for the prompt, or when the provider returned none).
ContentRow = tuple[int, str, "str | None", "str | None", str, "float | None"]

STEP_COLUMNS = (
    "run_id, ts, task, step, model, provider, attempts, input_tokens, cached_input_tokens,"
    " output_tokens, cost_usd, latency_ms, decision, error, verdicts, status, reserved_usd, owner,"
    " usage_estimated, key_name"
)


def nano(usd: float) -> int:
    """Dollars as integer nano-dollars, the unit of the ``totals`` table."""
    return round(usd * 1e9)


def buckets(task: str, ts: float, key_name: str | None = None) -> tuple[TotalsKey, ...]:
    """The totals a step at ``ts`` adds to: global and its task, by UTC day and month; and
    its gateway key's (``key:NAME``) when a named key made it, so that a budget set on the key
    later counts what the key spent before."""
    moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    day, month = moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m")
    scopes = ("global", f"task:{task}", *((f"key:{key_name}",) if key_name is not None else ()))
    return tuple((scope, period, bucket) for scope in scopes
                 for period, bucket in (("daily", day), ("monthly", month)))


@dataclass(frozen=True, slots=True)
class Pending:
    """A step about to call a model: what its write-ahead row says before the call."""

    run_id: str
    task: str
    step: int
    model: str
    provider: str
    reserved_usd: float
    ts: float
    # Set when this raises the reservation of an existing pending row (a retry after an attempt
    # that timed out): that row's id, and what it had reserved before.
    grows: int | None = None
    before: float = 0.0
    key_name: str | None = None  # the named gateway key that made the run (its totals too)


def add_to_totals(tx: Tx, keys: Sequence[TotalsKey], nusd: int) -> dict[TotalsKey, int]:
    """Add ``nusd`` to each of ``keys`` (creating rows as needed); returns the new totals.

    One statement, rows in sorted order: every writer locks the rows in the same order, so
    two transactions never wait on each other in a cycle (PostgreSQL).
    """
    ordered = sorted(keys)
    rows = tx.execute(
        "INSERT INTO totals (scope, period, bucket, spent_nusd) VALUES "
        + ", ".join("(?,?,?,?)" for _ in ordered)
        + " ON CONFLICT (scope, period, bucket)"
        " DO UPDATE SET spent_nusd = totals.spent_nusd + excluded.spent_nusd"
        " RETURNING scope, period, bucket, spent_nusd",
        [v for key in ordered for v in (*key, nusd)],
    )
    return {(r["scope"], r["period"], r["bucket"]): int(r["spent_nusd"]) for r in rows}


def write_ahead(tx: Tx, pending: Pending, owner: str) -> tuple[int, int] | None:
    """A call's write-ahead row: insert it, or raise the reservation of the pending row
    ``pending.grows``. Returns the row's id and the nano-dollars to add to its totals (None:
    the row to raise is no longer pending, settled as lost meanwhile).

    A raise adds ``nano(after) - nano(before)``, so the totals hold ``nano`` of the row's whole
    reservation, which its settlement takes back to the nano-dollar.
    """
    if pending.grows is not None:
        changed = tx.rowcount(
            "UPDATE steps SET reserved_usd = ?, cost_usd = ? WHERE id = ? AND status = 'pending'",
            (pending.reserved_usd, pending.reserved_usd, pending.grows),
        )
        if not changed:
            return None
        return pending.grows, nano(pending.reserved_usd) - nano(pending.before)
    rows = tx.execute(
        f"INSERT INTO steps ({STEP_COLUMNS}) VALUES"
        " (?,?,?,?,?,?,0,0,0,0,?,0,'pending',NULL,'[]','pending',?,?,0,?) RETURNING id",
        (pending.run_id, pending.ts, pending.task, pending.step, pending.model,
         pending.provider, pending.reserved_usd, pending.reserved_usd, owner, pending.key_name),
    )
    return int(rows[0]["id"]), nano(pending.reserved_usd)


# Each builder below captures its (frozen) arguments and returns the write; the Python work
# (JSON, buckets) runs inside it, on the writer thread, rather than on the request's path.


def settle_write(
    step_id: int, pending: Pending, step: StepRecord, lost: bool = False
) -> Callable[[Tx], bool]:
    """The settlement of a pending row: True if it was still pending (False: settled as lost by
    a recovery meanwhile, whose charge then stands). ``lost``: the step ended in a call whose
    outcome is not known (timed out), so its status is ``lost``."""
    status = "lost" if lost else "settled"

    def write(tx: Tx) -> bool:
        changed = tx.rowcount(
            "UPDATE steps SET attempts = ?, input_tokens = ?, cached_input_tokens = ?,"
            " output_tokens = ?, cost_usd = ?, latency_ms = ?, decision = ?, error = ?,"
            " verdicts = ?, usage_estimated = ?, status = ?"
            " WHERE id = ? AND status = 'pending'",
            (step.attempts, step.input_tokens, step.cached_input_tokens, step.output_tokens,
             step.cost_usd, step.latency_ms, step.decision, storable(step.error), _verdicts(step),
             int(step.usage_estimated), status, step_id),
        )
        delta = nano(step.cost_usd) - nano(pending.reserved_usd)
        if changed and delta:
            add_to_totals(tx, buckets(pending.task, pending.ts, pending.key_name), delta)
        return bool(changed)

    return write


def storable(text: str | None) -> str | None:
    """``text`` as every backend can store it: a model's answer or a provider's error message
    may hold NUL (PostgreSQL refuses it) or a lone surrogate from a JSON escape (neither
    backend can encode it); each becomes U+FFFD. Plain text passes unchanged."""
    if text is None or (text.isascii() and "\x00" not in text):
        return text
    return _UNSTORABLE.sub("\ufffd", text)


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _verdicts(step: StepRecord) -> str:
    return json.dumps([v.as_dict() for v in step.verdicts])


def loss_write(step_id: int, reason: str) -> Callable[[Tx], None]:
    """A pending row of this process settled as ``lost`` (its reserved charge stands)."""

    def write(tx: Tx) -> None:
        tx.execute(
            "UPDATE steps SET status = 'lost', decision = 'lost', error = ?"
            " WHERE id = ? AND status = 'pending'",
            (reason, step_id),
        )

    return write


def free_step_write(step: StepRecord, key_name: str | None = None) -> Callable[[Tx], None]:
    """A settled row for a step that had no write-ahead row (a skip, a cache hit);
    ``key_name``: the named gateway key that made its run."""
    ts = step.ts or time.time()

    def write(tx: Tx) -> None:
        tx.execute(
            f"INSERT INTO steps ({STEP_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,"
            "'settled',0,NULL,?,?)",
            (step.run_id, ts, step.task, step.step, step.model, step.provider, step.attempts,
             step.input_tokens, step.cached_input_tokens, step.output_tokens, step.cost_usd,
             step.latency_ms, step.decision, storable(step.error), _verdicts(step),
             int(step.usage_estimated), key_name),
        )
        if nano(step.cost_usd):
            add_to_totals(tx, buckets(step.task, ts, key_name), nano(step.cost_usd))

    return write


def run_write(
    result: CascadeResult,
    status: str,
    content: Sequence[ContentRow],
    key_id: str | None = None,
    key_name: str | None = None,
    top: tuple[float, bool] | None = None,
) -> Callable[[Tx], None]:
    """The run's row (replacing an earlier one of the same id) and its content rows, in one
    transaction, so a retried write never duplicates them. ``key_id`` is the opaque id of the
    gateway key that made the run (feedback checks it), ``key_name`` its name when it is a
    named key; ``top`` what always-top would have cost and whether that is an estimate
    (``runs.top_usd``, ``runs.top_estimated``)."""
    now = time.time()
    rows = tuple(content)
    top_usd, top_estimated = (None, None) if top is None else (top[0], int(top[1]))

    def write(tx: Tx) -> None:
        tx.execute(
            "INSERT INTO runs (run_id, ts, task, model, accepted, cost_usd, latency_ms,"
            " steps, status, task_probability, key_id, key_name, top_usd, top_estimated)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (run_id) DO UPDATE SET"
            " ts = excluded.ts, task = excluded.task, model = excluded.model,"
            " accepted = excluded.accepted, cost_usd = excluded.cost_usd,"
            " latency_ms = excluded.latency_ms, steps = excluded.steps,"
            " status = excluded.status, task_probability = excluded.task_probability,"
            " key_id = excluded.key_id, key_name = excluded.key_name,"
            " top_usd = excluded.top_usd, top_estimated = excluded.top_estimated",
            (result.run_id, now, result.task, result.model or None, int(result.accepted),
             result.cost_usd, result.latency_ms, len(result.steps), status,
             result.task_probability, key_id, key_name, top_usd, top_estimated),
        )
        _insert_content(tx, result.run_id, now, rows)

    return write


def content_write(run_id: str, content: Sequence[ContentRow]) -> Callable[[Tx], None]:
    """Content rows for a run recorded earlier (a shadow call's answer)."""
    now, rows = time.time(), tuple(content)
    return lambda tx: _insert_content(tx, run_id, now, rows)


def _insert_content(tx: Tx, run_id: str, ts: float, rows: Sequence[ContentRow]) -> None:
    for row in rows:
        tx.execute(
            "INSERT INTO content (run_id, ts, step, kind, model, model_name, text, logprob)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (run_id, ts, *row[:4], storable(row[4]), row[5]),
        )
