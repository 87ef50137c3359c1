"""Cascade routing for LLM calls: cheap model first, check the answer, escalate when it fails."""

from __future__ import annotations

import typing as _typing

from cascade.errors import (
    BudgetExceeded,
    CascadeError,
    CascadeExhausted,
    ConfigError,
    DatasetError,
    EvaluatorError,
    InvalidUsage,
    LedgerError,
    PluginNotFound,
    ProviderError,
    RequestError,
)
from cascade.types import (
    CascadeResult,
    Completion,
    Request,
    RunWarning,
    StepRecord,
    ToolCall,
    Verdict,
)

if _typing.TYPE_CHECKING:
    from cascade.engine import Cascade
    from cascade.ledger import Ledger

__all__ = [
    "BudgetExceeded",
    "Cascade",
    "CascadeError",
    "CascadeExhausted",
    "CascadeResult",
    "Completion",
    "ConfigError",
    "DatasetError",
    "EvaluatorError",
    "InvalidUsage",
    "Ledger",
    "LedgerError",
    "PluginNotFound",
    "ProviderError",
    "Request",
    "RequestError",
    "RunWarning",
    "StepRecord",
    "ToolCall",
    "Verdict",
]

__version__ = "0.2.0"


# Cascade and Ledger are imported on first use (PEP 562): the engine brings pydantic, structlog
# and the ledger, and every ``cascade.*`` import, ``cascade --version`` included, runs this file.
def __getattr__(name: str) -> object:
    if name == "Cascade":
        from cascade.engine import Cascade

        return Cascade
    if name == "Ledger":
        from cascade.ledger import Ledger

        return Ledger
    raise AttributeError(f"module 'cascade' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
