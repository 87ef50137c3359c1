"""Spending limits, kept importable here; the money rules themselves live in ``ledger.money``.

Period budgets are reserved in the ledger's database (one transaction per reservation against
running totals), so they hold across threads, processes and hosts that share the ledger.
"""

from __future__ import annotations

from cascade.ledger.money import (
    DEFAULT_MAX_TOKENS,
    Accounts,
    Hold,
    Limit,
    estimate_input_tokens,
    max_output_tokens,
    period_start,
    worst_case_cost,
)

# The budget guard of release 0.1 is now the accounts object.
BudgetGuard = Accounts

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "BudgetGuard",
    "Hold",
    "Limit",
    "estimate_input_tokens",
    "max_output_tokens",
    "period_start",
    "worst_case_cost",
]
