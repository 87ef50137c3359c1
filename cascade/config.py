"""The YAML schema, as pydantic models that mirror the file one to one.

Loading is ``yaml.safe_load`` -> ``CascadeConfig.model_validate`` -> cross-reference checks.
It is pure: no environment, no network. ``cascade.engine.Cascade`` then builds providers and
evaluators from it. Every failure becomes a ``ConfigError`` naming the file and the key path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from cascade.config_paths import resolve_path
from cascade.errors import ConfigError
from cascade.pricing import Price, fill_prices

__all__ = [
    "CascadeConfig",
    "LedgerConfig",
    "ModelConfig",
    "ProviderConfig",
    "RetryConfig",
    "RungConfig",
    "ServerConfig",
    "TaskConfig",
    "format_location",
    "load_config",
    "parse_config",
    "resolve_path",  # from cascade.config_paths, where it lives
    "safe_load_bounded",
]

# Infinite and NaN numbers are refused: a price or cap of .inf would silently disable a check.
_STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
# A config file is a few hundred nodes; aliases may repeat parts of it, but a file whose aliases
# expand past this many nodes is an alias bomb (740 bytes can stand for gigabytes).
MAX_YAML_NODES = 100_000
# The output limit of a model whose entry sets no max_output_tokens.
DEFAULT_MAX_OUTPUT_TOKENS = 4096
# Engine arguments and transport options: never a gateway parameter, whatever the operator says.
_NEVER_ALLOWED = frozenset(
    {"task", "prompt", "query_id", "max_cost_usd", "log_content", "deadline_s"}
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

    daily_usd: float | None = Field(default=None, ge=0)
    monthly_usd: float | None = Field(default=None, ge=0)


class CacheConfig(BaseModel):
    """Where the response cache lives (used only by tasks that opt in)."""

    model_config = _STRICT

    path: str = "cascade-cache.sqlite"


class TaskCacheConfig(BaseModel):
    """A task's opt-in to the exact-match cache."""

    model_config = _STRICT

    ttl_s: float = Field(default=3600.0, gt=0)


class MinScore(BaseModel):
    """``accept: {min_score: X}``: the weighted mean of evaluator scores must reach X."""

    model_config = _STRICT

    min_score: float = Field(ge=0, le=1)


Accept = Literal["all", "any"] | MinScore


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
    # Body fields beyond the OpenAI chat parameters that clients may send (vendor knobs).
    allow_params: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)  # larger bodies get 413
    max_messages: int = Field(default=1000, ge=1)  # more messages get 400
    # A client that has not sent its headers, or its whole body, by then is cut off.
    client_timeout_s: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)  # connections beyond it get 503
    # A gateway request's run ends by then (it bounds the task's deadline_s).
    request_timeout_s: float = Field(default=120.0, gt=0)

    @field_validator("allow_params")
    @classmethod
    def _no_reserved_names(cls, value: list[str]) -> list[str]:
        refused = sorted(_NEVER_ALLOWED & set(value))
        if refused:
            raise ValueError(
                f"{', '.join(refused)} can never be a client parameter (engine arguments and "
                "transport options are the gateway's own)"
            )
        return value


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
    # Where each model's price came from ("config", or the genai-prices entry); set by
    # parse_config, shown by cascade validate.
    _price_sources: dict[str, str] = PrivateAttr(default_factory=dict)

    def price_source(self, model: str) -> str:
        return self._price_sources.get(model, "config")


def format_location(loc: tuple[int | str, ...]) -> str:
    """``("tasks", "faq", "ladder", 1)`` -> ``tasks.faq.ladder[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    value = error.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return f"{error['msg'][0].lower()}{error['msg'][1:]} (got {shown})"


def _from_validation(
    exc: ValidationError, path: str | None, hints: Mapping[tuple[Any, ...], str] | None = None
) -> ConfigError:
    errors = exc.errors()
    # In a union the deepest error is the member the user was aiming at: one error per place.
    chosen: dict[tuple[Any, ...], Any] = {}
    for error in errors:
        group = error["loc"][:3]
        if group not in chosen or len(error["loc"]) > len(chosen[group]["loc"]):
            chosen[group] = error
    ordered = sorted(chosen.values(), key=lambda e: -len(e["loc"]))
    first, rest = ordered[0], ordered[1:]

    def describe(error: Mapping[str, Any]) -> str:
        hint = (hints or {}).get(tuple(error["loc"]))
        return hint if hint and error["type"] == "missing" else _describe(error)

    # Every problem is named: fixing one at a time and reloading wastes the user's time.
    also = "".join(f"; {format_location(_clean(e['loc']))}: {describe(e)}" for e in rest)
    return ConfigError(
        describe(first) + also, path=path, location=format_location(_clean(first["loc"]))
    )


def _clean(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """Union members and tagged choices add their own names to the location; drop them."""
    kept = tuple(p for p in loc if not (isinstance(p, str) and p[:1].isupper()))
    return tuple(p for p in kept if p not in ("literal['all','any']", "literal['all', 'any']"))


def _check_references(config: CascadeConfig, path: str | None) -> None:
    for key, model in config.models.items():
        for name in ("max_tokens", "max_completion_tokens"):
            value = model.params.get(name)
            if isinstance(value, int) and value > model.max_output_tokens:
                raise ConfigError(
                    f"{value} is above max_output_tokens {model.max_output_tokens}",
                    path=path,
                    location=f"models.{key}.params.{name}",
                )
        if model.provider not in config.providers:
            raise ConfigError(
                f"unknown provider {model.provider!r} (defined: {', '.join(config.providers)})",
                path=path,
                location=f"models.{key}.provider",
            )
    router = config.task_router
    if (router is not None and router.default_task is not None
            and router.default_task not in config.tasks):
        raise ConfigError(
            f"unknown task {router.default_task!r} (defined: {', '.join(config.tasks)})",
            path=path,
            location="task_router.default_task",
        )
    for name, task in config.tasks.items():
        for i, rung in enumerate(task.ladder):
            if rung.model not in config.models:
                raise ConfigError(
                    f"unknown model {rung.model!r} (defined: {', '.join(config.models)})",
                    path=path,
                    location=f"tasks.{name}.ladder[{i}]",
                )


def parse_config(data: Any, *, path: str | None = None) -> CascadeConfig:
    """Validate an already-parsed mapping (what ``Cascade.from_dict`` uses).

    Raises:
        ConfigError: naming ``path`` and the failing key path.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            "the top level must be a mapping with providers/models/tasks, "
            f"got {type(data).__name__}",
            path=path,
        )
    data, sources, unknown = fill_prices(data)
    try:
        config = CascadeConfig.model_validate(data)
    except ValidationError as exc:
        raise _from_validation(exc, path, unknown) from exc
    _check_references(config, path)
    config._price_sources = sources
    return config


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses documents whose aliases expand past ``MAX_YAML_NODES``.

    PyYAML shares an aliased node instead of copying it, so loading an alias bomb is cheap; the
    copies happen later (validation, hashing a cache key, the first request) and take gigabytes.
    The expanded size is counted on the composed node graph, once per distinct node.
    """

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            _expanded_size(node, {}, set())
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int], active: set[int]) -> int:
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in active:
        raise yaml.YAMLError("recursive alias")
    active.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, active) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, sizes, active) + _expanded_size(v, sizes, active)
    active.discard(key)
    if size > MAX_YAML_NODES:
        raise yaml.YAMLError(
            f"aliases expand to more than {MAX_YAML_NODES:,} nodes (an alias bomb?)"
        )
    sizes[key] = size
    return size


def safe_load_bounded(text: str) -> Any:
    """``yaml.safe_load`` with alias expansion bounded by ``MAX_YAML_NODES``.

    Raises:
        yaml.YAMLError: invalid YAML, a recursive alias, or an expansion past the bound.
    """
    return yaml.load(text, Loader=_BoundedLoader)


def load_config(path: str | os.PathLike[str]) -> CascadeConfig:
    """Read and validate a YAML config file.

    Raises:
        ConfigError: the file is missing or unreadable, is not valid YAML, or fails validation.
    """
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError("config file not found", path=shown) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", path=shown) from exc
    try:
        data = safe_load_bounded(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"invalid YAML: {problem}", path=shown, location=where) from exc
    return parse_config(data, path=shown)
