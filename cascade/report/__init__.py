"""The read side of the ledger for people: ``cascade report`` (JSON and text), its HTML page
(``cascade report --html``) and the gateway's ``GET /dashboard``, which shows the same page.

Everything here reads the ledger and aggregates in the database (GROUP BY a time bucket, or
the rollup), so a report's size and cost follow the period and its buckets, not the rows.
"""

from cascade.report.period import Period, parse_since
from cascade.report.summary import ledger_report

__all__ = ["Period", "ledger_report", "parse_since"]
