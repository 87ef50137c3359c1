"""Money, in one place: estimate a call's worst case, reserve it, bill the call, settle it.

- **Estimate**: ``worst_case_cost`` prices a bound on the prompt's tokens (``cascade.tokens``:
  one per UTF-8 byte of everything the provider reads, an image at the most any provider
  documents) plus the call's output limit (the engine always sends one, the model's
  ``max_output_tokens``, so the bound is real).
- **Reserve**: ``Accounts.reserve`` checks the request's cost cap, then, in one ledger
  transaction, checks every period budget that applies against the shared totals, writes the
  step's write-ahead row (``pending``, at its worst case) and charges that worst case. Any
  number of processes or hosts sharing the ledger therefore exceed a budget by at most what
  the calls in flight when the last one was admitted are billed above their worst cases
  (nothing, unless a provider bills more input than it was sent, or a file sent by id).
- **Bill**: ``bill`` sums what every paid attempt of a step cost.
- **Settle**: ``Accounts.settle`` replaces the reservation with the real cost. A cost within
  the reservation is queued for the ledger's writer thread (``cascade.ledger.writer``), which
  commits in batches: until it commits, the pending row keeps counting its worst case, which is
  more. A cost above it is committed before ``settle`` returns, so that every later budget
  decision, in any process, counts it (``Writer.write_excess``). If that write fails the
  answer has already been returned; the failure is logged from the writer, and the ledger
  refuses new reservations for a while (fail closed). ``Accounts.release`` settles a row whose
  outcome will never be known (a cancelled call) as ``lost`` at its worst case.
- **Extend**: an attempt that timed out was sent, and may be billed: its worst case stays
  spent. ``Accounts.extend`` reserves one more worst case, through the same budget decision,
  before the call is retried.

If the write-ahead row cannot be written, ``reserve`` raises ``LedgerError`` and the model is
never called: nothing is paid for that the ledger does not show.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from cascade.config.pricing import Price, cost_usd
from cascade.errors import LedgerError
from cascade.ledger import Ledger, Pending, TotalsKey, buckets, nano
from cascade.ledger.keys import KeyScope, KeyStore
from cascade.logs import get_logger
from cascade.tokens import estimate_input_tokens, max_output_tokens
from cascade.types import Completion, Message, StepRecord

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "Accounts",
    "Hold",
    "Limit",
    "Refusal",
    "bill",
    "cap_refusal",
    "estimate_input_tokens",
    "ledger_failed",
    "max_output_tokens",
    "worst_case_cost",
]

log = get_logger()

# Used for the worst case when a call sets no output limit. The engine always sends one (the
# model's max_output_tokens, by default this value), so that the estimate is a real bound.
DEFAULT_MAX_TOKENS = 4096


def ledger_failed(event: str, **fields: Any) -> None:
    """Log a ledger write that failed after the money was spent: one line, no traceback
    (a traceback could carry a database URL)."""
    log.error(event, **fields)


def worst_case_cost(messages: Sequence[Message], params: Mapping[str, Any], price: Price) -> float:
    """The most a call can cost: the prompt counted high, plus the whole output limit."""
    out = max_output_tokens(params) or DEFAULT_MAX_TOKENS
    return price.estimate(estimate_input_tokens(messages, params), out)


def bill(paid: Iterable[Completion], price: Price) -> float:
    """What a step cost: every attempt that was billed, at the config's prices."""
    return sum(cost_usd(c, price) for c in paid)


@dataclass(frozen=True, slots=True)
class Limit:
    scope: str  # "global", the task name, or the gateway key's name (of_key)
    period: str  # "daily" or "monthly"
    limit_usd: float
    of_key: bool = False  # a named gateway key's budget (totals scope key:NAME)

    @property
    def totals_scope(self) -> str:
        if self.of_key:
            return f"key:{self.scope}"
        return "global" if self.scope == "global" else f"task:{self.scope}"

    def key(self, task: str, ts: float) -> TotalsKey:
        """The totals row this limit is checked against for a step of ``task`` at ``ts``."""
        scope, period, bucket = next(
            k for k in buckets(task, ts, self.scope if self.of_key else None)
            if k[1] == self.period and k[0] == self.totals_scope
        )
        return scope, period, bucket

    def describe(self) -> str:
        if self.of_key:
            return f"key {self.scope!r} {self.period} budget ${self.limit_usd:.2f}"
        where = "global" if self.scope == "global" else f"task {self.scope!r}"
        return f"{self.period} budget of {where}"


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    limit_usd: float


def cap_refusal(spent: float, estimate: float, cap: float | None) -> Refusal | None:
    """The refusal of a call whose worst case would take its run past ``max_cost_usd``."""
    if cap is None or spent + estimate <= cap:
        return None
    # Worded for the one-line summary: "skipped sonnet: worst case $0.0614 > ...".
    spent_part = f"spent ${spent:.4g} + " if spent else ""
    return Refusal(f"{spent_part}worst case ${estimate:.4g} > max_cost_usd ${cap:g}", cap)


@dataclass(slots=True)
class Hold:
    """A reservation backed by a pending step row, until it is settled or released."""

    step_id: int
    pending: Pending
    closed: bool = False


def period_start(period: str, now: float | None = None) -> float:
    moment = datetime.fromtimestamp(time.time() if now is None else now, tz=timezone.utc)
    if period == "daily":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start.timestamp()


class Accounts:
    """Cost caps and period budgets, reserved and settled through the ledger.

    Args:
        ledger: Where steps and totals live; None records nothing (only caps apply then).
        limits: The period budgets of the config.
    """

    def __init__(self, ledger: Ledger | None, limits: Sequence[Limit]):
        self.ledger = ledger
        self.limits = tuple(limits)

    def applicable(self, task: str, key: KeyScope | None = None) -> tuple[Limit, ...]:
        """The config's budgets over ``task``, then those of the gateway key making the call."""
        mine = tuple(lim for lim in self.limits if lim.scope in ("global", task))
        if key is None:
            return mine
        return mine + tuple(
            Limit(key.name, period, value, of_key=True)
            for period, value in (("daily", key.daily_usd), ("monthly", key.monthly_usd))
            if value is not None
        )

    def reserve(
        self,
        *,
        run_id: str,
        task: str,
        step: int,
        model_key: str,
        provider: str,
        estimate: float,
        spent: float,
        cap: float | None,
        key: KeyScope | None = None,
    ) -> tuple[Hold | None, Refusal | None]:
        """Reserve ``estimate`` for one call and write its pending row (see the module doc).

        ``key``: the named gateway key that made the run; its budgets decide in the same
        transaction, and the row and its totals (``key:NAME``) carry its name.

        Raises:
            LedgerError: the pending row could not be written; do not call the model.
        """
        over = cap_refusal(spent, estimate, cap)
        if over is not None:
            return None, over
        if self.ledger is None:
            return None, None
        now = time.time()
        pending = Pending(run_id, task, step, model_key, provider, estimate, now,
                          key_name=key.name if key is not None else None)
        outcome = self._reserve(pending, estimate, key)
        if isinstance(outcome, Refusal):
            return None, outcome
        return Hold(outcome, pending), None

    def extend(
        self, hold: Hold, *, estimate: float, key: KeyScope | None = None
    ) -> Refusal | None:
        """Add ``estimate`` to ``hold``'s reservation before another attempt of its call (a
        retry after an attempt that timed out, whose worst case stays spent): the period
        budgets decide as for the first reservation, in one transaction that raises the step's
        pending row and charges the totals.

        Raises:
            LedgerError: nothing could be written; do not retry the call.
        """
        before = hold.pending.reserved_usd
        grown = replace(hold.pending, reserved_usd=before + estimate, grows=hold.step_id,
                        before=before)
        outcome = self._reserve(grown, estimate, key)
        if isinstance(outcome, Refusal):
            return outcome
        hold.pending = replace(grown, grows=None, before=0.0)
        return None

    def _reserve(
        self, pending: Pending, estimate: float, key: KeyScope | None
    ) -> int | Refusal:
        """The ledger's part of ``reserve`` and ``extend``: every period budget that applies
        decides, against the shared totals. Returns the row's id, or the refusal."""
        assert self.ledger is not None
        task, ts = pending.task, pending.ts
        limits = self.applicable(task, key)
        refused: list[Limit] = []

        def decide(totals: Mapping[TotalsKey, int]) -> str | None:
            for limit in limits:
                used = totals[limit.key(task, ts)]
                if used + nano(estimate) > nano(limit.limit_usd):
                    refused.append(limit)
                    return (
                        f"{limit.describe()}: spent+reserved ${used / 1e9:.6f} + worst case "
                        f"${estimate:.6f} > ${limit.limit_usd:.6f}"
                    )
            return None

        outcome = self.ledger.reserve(pending, decide if limits else None)
        if isinstance(outcome, str):
            return Refusal(outcome, refused[0].limit_usd if refused else 0.0)
        return outcome

    def settle(self, hold: Hold, step: StepRecord, *, lost: bool = False) -> None:
        """Settle a called step's real cost over its reservation (queued, or written at once
        when above it); a failure is only logged, like a settlement that came too late.
        ``lost``: the step ended in a call whose outcome is not known (timed out); its status
        says so."""
        hold.closed = True
        assert self.ledger is not None
        run_id, index = step.run_id, step.step
        reserved, cost = hold.pending.reserved_usd, step.cost_usd

        def done(settled: bool) -> None:
            if not settled:
                log.warning("cascade.ledger_settled_late", run_id=run_id, step=index,
                            note="the row was already settled as lost; its reserved cost stands")

        def failed(exc: LedgerError) -> None:
            ledger_failed("cascade.ledger_settle_failed", run_id=run_id, step=index,
                          reserved_usd=reserved, cost_usd=cost, error=str(exc))

        try:
            self.ledger.settle(hold.step_id, hold.pending, step, lost=lost, done=done,
                               failed=failed)
        except LedgerError as exc:
            failed(exc)

    def release(self, hold: Hold | None) -> None:
        """A hold whose call never reported back (cancelled mid-call): settle it as lost."""
        if hold is None or hold.closed or self.ledger is None:
            return
        hold.closed = True
        step_id = hold.step_id

        def failed(exc: LedgerError) -> None:
            ledger_failed("cascade.ledger_settle_failed", step_id=step_id, error=str(exc))

        try:
            self.ledger.abandon(
                step_id,
                "the call was cancelled before its outcome was known; counted at its "
                "reserved worst case",
                failed=failed,
            )
        except LedgerError as exc:
            failed(exc)

    def record(self, step: StepRecord, key_name: str | None = None) -> None:
        """Queue a step that called nothing (a skip, a cache hit); a failure is only logged.
        ``key_name``: the named gateway key that made its run."""
        if self.ledger is None:
            return
        run_id, index, decision = step.run_id, step.step, step.decision

        def failed(exc: LedgerError) -> None:
            ledger_failed("cascade.ledger_write_failed", run_id=run_id, step=index,
                          decision=decision, error=str(exc))

        try:
            self.ledger.record_step(step, failed=failed, key_name=key_name)
        except LedgerError as exc:
            failed(exc)

    def reserved(self, limit: Limit, now: float | None = None) -> float:
        """The worst cases still reserved under ``limit`` by calls in flight (pending rows)."""
        if self.ledger is None:
            return 0.0
        since = period_start(limit.period, now)
        scope = "" if limit.scope == "global" else " AND task = ?"
        args: tuple[Any, ...] = (since,) if limit.scope == "global" else (since, limit.scope)
        rows = self.ledger.query(
            "SELECT COALESCE(SUM(reserved_usd), 0) AS s FROM steps WHERE status = 'pending'"
            f" AND ts >= ?{scope}",
            args,
        )
        return float(rows[0]["s"])

    def spent(self, limit: Limit, now: float | None = None) -> float:
        """Spend under ``limit`` this period, reservations in flight included."""
        if self.ledger is None:
            return 0.0
        key = limit.key(limit.scope if limit.scope != "global" else "", now or time.time())
        return self.ledger.spent([key])[key]

    def status(self, *, keys: bool = False, now: float | None = None) -> list[dict[str, Any]]:
        """Spend against each budget, for ``cascade report``, the dashboard and ``/metrics``.

        ``keys``: also the daily and monthly budgets of every active named gateway key
        (``scope`` ``key:NAME``), read from the ledger's ``keys`` table.
        """
        limits = list(self.limits)
        if keys and self.ledger is not None:
            moment = now or time.time()
            for record in KeyStore(self.ledger).list():
                if record.state(moment) == "active":
                    limits.extend(lim for lim in self.applicable("", record.scope) if lim.of_key)
        return [
            {
                "scope": lim.totals_scope if lim.of_key else lim.scope,
                "period": lim.period,
                "limit_usd": lim.limit_usd,
                "spent_usd": self.spent(lim, now),
            }
            for lim in limits
        ]
