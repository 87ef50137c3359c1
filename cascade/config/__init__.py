"""Configuration: YAML -> typed config, model parameters, prices, plug-in lookup and paths.

``from cascade.config import load_config, CascadeConfig`` is the public face; the modules are
``schema`` (the pydantic models), ``loading`` (file -> validated config), ``messages`` (validation
errors -> what users read), ``params``, ``pricing``, ``plugins`` and ``paths``. Nothing here
touches the environment or the network.
"""

from cascade.config.loading import MAX_YAML_NODES, load_config, parse_config, safe_load_bounded
from cascade.config.messages import format_location
from cascade.config.paths import resolve_path
from cascade.config.schema import (
    DEFAULT_KEY_ENV,
    DEFAULT_MAX_OUTPUT_TOKENS,
    BudgetsConfig,
    CacheConfig,
    CascadeConfig,
    CircuitBreakerConfig,
    LedgerConfig,
    LimitsConfig,
    LoggingConfig,
    MinScore,
    ModelConfig,
    ProviderConfig,
    RedisConfig,
    RedisLimiterConfig,
    RetryConfig,
    RouterConfig,
    RungConfig,
    ServerConfig,
    TaskCacheConfig,
    TaskConfig,
    TaskLimitsConfig,
    TaskRouterConfig,
)

__all__ = [
    "DEFAULT_KEY_ENV",
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "MAX_YAML_NODES",
    "BudgetsConfig",
    "CacheConfig",
    "CascadeConfig",
    "CircuitBreakerConfig",
    "LedgerConfig",
    "LimitsConfig",
    "LoggingConfig",
    "MinScore",
    "ModelConfig",
    "ProviderConfig",
    "RedisConfig",
    "RedisLimiterConfig",
    "RetryConfig",
    "RouterConfig",
    "RungConfig",
    "ServerConfig",
    "TaskCacheConfig",
    "TaskConfig",
    "TaskLimitsConfig",
    "TaskRouterConfig",
    "format_location",
    "load_config",
    "parse_config",
    "resolve_path",
    "safe_load_bounded",
]
