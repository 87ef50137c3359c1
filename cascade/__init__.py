"""Cascade routing for LLM calls: cheap model first, check the answer, escalate when it fails."""

from cascade.engine import Cascade
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
from cascade.ledger import Ledger
from cascade.types import (
    CascadeResult,
    Completion,
    Request,
    RunWarning,
    StepRecord,
    ToolCall,
    Verdict,
)

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
