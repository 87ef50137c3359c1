"""Prices in USD per 1M tokens, and the one function that turns usage into dollars."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cascade.types import Completion

__all__ = ["Price", "cost_usd"]

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
