"""Prices in USD per 1M tokens, and the one function that turns usage into dollars."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cascade.types import Completion

__all__ = ["Price", "cost_usd", "fill_prices", "lookup_price"]

_PER_TOKEN = 1_000_000


class Price(BaseModel):
    """USD per 1M tokens. ``cached_input`` defaults to the plain input price."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)

    def estimate(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / _PER_TOKEN


def cost_usd(completion: Completion, price: Price) -> float:
    """Dollars for one provider call.

    Cached input tokens are a subset of ``input_tokens`` (both SDKs report them that way) and are
    billed at ``cached_input``. A cost the source reports itself (a replayed recording) wins,
    because it is what was actually billed.
    """
    if completion.cost_usd is not None:
        return completion.cost_usd
    cached = min(completion.cached_input_tokens, completion.input_tokens)
    cached_price = price.input if price.cached_input is None else price.cached_input
    fresh = completion.input_tokens - cached
    return (
        fresh * price.input + cached * cached_price + completion.output_tokens * price.output
    ) / _PER_TOKEN


# The provider types whose models genai-prices knows under the same provider id.
_GENAI_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic"}


def lookup_price(
    model: str, provider_type: str, base_url: str | None = None
) -> tuple[Price, str] | str:
    """The model's current list price from ``genai-prices`` (bundled data: no network).

    Returns:
        ``(price, source)``, with the source naming the package version and the entry found;
        or, when it has no entry, a sentence saying what was looked up.
    """
    try:
        from genai_prices import data_snapshot
    except ImportError:  # pragma: no cover - a declared dependency
        return "genai-prices is not installed"
    version = _genai_version()
    snapshot = data_snapshot.get_snapshot()
    provider_id = _GENAI_PROVIDER_IDS.get(provider_type)
    attempts: list[tuple[str | None, str | None]] = []
    if base_url:
        attempts.append((None, base_url))  # an OpenAI-compatible host genai-prices knows
    attempts.append((provider_id, None))
    for pid, api_url in attempts:
        try:
            provider, info = snapshot.find_provider_model(model, None, pid, api_url)
        except LookupError:
            continue
        prices = info.get_prices(datetime.now(timezone.utc))
        price = Price(
            input=_per_million(prices.input_mtok),
            output=_per_million(prices.output_mtok),
            cached_input=(
                None if prices.cache_read_mtok is None else _per_million(prices.cache_read_mtok)
            ),
        )
        return price, f"genai-prices {version}: {provider.id}/{info.id}"
    where = f"provider {provider_id!r}" if provider_id else "any provider"
    return f"genai-prices {version} has no price for model {model!r} of {where}"


def _per_million(value: Any) -> float:
    """A flat price, or the base (first) tier of a tiered one, as a float per 1M tokens."""
    if value is None:
        return 0.0
    base = getattr(value, "base", value)  # TieredPrices: the price below the first threshold
    return float(base)


def _genai_version() -> str:
    try:
        return importlib.metadata.version("genai-prices")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "(unknown version)"


def fill_prices(
    data: Mapping[str, Any],
) -> tuple[Mapping[str, Any], dict[str, str], dict[tuple[Any, ...], str]]:
    """Models without ``price:`` get genai-prices' list price; the caller's data is not changed.

    Returns the data to validate, each model's price source, and for models with no price
    found, what to tell the user at ``models.KEY.price``.
    """
    models, providers = data.get("models"), data.get("providers")
    if not isinstance(models, Mapping):
        return data, {}, {}
    sources: dict[str, str] = {}
    unknown: dict[tuple[Any, ...], str] = {}
    filled: dict[Any, Any] = {}
    for key, model in models.items():
        filled[key] = model
        if not isinstance(model, Mapping):
            continue
        if "price" in model:
            sources[str(key)] = "config"
            continue
        settings = providers.get(model.get("provider")) if isinstance(providers, Mapping) else None
        if not isinstance(settings, Mapping) or not isinstance(model.get("name"), str):
            continue  # validation reports the real problem
        found = lookup_price(
            model["name"],
            str(settings.get("type")),
            settings.get("base_url") if isinstance(settings.get("base_url"), str) else None,
        )
        if isinstance(found, str):
            unknown[("models", key, "price")] = (
                f"no price: {found}; add price: {{input: USD, output: USD}} per 1M tokens "
                "(and cached_input: if it has one)"
            )
            continue
        price, sources[str(key)] = found
        filled[key] = {**model, "price": price.model_dump(exclude_none=True)}
    return {**data, "models": filled}, sources, unknown
