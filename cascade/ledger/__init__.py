"""The ledger: one row per step of every run, one row per run, and running spend totals.

Two backends hold the same tables: SQLite (``ledger: {path: FILE}``, the embedded default, WAL
mode) and PostgreSQL (``ledger: {url_env: NAME}`` or ``{url: ...}``, for several processes or
hosts; the ``[postgres]`` extra).

Write-ahead: before a model is called, ``reserve`` writes its step row as ``pending`` with the
reserved worst-case cost (counted in spend at once) and, in the same transaction, checks and
charges the period budgets against ``totals``. ``settle`` writes the real tokens and cost after
the call: queued, with the run's row, for the ledger's writer thread, which commits in batches
(``cascade.ledger.writer``); reads wait for what was queued before them. A pending row whose
writer died (during the call, or before its settlement was committed) is settled as ``lost`` at
its reserved cost by the next process that opens the ledger, or by ``cascade ledger recover``
(see ``cascade.ledger.owners`` for how a dead writer is told from a live one).

The money rules (what is estimated, which budgets apply, when to refuse) live in
``cascade.ledger.money``; this package keeps the rows and the totals consistent.
"""

from cascade.ledger.backends import open_sqlite, safe_url
from cascade.ledger.core import Ledger, Pending, TotalsKey, buckets, nano
from cascade.ledger.opening import check_ledger_config, check_ledger_path, open_ledger
from cascade.ledger.rows import Record

__all__ = [
    "Ledger",
    "Pending",
    "Record",
    "TotalsKey",
    "buckets",
    "check_ledger_config",
    "check_ledger_path",
    "nano",
    "open_ledger",
    "open_sqlite",
    "safe_url",
]
