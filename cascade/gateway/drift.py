"""The drift and budget gauges of ``GET /metrics``, read from the ledger off the request path.

A scrape renders what the last refresh read and never reads the ledger itself. When the last
refresh started ``server.metrics_refresh_s`` ago or more, a scrape starts the next one in the
background (one at a time) and answers at once: however often clients scrape, the ledger is
read at most once per ``metrics_refresh_s``. The app reads once at start-up, so the first scrape
has numbers. A refresh is ``drift_report`` over the last ``DRIFT_WEEKS`` weeks: it folds the
rollup's log (without waiting for a lock) and reads sums per task, rung and week, whose number
grows with those, not with the ledger's steps (``cascade.ledger.rollup``).
The budget gauges (spend against each period budget) are read in the same refresh: one
``totals`` row per budget (``cascade.ledger.money``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cascade.errors import LedgerError
from cascade.gateway.state import Gateway
from cascade.ledger.drift import drift_report
from cascade.logs import get_logger

__all__ = ["DRIFT_WEEKS", "DriftGauges"]

log = get_logger()

DRIFT_WEEKS = 8  # /metrics shows the drift of the last weeks only


class DriftGauges:
    """Keeps the drift gauges of a gateway's metrics, refreshed in the background.

    Args:
        gateway: Whose engine's ledger is read and whose metrics are set.
        every_s: The least time between two refreshes (``server.metrics_refresh_s``).

    ``clock`` (``time.monotonic``, spacing refreshes) and ``now`` (``time.time``, which weeks
    to show) are attributes, so tests can replace them instead of sleeping.
    """

    def __init__(self, gateway: Gateway, *, every_s: float):
        self.gateway = gateway
        self.every_s = every_s
        self.clock: Callable[[], float] = time.monotonic
        self.now: Callable[[], float] = time.time
        self.refreshes = 0  # refreshes started: for tests and benchmarks
        self._started: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def refreshing(self) -> bool:
        return self._task is not None and not self._task.done()

    def poke(self) -> None:
        """Start a refresh in the background if one is due and none is running; never waits."""
        if self.refreshing:
            return
        if self._started is not None and self.clock() - self._started < self.every_s:
            return
        self._started = self.clock()
        self._task = asyncio.ensure_future(self.refresh())

    async def start(self) -> None:
        """The first refresh, before the app serves."""
        self._started = self.clock()
        await self.refresh()

    async def close(self) -> None:
        """Let a refresh still running finish (it holds one of the ledger's threads)."""
        if self._task is not None:
            await asyncio.wait([self._task])

    async def refresh(self) -> None:
        """Read the drift rows of the last weeks into the gauges (on the ledger's threads)."""
        ledger = self.gateway.engine.ledger
        if ledger is None:
            return
        self.refreshes += 1
        targets = {name: t.quality_target for name, t in self.gateway.engine.config.tasks.items()
                   if t.quality_target is not None}
        since = self.now() - DRIFT_WEEKS * 7 * 86400
        try:
            rows = await ledger.run(lambda: drift_report(ledger, targets=targets, since=since))
            # A key's budgets are labelled with its name: only while key labels are on.
            accounts, keys = self.gateway.engine.limits.accounts, self.gateway.metrics.key_labels
            budgets = await ledger.run(lambda: accounts.status(keys=keys))
        except LedgerError as exc:
            # The counters are still worth serving; the drift gauges keep their last values.
            log.warning("cascade.drift_metrics_failed", error=str(exc))
            return
        except Exception as exc:  # a bug must not vanish in a task nobody awaits
            # One line, no traceback (it could carry a database URL), as the other ledger logs.
            log.error(  # noqa: TRY400
                "cascade.drift_metrics_failed", error=f"{type(exc).__name__}: {exc}")
            return
        self.gateway.metrics.drift(rows)
        self.gateway.metrics.budgets(budgets)
