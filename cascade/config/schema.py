"""The YAML schema, as pydantic models that mirror the file one to one.

``cascade.config.loading`` reads a file into these models; ``cascade.engine.Cascade`` then builds
providers and evaluators from them. Pure: no environment, no network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cascade.config.pricing import Price

__all__ = [
    "DEFAULT_KEY_ENV",
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "MAX_PER_MINUTE",
    "MAX_USD",
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
]

# Infinite and NaN numbers are refused: a price or cap of .inf would silently disable a check.
_STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
# The largest budget in USD: the ledger keeps money in integer nano-dollars, and 1e9 USD is
# 1e18 of them, within a 64-bit integer (9.2e18); 1e300 used to fail every reservation.
MAX_USD = 1e9
# The largest rate limit (requests or tokens per minute): exact in a float and in Redis's Lua.
MAX_PER_MINUTE = 2**53
# The output limit of a model whose entry sets no max_output_tokens.
DEFAULT_MAX_OUTPUT_TOKENS = 4096
# Engine arguments and transport options: never a gateway parameter, whatever the operator says.
_NEVER_ALLOWED = frozenset(
    {"task", "prompt", "query_id", "max_cost_usd", "log_content", "deadline_s", "key_id", "key"}
    | {"timeout", "extra_headers", "extra_query", "model", "messages"}
)


class CircuitBreakerConfig(BaseModel):
    """Skip a provider for ``cooldown_s`` after ``failures`` failed attempts in a row."""

    model_config = _STRICT

    failures: int = Field(default=5, ge=1)
    cooldown_s: float = Field(default=30.0, gt=0)


class ProviderConfig(BaseModel):
    """One ``providers:`` entry. ``type`` names a provider plug-in (openai, anthropic, replay)."""

    model_config = _STRICT

    type: str
    api_key_env: str | None = None
    base_url: str | None = None
    # A deadline for the whole call (connect, send, every read), not a per-read timeout.
    timeout_s: float = Field(default=60.0, gt=0)
    dataset: str | None = None  # replay only: the recorded dataset to serve
    max_concurrency: int | None = Field(default=None, ge=1)
    circuit_breaker: CircuitBreakerConfig | None = None
    # The async clients' HTTP transport; "auto" takes the SDKs' aiohttp one when installed.
    async_http: Literal["auto", "httpx", "aiohttp"] = "auto"

    def key_env(self) -> str | None:
        return self.api_key_env or DEFAULT_KEY_ENV.get(self.type)

    @field_validator("base_url")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        # Without a scheme the SDKs build URLs such as "localhost:8000/v1/chat/completions"
        # and fail at the first call with an error that does not mention base_url.
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"must be an absolute http:// or https:// URL, e.g. http://{value.split('://')[-1]}"
            )
        return value


class ModelConfig(BaseModel):
    """One ``models:`` entry: which provider serves it, under which name, at what price."""

    model_config = _STRICT

    provider: str
    name: str
    # Omitted: looked up in genai-prices when the config is parsed (parse_config).
    price: Price
    params: dict[str, Any] = Field(default_factory=dict)
    # The most output tokens a call may ask for; sent as max_tokens when a call sets none.
    max_output_tokens: int = Field(default=DEFAULT_MAX_OUTPUT_TOKENS, ge=1)


class RetryConfig(BaseModel):
    """``attempts`` counts every try of a rung, the first included."""

    model_config = _STRICT

    attempts: int = Field(default=4, ge=1, le=20)
    max_wait_s: float = Field(default=30.0, ge=0)
    initial_wait_s: float = Field(default=0.5, ge=0)


class LedgerConfig(BaseModel):
    """Where the ledger lives: a SQLite ``path`` (``null`` turns the ledger off), or a
    PostgreSQL database named by ``url_env`` (the variable holding its URL) or ``url``.

    The URL may hold a password, so it is a secret: never shown in a repr, a log or an error.
    """

    model_config = _STRICT

    path: str | None = "cascade-ledger.sqlite"
    url: SecretStr | None = None
    url_env: str | None = Field(default=None, min_length=1)
    pool_size: int = Field(default=10, ge=1, le=200)
    # SQLite: how long a request waits for the ledger's locks (another process's write lock),
    # counted from its arrival, before failing closed (503 ledger_unavailable at the gateway).
    busy_timeout_s: float = Field(default=30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _one_backend(self) -> LedgerConfig:
        if self.url is not None and self.url_env is not None:
            raise ValueError("set url or url_env, not both")
        if (self.url is not None or self.url_env) and "path" in self.model_fields_set and self.path:
            raise ValueError("set path (SQLite) or url/url_env (PostgreSQL), not both")
        return self

    @property
    def postgres(self) -> bool:
        return self.url is not None or self.url_env is not None


class LoggingConfig(BaseModel):
    """``content: true`` adds prompt and answer text to log events (off by default)."""

    model_config = _STRICT

    content: bool = False


class BudgetsConfig(BaseModel):
    """Period budgets in USD, enforced from the ledger (UTC days and months)."""

    model_config = _STRICT

    daily_usd: float | None = Field(default=None, ge=0, le=MAX_USD)
    monthly_usd: float | None = Field(default=None, ge=0, le=MAX_USD)


class RedisConfig(BaseModel):
    """A Redis server: ``url_env`` names the variable holding its URL (``redis://...``), so the
    password stays out of the file. Read when the engine or gateway starts, never here."""

    model_config = _STRICT

    url_env: str = Field(min_length=1)
    # Put before every key, so several deployments can share one Redis. On Redis Cluster, a
    # hash tag ("{cascade}:") keeps a request's keys in one slot, as one script call needs.
    prefix: str = "cascade:"
    # Connect and read timeout of each command: a hung Redis must not hang requests.
    timeout_s: float = Field(default=0.25, gt=0, le=10)


class RedisLimiterConfig(RedisConfig):
    """``limits.redis``: the limiter's Redis, and what happens when it cannot be reached."""

    # closed: refuse with 503 rate_limiter_unavailable; open: serve unlimited, warn, count.
    on_error: Literal["closed", "open"] = "closed"


class TaskLimitsConfig(BaseModel):
    """A task's rate limits, over all keys and replicas (per process without Redis)."""

    model_config = _STRICT

    rpm: int | None = Field(default=None, ge=1, le=MAX_PER_MINUTE)  # requests per minute
    tpm: int | None = Field(default=None, ge=1, le=MAX_PER_MINUTE)  # tokens in + out per minute


class LimitsConfig(BaseModel):
    """``limits:``: rate limits per task (per key ones come with each key); shared by every
    replica through ``redis``, else per process."""

    model_config = _STRICT

    redis: RedisLimiterConfig | None = None
    tasks: dict[str, TaskLimitsConfig] = Field(default_factory=dict)


class CacheConfig(BaseModel):
    """Where the response cache lives (used only by tasks that opt in): a SQLite file at
    ``path``, or ``redis`` (shared by every replica). A key sees only its own cached answers
    unless ``shared_across_keys``."""

    model_config = _STRICT

    path: str = "cascade-cache.sqlite"
    redis: RedisConfig | None = None
    shared_across_keys: bool = False


class TaskCacheConfig(BaseModel):
    """A task's opt-in to the exact-match cache."""

    model_config = _STRICT

    ttl_s: float = Field(default=3600.0, gt=0)


class MinScore(BaseModel):
    """``accept: {min_score: X}``: the weighted mean of evaluator scores must reach X."""

    model_config = _STRICT

    min_score: float = Field(ge=0, le=1)


def _accept_shape(value: Any) -> Any:
    # Without this, a word other than all/any gets pydantic's "should be 'all' or 'any'", which
    # hides the third choice; a mapping goes on to MinScore, which names its own mistakes.
    if value in ("all", "any") or isinstance(value, (Mapping, MinScore)):
        return value
    # Braces in a template are placeholders: the mapping's shape goes in through the context.
    raise PydanticCustomError("accept", "must be all, any or {shape}", {"shape": "{min_score: X}"})


Accept = Annotated[Literal["all", "any"] | MinScore, BeforeValidator(_accept_shape)]


class RungConfig(BaseModel):
    """A ladder entry. A bare model key is shorthand for ``{model: KEY}``."""

    model_config = _STRICT

    model: str
    evaluators: list[dict[str, Any]] | None = None
    accept: Accept | None = None


class RouterConfig(BaseModel):
    """A task's ``router:``: skip a rung when its prompt-only success estimate is too low."""

    model_config = _STRICT

    model: str | dict[str, Any]
    skip_below: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)


class TaskConfig(BaseModel):
    """One ``tasks:`` entry: the ladder, how answers are judged, and what happens at the top."""

    model_config = _STRICT

    ladder: list[RungConfig] = Field(min_length=1)
    evaluators: list[dict[str, Any]] = Field(default_factory=list)
    accept: Accept = "all"
    on_exhausted: Literal["return_last", "raise"] = "return_last"
    params: dict[str, Any] = Field(default_factory=dict)
    max_cost_usd: float | None = Field(default=None, gt=0)
    budgets: BudgetsConfig | None = None
    cache: TaskCacheConfig | None = None
    router: RouterConfig | None = None
    # The whole run (every rung, retry and judge call) ends by then; complete(deadline_s=)
    # and the gateway's server.request_timeout_s can only shorten it.
    deadline_s: float = Field(default=120.0, gt=0)
    # Learning from production (docs/learning.md): the share of accepted runs whose higher
    # rungs are also called, after the run, for a label; example prompts for the task router;
    # the accepted quality below which `cascade report --drift` flags a week.
    shadow_rate: float = Field(default=0.0, ge=0, le=1)
    examples: list[str] = Field(default_factory=list)
    quality_target: float | None = Field(default=None, ge=0, le=1)
    # `cascade calibrate --from-ledger` also counts agreement with the top rung's answer (shadow
    # calls, escalations) as a label, not only user scores: for short final answers.
    shadow_labels: bool = False
    # A cut-off answer (finish_reason "length") is rejected; false judges it like any other.
    escalate_on_truncation: bool = True
    hedge_after_ms: float | None = Field(default=None, gt=0)  # docs/reliability.md

    @field_validator("ladder", mode="before")
    @classmethod
    def _expand_shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"model": v} if isinstance(v, str) else v for v in value]
        return value


class TaskRouterConfig(BaseModel):
    """The ``task_router:`` section: how task ``auto`` picks a task from the prompt.

    ``model`` is the fitted classifier (plain data, or a JSON file beside the config) that
    ``cascade router fit`` writes; below ``min_confidence`` the run goes to ``default_task``.
    """

    model_config = _STRICT

    model: str | dict[str, Any] | None = None
    min_confidence: float = Field(default=0.5, ge=0, le=1)
    default_task: str | None = None


class ServerConfig(BaseModel):
    """The ``server:`` section, read by ``cascade serve``.

    ``api_keys_env`` names the variable holding the gateway's comma-separated bearer keys; with
    none configured the gateway serves loopback only. ``host`` and ``port`` are defaults that
    ``--host`` and ``--port`` override.
    """

    model_config = _STRICT

    api_keys_env: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=0, le=65535)
    # Body fields beyond the OpenAI chat parameters that clients may send (vendor knobs), and
    # the price-changing chat parameters (service_tier...) that clients and callers may set.
    allow_params: list[str] = Field(default_factory=list)
    # Which models: keys a client may call directly (model: <key>): none (false, the default),
    # all (true) or the keys listed. A direct call has no task, so no task budget or cap: it
    # is held to the global budgets and to direct_max_cost_usd, which must then be set.
    direct_models: bool | list[str] = False
    direct_max_cost_usd: float | None = Field(default=None, gt=0, validate_default=True)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)  # larger bodies get 413
    max_messages: int = Field(default=1000, ge=1)  # more messages get 400
    # A client that has not sent its headers, or its whole body, by then is cut off.
    client_timeout_s: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)  # connections beyond it get 503
    # A gateway request's run ends by then (it bounds the task's deadline_s).
    request_timeout_s: float = Field(default=120.0, gt=0)
    # The variable holding comma-separated admin keys: gateway keys that may also score any
    # run through POST /v1/feedback (other keys score only the runs they made) and reload the
    # config through POST /admin/reload.
    admin_keys_env: str | None = None
    feedback_any_run: bool = False  # true: any key may score any run (release 0.2's rule)
    feedback_rpm: int = Field(default=60, ge=1)  # POST /v1/feedback per key and minute
    # /metrics serves the drift gauges as last read from the ledger's rollup, read again at most
    # this often (in the background: a scrape never waits for the ledger).
    metrics_refresh_s: float = Field(default=15.0, gt=0)
    # Also accept the named keys of the ledger's keys table (cascade keys create; docs/keys.md):
    # with it, every request needs a key, even with no server.api_keys_env keys.
    ledger_keys: bool = False
    # How long a named key's row is trusted before the ledger is read again: what a revocation
    # or expiry takes to reach this process (at most 1 s, the promise of docs/keys.md).
    key_cache_s: float = Field(default=0.5, ge=0, le=1.0)
    # A key label (the key's name) on cascade_requests_total and cascade_cost_usd_total; by
    # default on when ledger_keys is on and the ledger holds fewer than 100 keys at startup.
    metrics_key_labels: bool | None = None

    @field_validator("allow_params")
    @classmethod
    def _no_reserved_names(cls, value: list[str]) -> list[str]:
        refused = sorted(_NEVER_ALLOWED & set(value))
        if refused:
            raise ValueError(
                f"{', '.join(refused)} can never be a client parameter (engine arguments and "
                "transport options are the gateway's own)"
            )
        if "n" in value:
            raise ValueError("n can never be allowed: a cascade returns one answer")
        return value

    @field_validator("direct_max_cost_usd")
    @classmethod
    def _direct_calls_capped(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is None and info.data.get("direct_models"):
            raise ValueError(
                "required when server.direct_models allows direct calls: the most one direct "
                "call may cost (a direct call has no task, so no task cap or budget holds it)"
            )
        return value

    def direct_keys(self, models: Iterable[str]) -> tuple[str, ...]:
        """The ``models:`` keys a client may call directly, of ``models``."""
        if self.direct_models is True:
            return tuple(models)
        allowed = set(self.direct_models or ())
        return tuple(key for key in models if key in allowed)


class CascadeConfig(BaseModel):
    """The whole file."""

    model_config = _STRICT

    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig]
    tasks: dict[str, TaskConfig]
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    budgets: BudgetsConfig | None = None
    cache: CacheConfig = Field(default_factory=CacheConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    task_router: TaskRouterConfig | None = None
    limits: LimitsConfig | None = None
    # Shadow evaluations waiting or running at once per engine (one per process), all tasks
    # together: they share the providers; one that does not fit is skipped (docs/learning.md).
    shadow_max_in_flight: int = Field(default=4, ge=1)
    # Where each model's price came from ("config", or the genai-prices entry); set by
    # parse_config, shown by cascade validate.
    _price_sources: dict[str, str] = PrivateAttr(default_factory=dict)

    def price_source(self, model: str) -> str:
        return self._price_sources.get(model, "config")


