"""``ledger_report``, from its home in ``cascade.report.summary`` (the read side of the ledger,
which the gateway's dashboard shares and so cannot live under replay)."""

from __future__ import annotations

from cascade.report.summary import ledger_report

__all__ = ["ledger_report"]
